package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"rainforest/vmm"
	"rainforest/vmm/ram"
	"rainforest/vmm/testguest"
)

// Two test-guest VMs share one memfd mapped at sharedGPA in both.
const (
	sharedGPA  = 0xE000_0000
	sharedSize = 8 << 10
	bellGPA    = 0xD000_0000 // A's doorbell register (ioeventfd, value 1)
	bellVector = 0x41        // B's doorbell interrupt
	msiAddr    = 0xFEE0_0000

	// Shared page layout.
	offPing    = 0x000 // A -> B message line
	offPong    = 0x040 // B -> A message line
	offIRQAck  = 0x080 // B: doorbell interrupts seen
	offHead    = 0x100 // ring head, written by A
	offTail    = 0x140 // ring tail, written by B
	offSlots   = 0x1000
	vmRingMask = ringSlotCount - 1

	// Private guest memory.
	privCount  = testguest.DataAddr     // A: round trips / rings acked
	privErrors = testguest.DataAddr + 8 // B: messages out of sequence
)

// kvmUsable says why /dev/kvm cannot be used, or nil.
func kvmUsable() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("needs /dev/kvm (run as root on a KVM host): %w", err)
	}
	return f.Close()
}

// kvmEmulatesKernel reports whether this host's KVM back end interprets
// guest CPL-0 code (kvm_pvm), where interrupt handler timing is not real.
func kvmEmulatesKernel() bool {
	_, err := os.Stat("/sys/module/kvm_pvm")
	return err == nil
}

// Register shorthands for the guest programs.
const (
	rax, rbx, rcx, rdx, rsi, rdi = testguest.RAX, testguest.RBX, testguest.RCX, testguest.RDX, testguest.RSI, testguest.RDI
	r8, r9, r10, r11             = testguest.R8, testguest.R9, testguest.R10, testguest.R11
)

// pingCode (A): send a 64-byte message with sequence seq, spin until B
// echoes seq, count the round trip in private memory; forever.
func pingCode() []byte {
	var c testguest.Code
	c.MovImm(rsi, sharedGPA).MovImm(rdi, privCount).MovImm(rcx, 0)
	loop := c.Len()
	c.Inc(rcx)
	for k := int32(1); k < 8; k++ {
		c.Store(rsi, offPing+8*k, rcx)
	}
	c.Store(rsi, offPing, rcx)
	wait := c.Len()
	c.Load(rax, rsi, offPong).Cmp(rax, rcx).JumpIf(testguest.NotEqual, wait)
	c.Store(rdi, 0, rcx)
	c.Jump(loop)
	return c.Bytes()
}

// pongCode (B): wait for a new message, read it, answer with a 64-byte
// message carrying its sequence number; forever.
func pongCode() []byte {
	var c testguest.Code
	c.MovImm(rsi, sharedGPA).MovImm(rdx, 0)
	wait := c.Len()
	c.Load(rax, rsi, offPing).Cmp(rax, rdx).JumpIf(testguest.Equal, wait)
	c.MovReg(rdx, rax)
	for k := int32(1); k < 8; k++ {
		c.Load(rbx, rsi, offPing+8*k)
	}
	for k := int32(1); k < 8; k++ {
		c.Store(rsi, offPong+8*k, rdx)
	}
	c.Store(rsi, offPong, rdx)
	c.Jump(wait)
	return c.Bytes()
}

// producerCode (A): stream sequenced 64-byte messages into the ring,
// reading B's tail only when the ring looks full.
func producerCode() []byte {
	var c testguest.Code
	c.MovImm(rsi, sharedGPA).MovImm(r10, sharedGPA+offSlots).MovImm(r8, 0).MovImm(r9, 0)
	loop := c.Len()
	c.MovReg(rax, r8).SubReg(rax, r9).CmpImm(rax, ringSlotCount)
	space := c.JumpIfForward(testguest.Below)
	refresh := c.Len()
	c.Load(r9, rsi, offTail)
	c.MovReg(rax, r8).SubReg(rax, r9).CmpImm(rax, ringSlotCount)
	c.JumpIf(testguest.AboveEqual, refresh)
	c.Land(space)
	c.MovReg(rdx, r8).AndImm(rdx, vmRingMask).ShlImm(rdx, 6).AddReg(rdx, r10)
	c.Inc(r8)
	for k := int32(1); k < 8; k++ {
		c.Store(rdx, 8*k, r8)
	}
	c.Store(rdx, 0, r8)
	c.Store(rsi, offHead, r8)
	c.Jump(loop)
	return c.Bytes()
}

