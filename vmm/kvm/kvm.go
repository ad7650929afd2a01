// Package kvm is the VMM's thin layer over the /dev/kvm ioctl API.
//
// It wraps github.com/bobuhiro11/gokvm's ioctl helpers (and adds the ones
// gokvm lacks: ioeventfd, irqfd, MSI routing, the shared kvm_run page) behind
// three handles: System (/dev/kvm), VM and VCPU. It holds no policy: which
// memory, which devices, which CPUID bits is decided by the caller.
package kvm

import (
	"errors"
	"fmt"
	"os"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"
)

// Sentinel errors callers branch on.
var (
	// ErrNoKVM means /dev/kvm does not exist on this host.
	ErrNoKVM = errors.New("/dev/kvm does not exist (is the kvm module loaded and virtualization enabled?)")
	// ErrPermission means /dev/kvm exists but cannot be opened.
	ErrPermission = errors.New("no permission to open /dev/kvm (run as root or join the kvm group)")
	// ErrInterrupted means KVM_RUN returned early because of a signal or
	// immediate_exit; the caller decides whether to run again.
	ErrInterrupted = errors.New("vcpu run interrupted")
)

// Capabilities used by the VMM (numbers from linux/kvm.h).
const (
	CapIRQChip           = 0
	CapUserMemory        = 3
	CapSetTSSAddr        = 4
	CapIRQRouting        = 25
	CapIRQFD             = 32
	CapPIT2              = 33
	CapIOEventFD         = 36
	CapSignalMSI         = 77
	CapTSCDeadlineTimer  = 72
	CapImmediateExit     = 136
	CapExitOnEmulFailure = 204
)

// Exit reasons (kvm_run.exit_reason).
const (
	ExitUnknown       = 0
	ExitException     = 1
	ExitIO            = 2
	ExitHypercall     = 3
	ExitDebug         = 4
	ExitHLT           = 5
	ExitMMIO          = 6
	ExitIRQWindowOpen = 7
	ExitShutdown      = 8
	ExitFailEntry     = 9
	ExitIntr          = 10
	ExitInternalError = 17
	ExitSystemEvent   = 24
)

// System event types (kvm_run.system_event.type).
const (
	SystemEventShutdown = 1
	SystemEventReset    = 2
	SystemEventCrash    = 3
)

// System is an open /dev/kvm.
type System struct {
	f *os.File
}

// OpenPath opens a KVM device node at path.
func OpenPath(path string) (*System, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, ErrNoKVM
	case errors.Is(err, os.ErrPermission):
		return nil, ErrPermission
	case err != nil:
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return FromFile(f)
}

// FromFile uses f, an already-open /dev/kvm (a jailed VMM has no path to
// open), after checking the API version; the System takes charge of f
// (it is closed on error too).
func FromFile(f *os.File) (*System, error) {
	v, err := gokvm.GetAPIVersion(f.Fd())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("KVM_GET_API_VERSION: %w", err)
	}
	if v != 12 {
		f.Close()
		return nil, fmt.Errorf("unsupported KVM API version %d (want 12)", v)
	}
	return &System{f: f}, nil
}

// Close closes /dev/kvm.
func (s *System) Close() error { return s.f.Close() }

// Fd returns the file descriptor.
func (s *System) Fd() uintptr { return s.f.Fd() }

// CheckExtension returns KVM_CHECK_EXTENSION's answer for cap (0 = absent).
func (s *System) CheckExtension(capability int) int {
	r, err := gokvm.CheckExtension(s.f.Fd(), gokvm.Capability(capability))
	if err != nil {
		return 0
	}
	return int(r)
}

// SupportedCPUID returns KVM_GET_SUPPORTED_CPUID.
func (s *System) SupportedCPUID() ([]gokvm.CPUIDEntry2, error) {
	for n := 128; n <= 4096; n *= 2 {
		c := gokvm.CPUID{Nent: uint32(n), Entries: make([]gokvm.CPUIDEntry2, n)}
		err := gokvm.GetSupportedCPUID(s.f.Fd(), &c)
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
		}
		return c.Entries[:c.Nent], nil
	}
	return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: too many entries")
}

// VCPUMmapSize returns the size of the kvm_run mapping.
func (s *System) VCPUMmapSize() (int, error) {
	n, err := gokvm.GetVCPUMMmapSize(s.f.Fd())
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	return int(n), nil
}

// VM is a KVM virtual machine.
type VM struct {
	sys *System
	fd  int
}

// CreateVM creates an empty VM.
func (s *System) CreateVM() (*VM, error) {
	fd, err := gokvm.CreateVM(s.f.Fd())
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	unix.CloseOnExec(int(fd))
	return &VM{sys: s, fd: int(fd)}, nil
}

