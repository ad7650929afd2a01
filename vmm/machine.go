// Package vmm runs one subOS: a KVM virtual machine whose vCPUs are threads
// pinned one-to-one to exclusive host cores, whose RAM is pre-faulted
// hugepage memory on the cores' NUMA node, and whose devices are the models
// under vmm/ (serial, ACPI platform registers, PCI with virtio and
// shared-memory devices).
//
// Layering, bottom up: vmm/kvm issues ioctls and holds no policy; vmm/vm
// owns one VM's memory slots, GSIs and routing table; vmm/interrupt gives
// every device MSI-X vector groups and INTx lines; vmm/devices (the
// chassis) holds the PCI bus and plugs devices in and out through the
// Resources they claim; device models (vmm/virtio, vmm/shmem, ...) know
// guest memory and buses but not KVM. This package composes them into a
// Machine: memory, vCPU threads and exit dispatch, the platform devices,
// and hotplug.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"sync/atomic"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"

	"rainforest/vmm/acpi"
	"rainforest/vmm/bus"
	"rainforest/vmm/devices"
	"rainforest/vmm/guestmem"
	"rainforest/vmm/hostcpu"
	"rainforest/vmm/interrupt"
	"rainforest/vmm/kvm"
	"rainforest/vmm/layout"
	"rainforest/vmm/platform"
	"rainforest/vmm/ram"
	"rainforest/vmm/virtio/mem"
	"rainforest/vmm/virtio/net/vhostnet"
	"rainforest/vmm/vm"
)

// kickSignal interrupts KVM_RUN; the Go runtime ignores it.
const kickSignal = unix.SIGURG

// ErrEmulatedKVM means the host's KVM interprets guest kernel code and so
// cannot boot a Linux kernel.
var ErrEmulatedKVM = errors.New("this host's /dev/kvm emulates guest kernel code (kvm_pvm, no VT-x/AMD-V): it cannot boot Linux; use a host with hardware virtualization, or rfm run, which boots its layout inside a nested QEMU layer on such a host")

// ExitReason says why a machine stopped.
type ExitReason string

// Exit reasons.
const (
	ExitPowerOff    ExitReason = "power-off"
	ExitReboot      ExitReason = "reboot"
	ExitTripleFault ExitReason = "triple-fault"
	ExitHalt        ExitReason = "halt"
	ExitStopped     ExitReason = "stopped" // the context was cancelled
	ExitError       ExitReason = "error"
)

// Exit is how a machine ended.
type Exit struct {
	Reason ExitReason
	// Status is the guest's exit status: what it wrote to the status port
	// before powering off (0 when it wrote nothing), 1 after a crash.
	Status int
	Err    error
}

// Config is the part of a machine's configuration that does not depend on
// what it boots.
type Config struct {
	Name     string
	MemSize  uint64
	PageSize ram.PageSize
	// HostCores are the vCPUs the guest boots with, one per core, in
	// order.
	HostCores []int
	// MaxVCPUs is how many vCPUs the machine has (0 or less than
	// len(HostCores): len(HostCores)). Those beyond len(HostCores) are
	// present to the guest (CPUID, the ACPI MADT) but not booted (a
	// Linux guest gets maxcpus=); their threads wait in KVM_RUN pinned
	// to HostCores[0] until PinVCPUs gives them cores of their own.
	MaxVCPUs int
	Profile  CPUProfile
	// HotplugMemory, when not 0, is the size of a hotplug memory region
	// above RAM (layout.HotplugBase), of PageSize pages, that the guest
	// plugs through a virtio-mem device (SetMemory); a multiple of
	// config.HotplugBlockSize.
	HotplugMemory uint64
	Logger        *slog.Logger
	SysRoot       string // sysfs root, "/sys" when empty
	KVMPath       string // "/dev/kvm" when empty
	// KVMFile, when set, is an open /dev/kvm used instead of KVMPath; the
	// machine takes charge of it.
	KVMFile *os.File
}

