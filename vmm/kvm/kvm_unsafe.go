package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"
)

const kvmio = 0xAE

func iow(nr, size uintptr) uintptr { return 1<<30 | size<<16 | kvmio<<8 | nr }

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}

func sliceAddr(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(&b[0]))) }

// ioeventfd flags.
const (
	ioeventfdDatamatch = 1 << 0
	ioeventfdPIO       = 1 << 1
	ioeventfdDeassign  = 1 << 2
)

type ioeventfdArgs struct {
	Datamatch uint64
	Addr      uint64
	Len       uint32
	FD        int32
	Flags     uint32
	_         [36]byte
}

// IOEventFD makes a guest write of length n at addr (port I/O when pio)
// signal the eventfd fd in the kernel, without exiting to the VMM. n may be 0
// to match any length where KVM supports it.
func (vm *VM) IOEventFD(fd int, addr uint64, n uint32, pio bool) error {
	return vm.ioeventfd(fd, addr, n, pio, 0)
}

// IOEventFDMatch is IOEventFD for writes of exactly value only (datamatch):
// several eventfds can share one address, one per value, e.g. a doorbell
// register whose value names the target.
func (vm *VM) IOEventFDMatch(fd int, addr uint64, n uint32, pio bool, value uint64) error {
	a := ioeventfdArgs{Addr: addr, Len: n, FD: int32(fd), Flags: ioeventfdDatamatch, Datamatch: value}
	if pio {
		a.Flags |= ioeventfdPIO
	}
	if err := ioctl(vm.fd, iow(0x79, unsafe.Sizeof(a)), unsafe.Pointer(&a)); err != nil {
		return fmt.Errorf("KVM_IOEVENTFD at %#x value %#x: %w", addr, value, err)
	}
	return nil
}

// RemoveIOEventFDMatch undoes IOEventFDMatch.
func (vm *VM) RemoveIOEventFDMatch(fd int, addr uint64, n uint32, pio bool, value uint64) error {
	a := ioeventfdArgs{Addr: addr, Len: n, FD: int32(fd), Flags: ioeventfdDatamatch | ioeventfdDeassign, Datamatch: value}
	if pio {
		a.Flags |= ioeventfdPIO
	}
	if err := ioctl(vm.fd, iow(0x79, unsafe.Sizeof(a)), unsafe.Pointer(&a)); err != nil {
		return fmt.Errorf("KVM_IOEVENTFD deassign at %#x value %#x: %w", addr, value, err)
	}
	return nil
}

// RemoveIOEventFD undoes IOEventFD.
func (vm *VM) RemoveIOEventFD(fd int, addr uint64, n uint32, pio bool) error {
	return vm.ioeventfd(fd, addr, n, pio, ioeventfdDeassign)
}

func (vm *VM) ioeventfd(fd int, addr uint64, n uint32, pio bool, flags uint32) error {
	a := ioeventfdArgs{Addr: addr, Len: n, FD: int32(fd), Flags: flags}
	if pio {
		a.Flags |= ioeventfdPIO
	}
	if err := ioctl(vm.fd, iow(0x79, unsafe.Sizeof(a)), unsafe.Pointer(&a)); err != nil {
		return fmt.Errorf("KVM_IOEVENTFD at %#x: %w", addr, err)
	}
	return nil
}

type irqfdArgs struct {
	FD         uint32
	GSI        uint32
	Flags      uint32
	ResampleFD uint32
	_          [16]byte
}

// IRQFD makes a write to the eventfd fd raise gsi in the kernel.
func (vm *VM) IRQFD(fd int, gsi uint32) error {
	a := irqfdArgs{FD: uint32(fd), GSI: gsi}
	if err := ioctl(vm.fd, iow(0x76, unsafe.Sizeof(a)), unsafe.Pointer(&a)); err != nil {
		return fmt.Errorf("KVM_IRQFD gsi %d: %w", gsi, err)
	}
	return nil
}

// irqfd flags.
const (
	irqfdDeassign = 1 << 0
	irqfdResample = 1 << 1
)