// Fd returns the VM file descriptor.
func (vm *VM) Fd() int { return vm.fd }

// Close closes the VM; KVM frees it once all vCPUs are closed too.
func (vm *VM) Close() error { return unix.Close(vm.fd) }

// SetMemory maps host memory mem at guest physical address gpa in slot.
// An empty mem deletes the slot.
func (vm *VM) SetMemory(slot uint32, gpa uint64, mem []byte, readOnly bool) error {
	r := gokvm.UserspaceMemoryRegion{Slot: slot, GuestPhysAddr: gpa, MemorySize: uint64(len(mem))}
	if len(mem) > 0 {
		r.UserspaceAddr = sliceAddr(mem)
	}
	if readOnly {
		r.SetMemReadonly()
	}
	if err := gokvm.SetUserMemoryRegion(uintptr(vm.fd), &r); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION slot %d at %#x (%d bytes): %w", slot, gpa, len(mem), err)
	}
	return nil
}

// SetTSSAddr sets the 3-page region KVM needs on Intel for real-mode emulation.
func (vm *VM) SetTSSAddr(addr uint32) error {
	if err := gokvm.SetTSSAddr(uintptr(vm.fd), addr); err != nil {
		return fmt.Errorf("KVM_SET_TSS_ADDR: %w", err)
	}
	return nil
}

// SetIdentityMapAddr sets the page KVM uses for the identity map on Intel.
func (vm *VM) SetIdentityMapAddr(addr uint32) error {
	if err := gokvm.SetIdentityMapAddr(uintptr(vm.fd), addr); err != nil {
		return fmt.Errorf("KVM_SET_IDENTITY_MAP_ADDR: %w", err)
	}
	return nil
}

// CreateIRQChip creates the in-kernel PIC, IOAPIC and LAPICs.
func (vm *VM) CreateIRQChip() error {
	if err := gokvm.CreateIRQChip(uintptr(vm.fd)); err != nil {
		return fmt.Errorf("KVM_CREATE_IRQCHIP: %w", err)
	}
	return nil
}

// CreatePIT2 creates the in-kernel i8254 PIT.
func (vm *VM) CreatePIT2() error {
	if err := gokvm.CreatePIT2(uintptr(vm.fd)); err != nil {
		return fmt.Errorf("KVM_CREATE_PIT2: %w", err)
	}
	return nil
}

// IRQLine sets the level of an in-kernel irqchip input (GSI).
func (vm *VM) IRQLine(gsi uint32, high bool) error {
	var level uint32
	if high {
		level = 1
	}
	if err := gokvm.IRQLineStatus(uintptr(vm.fd), gsi, level); err != nil {
		return fmt.Errorf("KVM_IRQ_LINE gsi %d: %w", gsi, err)
	}
	return nil
}

// RouteKind says what a GSI routing entry delivers.
type RouteKind uint32

// Route kinds (KVM_IRQ_ROUTING_*).
const (
	RouteIRQChip RouteKind = 1
	RouteMSI     RouteKind = 2
)

// Route is one GSI routing entry.
type Route struct {
	GSI  uint32
	Kind RouteKind
	// For RouteIRQChip: Chip (0 PIC master, 1 PIC slave, 2 IOAPIC) and Pin.
	Chip, Pin uint32
	// For RouteMSI: the message.
	Addr uint64
	Data uint32
}

// DefaultRoutes returns the legacy routing for the in-kernel irqchip, as
// PC firmware describes it with an IRQ0->GSI2 interrupt source override:
// ISA IRQs 0-15 go to the PICs (except the cascade pin 2), IRQ 0 (the PIT)
// goes to IOAPIC pin 2, and GSIs 1-23 (but 2) to the IOAPIC pin of the same
// number. SetGSIRouting replaces the whole table, so callers add their MSI
// routes to these.
func DefaultRoutes() []Route {
	var rs []Route
	for irq := uint32(0); irq < 16; irq++ {
		if irq == 2 {
			continue
		}
		chip, pin := uint32(0), irq
		if irq >= 8 {
			chip, pin = 1, irq-8
		}
		rs = append(rs, Route{GSI: irq, Kind: RouteIRQChip, Chip: chip, Pin: pin})
	}
	for gsi := uint32(0); gsi < 24; gsi++ {
		switch gsi {
		case 0:
			rs = append(rs, Route{GSI: 0, Kind: RouteIRQChip, Chip: 2, Pin: 2})
		case 2:
		default:
			rs = append(rs, Route{GSI: gsi, Kind: RouteIRQChip, Chip: 2, Pin: gsi})
		}
	}
	return rs
}

// CapIRQFDResample is KVM_CAP_IRQFD_RESAMPLE (level-triggered irqfds).
const CapIRQFDResample = 82