// Machine is one VM with its memory, buses, devices and vCPUs.
type Machine struct {
	cfg     Config
	log     *slog.Logger
	vm      *vm.VM
	ram     *ram.RAM
	Mem     *guestmem.Memory
	PIO     bus.Bus
	MMIO    bus.Bus
	lines   *interrupt.Lines
	chassis *devices.Chassis
	sci     *platform.SCI
	slots   *slots
	memdev  *mem.Device // the hotplug memory's model, or nil
	// netCounters are the nets' counter readers (func() map[string]uint64)
	// by id, while their devices are plugged.
	netCounters sync.Map
	// vhostNets are the nets given vhost-net, by id (NetVhost).
	vhostNetsMu sync.Mutex
	vhostNets   map[string]*vhostnet.Device

	started atomic.Bool // Run began: devices come and go by hotplug

	vcpus []*vcpu
	// pinMu serialises PinVCPUs; affinity pins a started thread (a
	// test hook; unix.SchedSetaffinity otherwise).
	pinMu    sync.Mutex
	affinity func(tid, core int) error
	// hostCores are the host's online cores when the machine was made.
	hostCores []int

	stopping atomic.Bool
	pauseMu  sync.Mutex
	pauseCnd *sync.Cond // signalled when paused or parked change
	paused   bool
	parked   int // vCPU threads waiting while paused
	exitOnce sync.Once
	exit     Exit
	exitCh   chan struct{}

	closeMu sync.Mutex
	closers []func() error // run in reverse by Close
}

type vcpu struct {
	cpu *kvm.VCPU
	// mu guards core, and tid's changes: the thread pins itself to core
	// and publishes its tid under it, so a re-pin either finds no thread
	// yet (and sets the core it will take) or re-pins the thread.
	mu   sync.Mutex
	core int
	tid  atomic.Int32 // the thread's id while it runs, else 0
}

// New creates the VM, its memory and its vCPUs; nothing runs yet. On error
// everything made so far is released.
func New(cfg Config) (_ *Machine, err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Profile == "" {
		cfg.Profile = ProfileHost
	}
	if cfg.PageSize == 0 {
		cfg.PageSize = ram.Page2M
	}
	topo := hostcpu.Topology{Root: cfg.SysRoot}
	node, err := topo.Check(cfg.HostCores)
	if err != nil {
		return nil, err
	}
	hostCores, err := topo.Online()
	if err != nil {
		return nil, err
	}
	nvcpus := max(cfg.MaxVCPUs, len(cfg.HostCores))
	if nvcpus > VCPULimit {
		return nil, fmt.Errorf("%d vCPUs: at most %d are supported", nvcpus, VCPULimit)
	}
	memOpts := ram.Options{Name: "rf-" + cfg.Name, Size: cfg.MemSize, PageSize: cfg.PageSize, Node: node, Prefault: true, SysRoot: cfg.SysRoot}
	if err := ram.Check(memOpts); err != nil {
		return nil, err
	}
	m := &Machine{cfg: cfg, log: cfg.Logger, exitCh: make(chan struct{}), affinity: setAffinity, hostCores: hostCores}
	m.pauseCnd = sync.NewCond(&m.pauseMu)
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	if m.vm, err = newVM(cfg); err != nil {
		return nil, err
	}
	m.AddCloser(m.vm.Close)
	if m.ram, err = ram.Allocate(memOpts); err != nil {
		return nil, err
	}
	m.AddCloser(m.ram.Close)
	var regions []guestmem.Region
	low := min(cfg.MemSize, layout.LowRAMEnd)
	// Every region names its memfd, so that vhost-user back ends can map
	// guest RAM (vmm/vhostuser's memory table).
	regions = append(regions, guestmem.Region{GPA: 0, Data: m.ram.Data[:low], File: m.ram.File})
	if cfg.MemSize > layout.LowRAMEnd {
		regions = append(regions, guestmem.Region{GPA: layout.HighRAMStart, Data: m.ram.Data[low:], File: m.ram.File, Offset: low})
	}
	for _, r := range regions {
		if _, err = m.vm.MapMemory(r.GPA, r.Data, false); err != nil {
			return nil, err
		}
	}
	if cfg.HotplugMemory > 0 {
		r, err := m.setupHotplugMemory(node)
		if err != nil {
			return nil, err
		}
		regions = append(regions, r)
	}
	if m.Mem, err = guestmem.New(regions...); err != nil {
		return nil, err
	}
	m.lines = interrupt.NewLines(m.vm, m.log)
	reset := platform.NewResetRegister(func() { m.Stop(Exit{Reason: ExitReboot}) })
	m.chassis, err = devices.New(devices.Config{VM: m.vm, Memory: m.Mem, MMIO: &m.MMIO, PIO: &m.PIO, Lines: m.lines,
		INTxGSI: acpi.PCIINTxGSI, OnReset: func(v byte) { reset.Write(0, []byte{v}) }, Logger: m.log})
	if err != nil {
		return nil, err
	}
	m.AddCloser(m.chassis.Close)
	if err = m.setupHotplug(); err != nil {
		return nil, err
	}
	supported, err := m.vm.System().SupportedCPUID()
	if err != nil {
		return nil, err
	}
	deadline := m.vm.System().CheckExtension(kvm.CapTSCDeadlineTimer) > 0
	for i := range nvcpus {
		core := cfg.HostCores[0] // parked until PinVCPUs gives it a core
		if i < len(cfg.HostCores) {
			core = cfg.HostCores[i]
		}
		c, err := m.vm.KVM().CreateVCPU(i)
		if err != nil {
			return nil, err
		}
		m.AddCloser(c.Close)
		if err := c.SetCPUID(BuildCPUID(supported, i, nvcpus, cfg.Profile, deadline)); err != nil {
			return nil, fmt.Errorf("vcpu %d: %w", i, err)
		}
		if err := setupLAPIC(c); err != nil {
			return nil, fmt.Errorf("vcpu %d: %w", i, err)
		}
		m.vcpus = append(m.vcpus, &vcpu{cpu: c, core: core})
	}
	m.log.Debug("machine created", "vcpus", len(m.vcpus), "booted", len(cfg.HostCores), "memory", cfg.MemSize, "pagesize", cfg.PageSize.String(), "node", node)
	return m, nil
}