// consumerCode (B): take messages from the ring in order, check each
// sequence number (mismatches counted at privErrors), read the payload
// and publish the tail, reading A's head only when the ring looks empty.
func consumerCode() []byte {
	var c testguest.Code
	c.MovImm(rsi, sharedGPA).MovImm(r10, sharedGPA+offSlots).MovImm(rdi, privErrors)
	c.MovImm(r8, 0).MovImm(r9, 0).MovImm(r11, 0)
	loop := c.Len()
	c.Cmp(r8, r9)
	have := c.JumpIfForward(testguest.NotEqual)
	refresh := c.Len()
	c.Load(r9, rsi, offHead).Cmp(r8, r9).JumpIf(testguest.Equal, refresh)
	c.Land(have)
	c.MovReg(rdx, r8).AndImm(rdx, vmRingMask).ShlImm(rdx, 6).AddReg(rdx, r10)
	c.Inc(r8)
	c.Load(rax, rdx, 0).Cmp(rax, r8)
	ok := c.JumpIfForward(testguest.Equal)
	c.Inc(r11).Store(rdi, 0, r11)
	c.Land(ok)
	for k := int32(1); k < 8; k++ {
		c.Load(rbx, rdx, 8*k)
	}
	c.Store(rsi, offTail, r8)
	c.Jump(loop)
	return c.Bytes()
}

// ringerCode (A): ring B's doorbell, wait until B acknowledges that many
// interrupts in the shared page, count; forever.
func ringerCode() []byte {
	var c testguest.Code
	c.MovImm(rsi, sharedGPA).MovImm(rdi, privCount).MovImm(rcx, 0)
	loop := c.Len()
	c.Inc(rcx)
	c.MovRAX(bellGPA).MovRBX(1).Store32()
	wait := c.Len()
	c.Load(rdx, rsi, offIRQAck).Cmp(rdx, rcx).JumpIf(testguest.Below, wait)
	c.Store(rdi, 0, rcx)
	c.Jump(loop)
	return c.Bytes()
}

// ackerCode (B): copy its handler's interrupt count to the shared page
// whenever it changes; forever.
func ackerCode() []byte {
	var c testguest.Code
	c.MovImm(rsi, sharedGPA).MovImm(rdi, testguest.CounterFor(bellVector)).MovImm(rdx, 0)
	loop := c.Len()
	c.Load(rax, rdi, 0).Cmp(rax, rdx).JumpIf(testguest.Equal, loop)
	c.MovReg(rdx, rax).Store(rsi, offIRQAck, rdx)
	c.Jump(loop)
	return c.Bytes()
}

// exitCounter is an MMIO/PIO device that counts accesses (VMM exits) and
// remembers the last byte written.
type exitCounter struct {
	n    atomic.Uint64
	last atomic.Uint32
}

func (e *exitCounter) Read(uint64, []byte) { e.n.Add(1) }
func (e *exitCounter) Write(_ uint64, data []byte) {
	e.n.Add(1)
	if len(data) > 0 {
		e.last.Store(uint32(data[0]))
	}
}

// vmPair is two one-vCPU test-guest machines sharing a memfd.
type vmPair struct {
	a, b   *vmm.Machine
	shared []byte
	faults [2]*exitCounter // CPU exceptions reported by A and B
}

func newVMPair(cores [2]int) (_ *vmPair, err error) {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	fd, err := unix.MemfdCreate("ficm-bench", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, sharedSize); err != nil {
		return nil, fmt.Errorf("size memfd: %w", err)
	}
	p := &vmPair{}
	if p.shared, err = unix.Mmap(fd, 0, sharedSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return nil, fmt.Errorf("map memfd: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.close())
		}
	}()
	mk := func(name string, core int, i int) (*vmm.Machine, error) {
		m, err := vmm.New(vmm.Config{Name: name, MemSize: testguest.MinMemory, PageSize: ram.Page4K, HostCores: []int{core}, Logger: log})
		if err != nil {
			return nil, fmt.Errorf("machine %s: %w", name, err)
		}
		if err := m.AddMemory(sharedGPA, p.shared, false); err != nil {
			return m, fmt.Errorf("machine %s: map shared memory: %w", name, err)
		}
		p.faults[i] = &exitCounter{}
		if err := m.PIO.Insert(p.faults[i], testguest.FaultPort, 1); err != nil {
			return m, fmt.Errorf("machine %s: %w", name, err)
		}
		return m, nil
	}
	if p.b, err = mk("ficm-b", cores[1], 1); err != nil {
		return nil, err
	}
	if p.a, err = mk("ficm-a", cores[0], 0); err != nil {
		return nil, err
	}
	return p, nil
}

// close closes A (whose doorbell refers to B's irqfd eventfd) before B,
// then unmaps the shared memory.
func (p *vmPair) close() error {
	var err error
	if p.a != nil {
		err = errors.Join(err, p.a.Close())
	}
	if p.b != nil {
		err = errors.Join(err, p.b.Close())
	}
	if p.shared != nil {
		err = errors.Join(err, unix.Munmap(p.shared))
	}
	return err
}