// IRQFDResample makes a write to the eventfd fd assert gsi, an irqchip
// input, as a level: the line stays asserted until the guest's EOI for it,
// when KVM lowers it and signals resampleFD. Several eventfds may drive one
// GSI (their levels are ORed). RemoveIRQFD detaches it and lowers the line
// when it was the last.
func (vm *VM) IRQFDResample(fd, resampleFD int, gsi uint32) error {
	a := irqfdArgs{FD: uint32(fd), GSI: gsi, Flags: irqfdResample, ResampleFD: uint32(resampleFD)}
	if err := ioctl(vm.fd, iow(0x76, unsafe.Sizeof(a)), unsafe.Pointer(&a)); err != nil {
		return fmt.Errorf("KVM_IRQFD resample gsi %d: %w", gsi, err)
	}
	return nil
}

// ioapicState is struct kvm_irqchip holding a struct kvm_ioapic_state.
type ioapicState struct {
	ChipID   uint32
	_        uint32
	Base     uint64
	IORegSel uint32
	ID       uint32
	IRR      uint32
	_        [492]byte
}

// irqchipIOAPIC is KVM_IRQCHIP_IOAPIC.
const irqchipIOAPIC = 2

// IOAPICRequests returns the in-kernel IOAPIC's interrupt request register:
// bit n is set while input n is asserted (by KVM_IRQ_LINE or an irqfd).
func (vm *VM) IOAPICRequests() (uint32, error) {
	s := ioapicState{ChipID: irqchipIOAPIC}
	// KVM_GET_IRQCHIP is _IOWR(KVMIO, 0x62, struct kvm_irqchip).
	req := 3<<30 | unsafe.Sizeof(s)<<16 | kvmio<<8 | 0x62
	if err := ioctl(vm.fd, req, unsafe.Pointer(&s)); err != nil {
		return 0, fmt.Errorf("KVM_GET_IRQCHIP: %w", err)
	}
	return s.IRR, nil
}

// RemoveIRQFD undoes IRQFD.
func (vm *VM) RemoveIRQFD(fd int, gsi uint32) error {
	a := irqfdArgs{FD: uint32(fd), GSI: gsi, Flags: irqfdDeassign}
	if err := ioctl(vm.fd, iow(0x76, unsafe.Sizeof(a)), unsafe.Pointer(&a)); err != nil {
		return fmt.Errorf("KVM_IRQFD deassign gsi %d: %w", gsi, err)
	}
	return nil
}

// SetGSIRouting replaces the VM's whole GSI routing table.
func (vm *VM) SetGSIRouting(routes []Route) error {
	const entrySize = 48
	buf := make([]byte, 8+entrySize*len(routes))
	binary.LittleEndian.PutUint32(buf[0:], uint32(len(routes)))
	for i, r := range routes {
		e := buf[8+i*entrySize:]
		binary.LittleEndian.PutUint32(e[0:], r.GSI)
		binary.LittleEndian.PutUint32(e[4:], uint32(r.Kind))
		switch r.Kind {
		case RouteIRQChip:
			binary.LittleEndian.PutUint32(e[16:], r.Chip)
			binary.LittleEndian.PutUint32(e[20:], r.Pin)
		case RouteMSI:
			binary.LittleEndian.PutUint32(e[16:], uint32(r.Addr))
			binary.LittleEndian.PutUint32(e[20:], uint32(r.Addr>>32))
			binary.LittleEndian.PutUint32(e[24:], r.Data)
		default:
			return fmt.Errorf("GSI %d: unknown route kind %d", r.GSI, r.Kind)
		}
	}
	if err := ioctl(vm.fd, iow(0x6a, 8), unsafe.Pointer(&buf[0])); err != nil {
		return fmt.Errorf("KVM_SET_GSI_ROUTING (%d entries): %w", len(routes), err)
	}
	return nil
}

type msiArgs struct {
	AddrLo, AddrHi, Data, Flags, DevID uint32
	_                                  [12]byte
}