// setupLAPIC puts LINT0 in ExtINT and LINT1 in NMI delivery mode, as PC
// firmware leaves them.
func setupLAPIC(c *kvm.VCPU) error {
	l, err := c.LAPIC()
	if err != nil {
		return err
	}
	const lint0, lint1 = 0x350, 0x360
	set := func(off int, mode uint32) {
		v := uint32(l.Regs[off]) | uint32(l.Regs[off+1])<<8 | uint32(l.Regs[off+2])<<16 | uint32(l.Regs[off+3])<<24
		v = v&^(7<<8) | mode<<8
		l.Regs[off], l.Regs[off+1], l.Regs[off+2], l.Regs[off+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	set(lint0, 7) // ExtINT
	set(lint1, 4) // NMI
	return c.SetLAPIC(l)
}

// AddMemory maps host memory (e.g. a shared memfd mapping) into the guest
// at gpa, read-only when readOnly (guest writes then exit as MMIO), until
// the machine is closed. It must not overlap guest RAM or another mapping.
// The caller keeps mem mapped for the machine's lifetime.
func (m *Machine) AddMemory(gpa uint64, mem []byte, readOnly bool) error {
	for _, r := range m.Mem.Regions() {
		if gpa < r.End() && r.GPA < gpa+uint64(len(mem)) {
			return fmt.Errorf("shared memory at %#x+%#x overlaps guest RAM at %#x", gpa, len(mem), r.GPA)
		}
	}
	slot, err := m.vm.MapMemory(gpa, mem, readOnly)
	if err != nil {
		return err
	}
	m.AddCloser(func() error { return m.vm.UnmapMemory(slot) })
	return nil
}

// VM returns the VM layer (its Usage tells what devices hold).
func (m *Machine) VM() *vm.VM { return m.vm }

// Chassis returns the PCI device manager.
func (m *Machine) Chassis() *devices.Chassis { return m.chassis }

// IRQLine returns a handle on the irqchip input gsi, driven by a device
// model (the serial port, the SCI).
func (m *Machine) IRQLine(gsi uint32) *interrupt.Line { return m.lines.Line(gsi) }

// NumVCPUs returns the number of vCPUs (Config.MaxVCPUs, or one per host
// core).
func (m *Machine) NumVCPUs() int { return len(m.vcpus) }

// BootVCPUs returns the number of vCPUs the guest boots with (one per
// Config.HostCores).
func (m *Machine) BootVCPUs() int { return len(m.cfg.HostCores) }

// VCPU returns vCPU i.
func (m *Machine) VCPU(i int) *kvm.VCPU { return m.vcpus[i].cpu }

// SetBootState loads the registers of vCPU i.
func (m *Machine) SetBootState(i int, regs *gokvm.Regs, sregs *gokvm.Sregs) error {
	c := m.vcpus[i].cpu
	if sregs != nil {
		if err := c.SetSregs(sregs); err != nil {
			return err
		}
	}
	if regs != nil {
		if err := c.SetRegs(regs); err != nil {
			return err
		}
	}
	return nil
}

// AddCloser registers f to run when the machine is closed (in reverse
// order). It is safe for concurrent use.
func (m *Machine) AddCloser(f func() error) {
	m.closeMu.Lock()
	defer m.closeMu.Unlock()
	m.closers = append(m.closers, f)
}

// Close stops the machine if it runs, waits for its goroutines and releases
// everything.
func (m *Machine) Close() error {
	m.Stop(Exit{Reason: ExitStopped})
	m.closeMu.Lock()
	closers := m.closers
	m.closers = nil
	m.closeMu.Unlock()
	var errs []error
	for i := len(closers) - 1; i >= 0; i-- {
		errs = append(errs, closers[i]())
	}
	return errors.Join(errs...)
}

// Stop ends the machine with the given exit; the first call wins.
func (m *Machine) Stop(e Exit) {
	m.exitOnce.Do(func() {
		m.exit = e
		m.stopping.Store(true)
		close(m.exitCh)
		m.pauseMu.Lock()
		m.pauseCnd.Broadcast()
		m.pauseMu.Unlock()
		m.kickAll()
	})
}

// Done is closed once the machine has been told to stop.
func (m *Machine) Done() <-chan struct{} { return m.exitCh }

func (m *Machine) kickAll() {
	pid := os.Getpid()
	for _, v := range m.vcpus {
		v.cpu.SetImmediateExit(true)
		if tid := v.tid.Load(); tid != 0 {
			_ = unix.Tgkill(pid, int(tid), kickSignal)
		}
	}
}

// Run starts one thread per vCPU, pinned to its host core, and blocks until
// the guest powers off or reboots, a vCPU fails, or ctx is cancelled.
func (m *Machine) Run(ctx context.Context) Exit {
	m.started.Store(true)
	var wg sync.WaitGroup
	for i, v := range m.vcpus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.runVCPU(i, v); err != nil {
				m.Stop(Exit{Reason: ExitError, Status: 1, Err: err})
			}
		}()
	}
	stopWatch := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			m.Stop(Exit{Reason: ExitStopped, Err: ctx.Err()})
		case <-stopWatch:
		case <-m.exitCh:
		}
	}()
	// A vCPU may miss a kick sent between its stop check and its thread id
	// being published; kick until all are out.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	<-m.exitCh
	for {
		select {
		case <-done:
			close(stopWatch)
			return m.exit
		default:
			m.kickAll()
			runtime.Gosched()
			select {
			case <-done:
			case <-afterMillis(5):
			}
		}
	}
}

