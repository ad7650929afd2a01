package vmm

import (
	"errors"
	"fmt"
	"io"
	"time"

	"rainforest/vmm/devices/shmemdev"
	"rainforest/vmm/devices/virtiodev"
	"rainforest/vmm/eventfd"
	"rainforest/vmm/interrupt"
	"rainforest/vmm/pci"
	"rainforest/vmm/virtio"
)

func afterMillis(n int) <-chan time.Time { return time.After(time.Duration(n) * time.Millisecond) }

// AddVirtio plugs a virtio device model under id (see AddDevice); backing,
// when not nil, is closed when the device is removed (or at once when it
// cannot be added).
func (m *Machine) AddVirtio(id string, model virtio.DeviceModel, backing io.Closer) (int, error) {
	dev := virtiodev.New(model, backing)
	slot, err := m.AddDevice(id, dev)
	if err != nil {
		if backing != nil && !dev.Claimed() {
			backing.Close()
		}
		return 0, err
	}
	return slot, nil
}

// RegionDeviceID is the device id of the shared-memory function of the
// region name.
func RegionDeviceID(name string) string { return "region/" + name }

// AddSharedMemory plugs a shared-memory function (see shmemdev) under the
// id of its region (RegionDeviceID; "region/<slot>" when it has no name).
func (m *Machine) AddSharedMemory(cfg shmemdev.Config) (*shmemdev.Device, error) {
	d, err := shmemdev.New(cfg)
	if err != nil {
		return nil, err
	}
	id := RegionDeviceID(cfg.Identity.Name)
	if cfg.Identity.Name == "" {
		id = fmt.Sprintf("region/%p", d)
	}
	if _, err := m.AddDevice(id, d); err != nil {
		return nil, err
	}
	return d, nil
}

// MSIVector is one MSI message source wired to the guest through an irqfd:
// signalling its eventfd injects the message without a VMM exit or ioctl.
// It is the raw primitive for test guests; devices use vector groups.
type MSIVector struct{ g *interrupt.MSIXGroup }

// Fire injects the vector's message.
func (v *MSIVector) Fire() error { return v.g.Fire(0) }

// EventFD returns the eventfd behind the vector (to hand to another VM's
// ioeventfd, for doorbells that never reach userspace).
func (v *MSIVector) EventFD() *eventfd.EventFD { return v.g.EventFD(0) }

// NewMSIVector makes a vector delivering the MSI message addr/data until
// the machine is closed.
func (m *Machine) NewMSIVector(addr uint64, data uint32) (*MSIVector, error) {
	g, err := interrupt.NewMSIXGroup(m.vm, 1, nil)
	if err != nil {
		return nil, err
	}
	if err := g.Route(0, pci.MSIMessage{Addr: addr, Data: data}, false); err != nil {
		g.Close()
		return nil, err
	}
	m.AddCloser(g.Close)
	return &MSIVector{g: g}, nil
}

// Doorbell is a guest write address wired to an eventfd by KVM (ioeventfd):
// the write completes in the kernel without a VMM exit.
type Doorbell struct {
	Addr uint64
	ev   *eventfd.EventFD
}

// EventFD returns the doorbell's eventfd.
func (d *Doorbell) EventFD() *eventfd.EventFD { return d.ev }

// NewDoorbell registers, until the machine is closed, an ioeventfd for
// writes of n bytes at addr (port I/O when pio) on a new eventfd.
func (m *Machine) NewDoorbell(addr uint64, n uint32, pio bool) (*Doorbell, error) {
	ev, err := eventfd.New()
	if err != nil {
		return nil, err
	}
	if err := m.vm.AddIOEventFD(ev.Fd(), addr, n, pio, nil); err != nil {
		ev.Close()
		return nil, err
	}
	m.AddCloser(func() error { return errors.Join(m.vm.RemoveIOEventFD(ev.Fd(), addr, n, pio, nil), ev.Close()) })
	return &Doorbell{Addr: addr, ev: ev}, nil
}

// NewDoorbellMatch registers, until the machine is closed, an ioeventfd
// for MMIO writes of exactly value (n bytes) at addr that signals ev
// (typically another VM's irqfd; it is duplicated, as that VM may be
// closed first).
func (m *Machine) NewDoorbellMatch(addr uint64, n uint32, value uint64, ev *eventfd.EventFD) error {
	dup, err := ev.Dup()
	if err != nil {
		return err
	}
	if err := m.vm.AddIOEventFD(dup.Fd(), addr, n, false, &value); err != nil {
		dup.Close()
		return err
	}
	m.AddCloser(func() error { return errors.Join(m.vm.RemoveIOEventFD(dup.Fd(), addr, n, false, &value), dup.Close()) })
	return nil
}