// SignalMSI injects an MSI message directly (without a GSI route).
func (vm *VM) SignalMSI(addr uint64, data uint32) error {
	a := msiArgs{AddrLo: uint32(addr), AddrHi: uint32(addr >> 32), Data: data}
	if err := ioctl(vm.fd, iow(0xa5, unsafe.Sizeof(a)), unsafe.Pointer(&a)); err != nil {
		return fmt.Errorf("KVM_SIGNAL_MSI: %w", err)
	}
	return nil
}

// VCPU is one virtual CPU and its shared kvm_run page.
type VCPU struct {
	ID  int
	fd  int
	run []byte
}

// CreateVCPU creates vCPU id (also its initial APIC id).
func (vm *VM) CreateVCPU(id int) (*VCPU, error) {
	size, err := vm.sys.VCPUMmapSize()
	if err != nil {
		return nil, err
	}
	fd, err := gokvm.CreateVCPU(uintptr(vm.fd), id)
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU %d: %w", id, err)
	}
	unix.CloseOnExec(int(fd))
	run, err := unix.Mmap(int(fd), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(int(fd))
		return nil, fmt.Errorf("mmap kvm_run of vcpu %d: %w", id, err)
	}
	return &VCPU{ID: id, fd: int(fd), run: run}, nil
}

// Fd returns the vCPU file descriptor.
func (c *VCPU) Fd() uintptr { return uintptr(c.fd) }

// Close unmaps kvm_run and closes the vCPU.
func (c *VCPU) Close() error {
	err1 := unix.Munmap(c.run)
	err2 := unix.Close(c.fd)
	return errors.Join(err1, err2)
}

// Run enters the guest until the next exit and returns the exit reason.
// A signal or immediate_exit gives ErrInterrupted.
func (c *VCPU) Run() (uint32, error) {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(c.fd), uintptr(kvmio<<8|0x80), 0)
	switch errno {
	case 0:
		return binary.LittleEndian.Uint32(c.run[8:]), nil
	case unix.EINTR, unix.EAGAIN:
		return ExitIntr, ErrInterrupted
	default:
		return 0, fmt.Errorf("KVM_RUN vcpu %d: %w", c.ID, errno)
	}
}

// SetImmediateExit sets kvm_run.immediate_exit: while set, KVM_RUN returns
// EINTR at once instead of entering the guest.
func (c *VCPU) SetImmediateExit(on bool) {
	// Byte 1 of the first (aligned) word; other threads kick a vCPU while it
	// runs, so update the word atomically.
	w := (*uint32)(unsafe.Pointer(&c.run[0]))
	for {
		old := atomic.LoadUint32(w)
		nw := old &^ 0xff00
		if on {
			nw |= 0x0100
		}
		if atomic.CompareAndSwapUint32(w, old, nw) {
			return
		}
	}
}

// IO describes a port I/O exit. data aliases kvm_run and holds count*size
// bytes; for reads the caller fills it.
func (c *VCPU) IO() (port uint16, size int, write bool, data []byte, err error) {
	dir := c.run[32]
	size = int(c.run[33])
	port = binary.LittleEndian.Uint16(c.run[34:])
	count := int(binary.LittleEndian.Uint32(c.run[36:]))
	off := binary.LittleEndian.Uint64(c.run[40:])
	n := size * count
	if off > uint64(len(c.run)) || uint64(n) > uint64(len(c.run))-off {
		return 0, 0, false, nil, fmt.Errorf("vcpu %d: I/O exit data out of kvm_run bounds", c.ID)
	}
	return port, size, dir == 1, c.run[off : off+uint64(n)], nil
}

// MMIO describes an MMIO exit; data aliases kvm_run (1 to 8 bytes).
func (c *VCPU) MMIO() (addr uint64, write bool, data []byte) {
	addr = binary.LittleEndian.Uint64(c.run[32:])
	n := binary.LittleEndian.Uint32(c.run[48:])
	if n > 8 {
		n = 8
	}
	return addr, c.run[52] != 0, c.run[40 : 40+n]
}

// InternalError returns the suberror and data of a KVM_EXIT_INTERNAL_ERROR.
func (c *VCPU) InternalError() (suberror uint32, data []uint64) {
	suberror = binary.LittleEndian.Uint32(c.run[32:])
	n := binary.LittleEndian.Uint32(c.run[36:])
	if n > 16 {
		n = 16
	}
	for i := uint32(0); i < n; i++ {
		data = append(data, binary.LittleEndian.Uint64(c.run[40+8*i:]))
	}
	return suberror, data
}