// run starts B then A with their programs, calls measure while both run,
// then stops them.
func (p *vmPair) run(ctx context.Context, codeA, codeB []byte, measure func(ctx context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var exits []chan vmm.Exit
	var err error
	for _, s := range []struct {
		m    *vmm.Machine
		code []byte
	}{{p.b, codeB}, {p.a, codeA}} {
		regs, sregs, e := testguest.Setup(s.m.Mem, s.code)
		if e == nil {
			e = s.m.SetBootState(0, regs, sregs)
		}
		if e == nil {
			e = testguest.EnableLAPIC(s.m.VCPU(0))
		}
		if e == nil {
			e = s.m.VCPU(0).SetRunnable()
		}
		if e != nil {
			err = fmt.Errorf("start test guest: %w", e)
			break
		}
		done := make(chan vmm.Exit, 1)
		m := s.m
		go func() { done <- m.Run(ctx) }()
		exits = append(exits, done)
	}
	if err == nil {
		err = measure(ctx)
	}
	cancel()
	for _, done := range exits {
		select {
		case e := <-done:
			if e.Reason != vmm.ExitStopped {
				err = errors.Join(err, fmt.Errorf("test guest ended early: %s %v", e.Reason, e.Err))
			}
		case <-time.After(20 * time.Second):
			err = errors.Join(err, errors.New("test guest did not stop within 20 s"))
		}
	}
	for i, f := range p.faults {
		if f.n.Load() != 0 {
			err = errors.Join(err, fmt.Errorf("test guest %c took CPU exception %d", 'A'+i, f.last.Load()))
		}
	}
	return err
}

// runVMPolling measures the VM-to-VM polling path: a ping-pong round trip
// (windows over A's round-trip count) and a ring stream (B's tail).
func runVMPolling(ctx context.Context, cores [2]int, s windowSampler) (Row, error) {
	row := Row{Mechanism: "VM-VM polling (shared memfd, CPL 3)", Polling: true,
		Note: fmt.Sprintf("two test-guest VMs on cores %d,%d; RTT = mean per %v window from a guest round-trip counter, median/p99 over windows; msgs/s from a %d-slot ring stream", cores[0], cores[1], s.window, ringSlotCount)}
	p, err := newVMPair(cores)
	if err != nil {
		return row, err
	}
	err = p.run(ctx, pingCode(), pongCode(), func(ctx context.Context) error {
		samples, _, err := s.sample(ctx, func() uint64 { v, _ := p.a.Mem.Uint64(privCount); return v })
		row.RTT, row.samples = Summarize(samples), samples
		return err
	})
	if cerr := p.close(); err == nil {
		err = cerr
	}
	if err != nil {
		return row, fmt.Errorf("VM ping-pong: %w", err)
	}
	if p, err = newVMPair(cores); err != nil {
		return row, err
	}
	var bad uint64
	err = p.run(ctx, producerCode(), consumerCode(), func(ctx context.Context) error {
		var err error
		_, row.Throughput, err = s.sample(ctx, func() uint64 { return binary.LittleEndian.Uint64(p.shared[offTail:]) })
		bad, _ = p.b.Mem.Uint64(privErrors)
		return err
	})
	if cerr := p.close(); err == nil {
		err = cerr
	}
	if err == nil && bad != 0 {
		err = fmt.Errorf("consumer saw %d messages out of sequence", bad)
	}
	if err != nil {
		return row, fmt.Errorf("VM stream: %w", err)
	}
	return row, nil
}

// runVMInterrupt measures doorbell rings A -> B (ioeventfd datamatch in A
// wired to B's irqfd) acknowledged through the shared page.
func runVMInterrupt(ctx context.Context, cores [2]int, s windowSampler, emulated bool) (Row, error) {
	row := Row{Mechanism: "VM-VM interrupt (ioeventfd->irqfd)", IRQ: true,
		Note: "RTT = ring -> B's handler -> B's user code acks in the shared page -> A sees it; msgs/s = rings delivered per second"}
	if emulated {
		row.Note += "; this host's KVM (kvm_pvm) interprets the CPL-0 handler, so this is not a latency figure"
	}
	p, err := newVMPair(cores)
	if err != nil {
		return row, err
	}
	defer func() {
		if cerr := p.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	vec, err := p.b.NewMSIVector(msiAddr, bellVector)
	if err != nil {
		return row, fmt.Errorf("B's doorbell vector: %w", err)
	}
	if err := p.a.NewDoorbellMatch(bellGPA, 4, 1, vec.EventFD()); err != nil {
		return row, fmt.Errorf("A's doorbell: %w", err)
	}
	exits := &exitCounter{}
	if err := p.a.MMIO.Insert(exits, bellGPA, 0x1000); err != nil {
		return row, err
	}
	err = p.run(ctx, ringerCode(), ackerCode(), func(ctx context.Context) error {
		samples, rate, err := s.sample(ctx, func() uint64 { v, _ := p.a.Mem.Uint64(privCount); return v })
		row.RTT, row.Throughput = Summarize(samples), rate
		return err
	})
	if err != nil {
		return row, fmt.Errorf("VM doorbells: %w", err)
	}
	if n := exits.n.Load(); n != 0 {
		return row, fmt.Errorf("%d doorbell writes exited to A's VMM", n)
	}
	return row, nil
}