// runVCPU is vCPU i's thread. It never unlocks the OS thread: the thread's
// affinity was changed, so Go discards it when the goroutine ends.
func (m *Machine) runVCPU(i int, v *vcpu) error {
	runtime.LockOSThread()
	tid := unix.Gettid()
	v.mu.Lock()
	core := v.core
	if err := setAffinity(0, core); err != nil {
		v.mu.Unlock()
		return fmt.Errorf("vcpu %d: pin to core %d: %w", i, core, err)
	}
	v.tid.Store(int32(tid))
	v.mu.Unlock()
	// Once the goroutine ends the thread exits (it stays locked), and its
	// id may be reused: PinVCPUs must no longer reach it.
	defer func() {
		v.mu.Lock()
		v.tid.Store(0)
		v.mu.Unlock()
	}()
	// Named for top -H and the idle wake-up benchmark; best effort.
	_ = setThreadName(fmt.Sprintf("vcpu%d", i))
	log := m.log.With("vcpu", i)
	for !m.stopping.Load() {
		m.park(v)
		reason, err := v.cpu.Run()
		if errors.Is(err, kvm.ErrInterrupted) {
			continue
		}
		if err != nil {
			return err
		}
		if err := m.handleExit(i, v.cpu, reason, log); err != nil {
			return err
		}
	}
	return nil
}