// SystemEvent returns the type of a KVM_EXIT_SYSTEM_EVENT.
func (c *VCPU) SystemEvent() uint32 { return binary.LittleEndian.Uint32(c.run[32:]) }

// FailEntry returns the hardware reason of a KVM_EXIT_FAIL_ENTRY.
func (c *VCPU) FailEntry() uint64 { return binary.LittleEndian.Uint64(c.run[32:]) }

// Regs returns the general-purpose registers.
func (c *VCPU) Regs() (*gokvm.Regs, error) {
	r, err := gokvm.GetRegs(uintptr(c.fd))
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_REGS: %w", err)
	}
	return r, nil
}

// SetRegs sets the general-purpose registers.
func (c *VCPU) SetRegs(r *gokvm.Regs) error {
	if err := gokvm.SetRegs(uintptr(c.fd), r); err != nil {
		return fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	return nil
}

// Sregs returns the special registers.
func (c *VCPU) Sregs() (*gokvm.Sregs, error) {
	r, err := gokvm.GetSregs(uintptr(c.fd))
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	return r, nil
}

// SetSregs sets the special registers.
func (c *VCPU) SetSregs(r *gokvm.Sregs) error {
	if err := gokvm.SetSregs(uintptr(c.fd), r); err != nil {
		return fmt.Errorf("KVM_SET_SREGS: %w", err)
	}
	return nil
}

// SetCPUID sets the vCPU's CPUID table.
func (c *VCPU) SetCPUID(entries []gokvm.CPUIDEntry2) error {
	t := gokvm.CPUID{Nent: uint32(len(entries)), Entries: entries}
	if err := gokvm.SetCPUID2(uintptr(c.fd), &t); err != nil {
		return fmt.Errorf("KVM_SET_CPUID2 (%d entries): %w", len(entries), err)
	}
	return nil
}

// SetMSRs writes model-specific registers (index -> value).
func (c *VCPU) SetMSRs(msrs map[uint32]uint64) error {
	m := gokvm.MSRS{NMSRs: uint32(len(msrs))}
	for i, v := range msrs {
		m.Entries = append(m.Entries, gokvm.MSREntry{Index: i, Data: v})
	}
	if err := gokvm.SetMSRs(uintptr(c.fd), &m); err != nil {
		return fmt.Errorf("KVM_SET_MSRS: %w", err)
	}
	return nil
}

// LAPIC returns the local APIC register page.
func (c *VCPU) LAPIC() (*gokvm.LAPICState, error) {
	var l gokvm.LAPICState
	if err := gokvm.GetLocalAPIC(uintptr(c.fd), &l); err != nil {
		return nil, fmt.Errorf("KVM_GET_LAPIC: %w", err)
	}
	return &l, nil
}

// SetLAPIC writes the local APIC register page.
func (c *VCPU) SetLAPIC(l *gokvm.LAPICState) error {
	if err := gokvm.SetLocalAPIC(uintptr(c.fd), l); err != nil {
		return fmt.Errorf("KVM_SET_LAPIC: %w", err)
	}
	return nil
}

// Interrupt queues an external interrupt vector (only without an in-kernel
// irqchip's LAPIC, i.e. for test guests).
func (c *VCPU) Interrupt(vector uint32) error {
	if err := gokvm.InjectInterrupt(uintptr(c.fd), vector); err != nil {
		return fmt.Errorf("KVM_INTERRUPT %d: %w", vector, err)
	}
	return nil
}

// SetRunnable sets the vCPU's MP state to runnable, so an application
// processor runs without waiting for INIT/SIPI (used by test guests).
func (c *VCPU) SetRunnable() error {
	if err := gokvm.SetMPState(uintptr(c.fd), &gokvm.MPState{State: gokvm.MPStateRunnable}); err != nil {
		return fmt.Errorf("KVM_SET_MP_STATE: %w", err)
	}
	return nil
}