// Pause stops every vCPU outside KVM_RUN (kicking them with immediate_exit
// and a signal) and returns once all are parked, or ctx ends.
func (m *Machine) Pause(ctx context.Context) error {
	m.pauseMu.Lock()
	m.paused = true
	m.pauseMu.Unlock()
	stop := context.AfterFunc(ctx, func() {
		m.pauseMu.Lock()
		m.pauseCnd.Broadcast()
		m.pauseMu.Unlock()
	})
	defer stop()
	for {
		m.kickAll()
		m.pauseMu.Lock()
		done := m.parked == len(m.vcpus) || m.stopping.Load()
		m.pauseMu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-m.exitCh:
			return nil
		case <-afterMillis(1):
		}
	}
}

// Resume lets paused vCPUs run again.
func (m *Machine) Resume() {
	m.pauseMu.Lock()
	m.paused = false
	m.pauseCnd.Broadcast()
	m.pauseMu.Unlock()
}

// park holds vCPU v's thread while the machine is paused.
func (m *Machine) park(v *vcpu) {
	m.pauseMu.Lock()
	defer m.pauseMu.Unlock()
	if !m.paused {
		return
	}
	m.parked++
	for m.paused && !m.stopping.Load() {
		m.pauseCnd.Wait()
	}
	m.parked--
	if !m.stopping.Load() {
		v.cpu.SetImmediateExit(false)
	}
}

func (m *Machine) handleExit(i int, c *kvm.VCPU, reason uint32, log *slog.Logger) error {
	switch reason {
	case kvm.ExitIO:
		port, size, write, data, err := c.IO()
		if err != nil {
			return err
		}
		for off := 0; off+size <= len(data); off += size {
			if write {
				m.PIO.Write(uint64(port), data[off:off+size])
			} else {
				m.PIO.Read(uint64(port), data[off:off+size])
			}
		}
	case kvm.ExitMMIO:
		addr, write, data := c.MMIO()
		if write {
			m.MMIO.Write(addr, data)
		} else {
			m.MMIO.Read(addr, data)
		}
	case kvm.ExitHLT:
		m.Stop(Exit{Reason: ExitHalt})
	case kvm.ExitShutdown:
		m.Stop(Exit{Reason: ExitTripleFault, Status: 1, Err: fmt.Errorf("vcpu %d: guest triple fault (%s)", i, regsSummary(c))})
	case kvm.ExitSystemEvent:
		switch c.SystemEvent() {
		case kvm.SystemEventShutdown:
			m.Stop(Exit{Reason: ExitPowerOff})
		case kvm.SystemEventReset:
			m.Stop(Exit{Reason: ExitReboot})
		default:
			m.Stop(Exit{Reason: ExitError, Status: 1, Err: fmt.Errorf("vcpu %d: guest crash event %d", i, c.SystemEvent())})
		}
	case kvm.ExitInternalError:
		sub, data := c.InternalError()
		if sub == 1 {
			return fmt.Errorf("vcpu %d: KVM could not emulate an instruction at %s: this KVM cannot execute guest kernel code natively (%w)", i, regsSummary(c), ErrEmulatedKVM)
		}
		return fmt.Errorf("vcpu %d: KVM internal error %d %x at %s", i, sub, data, regsSummary(c))
	case kvm.ExitFailEntry:
		return fmt.Errorf("vcpu %d: KVM could not enter the guest (hardware reason %#x)", i, c.FailEntry())
	case kvm.ExitIntr, kvm.ExitIRQWindowOpen:
	default:
		log.Warn("unhandled vcpu exit", "reason", reason)
		return fmt.Errorf("vcpu %d: unhandled exit reason %d at %s", i, reason, regsSummary(c))
	}
	return nil
}

func regsSummary(c *kvm.VCPU) string {
	r, err := c.Regs()
	if err != nil {
		return "unknown RIP"
	}
	s, err := c.Sregs()
	if err != nil {
		return fmt.Sprintf("RIP %#x", r.RIP)
	}
	return fmt.Sprintf("RIP %#x CS %#x CR0 %#x", r.RIP, s.CS.Selector, s.CR0)
}

// newVM creates the VM on cfg.KVMFile when given, else on cfg.KVMPath.
func newVM(cfg Config) (*vm.VM, error) {
	if cfg.KVMFile == nil {
		return vm.New(cfg.KVMPath)
	}
	sys, err := kvm.FromFile(cfg.KVMFile)
	if err != nil {
		return nil, err
	}
	return vm.NewOn(sys)
}
