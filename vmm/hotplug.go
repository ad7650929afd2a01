package vmm

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"rainforest/vmm/devices"
	"rainforest/vmm/layout"
	"rainforest/vmm/platform"
	"rainforest/vmm/platform/hotplug"
)

// Errors of device hotplug that callers branch on.
var (
	// ErrNoDevice means no device has the given id.
	ErrNoDevice = errors.New("no such device")
	// ErrDeviceExists means a device with the id is plugged already.
	ErrDeviceExists = errors.New("device already attached")
	// ErrNotReleased means the guest did not release a device in time;
	// the device stays attached and working.
	ErrNotReleased = errors.New("the guest did not release the device")
)

// slots is the machine's table of plugged devices by id, and the ACPI PCI
// hotplug controller through which a running guest learns of them.
type slots struct {
	ctrl *hotplug.Controller
	mu   sync.Mutex
	ids  map[string]int // device id -> slot
	// ejected receives the outcome of a removal requested of the guest.
	ejected map[int]chan error
	// released lists devices the guest let go of without being asked.
	released []string
}

// setupHotplug puts the SCI, the GPE0 block and the PCI hotplug
// controller on the port I/O bus.
func (m *Machine) setupHotplug() error {
	m.sci = platform.NewSCI(m.IRQLine(layout.SCIGSI))
	gpe := platform.NewGPEBlock(m.sci.Input())
	m.slots = &slots{ids: map[string]int{}, ejected: map[int]chan error{}}
	m.slots.ctrl = hotplug.New(gpe, m.onEject)
	if err := m.PIO.Insert(gpe, layout.GPE0Port, layout.GPE0Len); err != nil {
		return err
	}
	return m.PIO.Insert(m.slots.ctrl, layout.PCIHotplugPort, layout.PCIHotplugLen)
}

// AddDevice plugs dev into the first free PCI slot under id. Before the
// machine runs the guest finds it by its own bus scan; while it runs the
// guest is told through ACPI (acpiphp picks it up by itself). It returns
// the slot.
func (m *Machine) AddDevice(id string, dev devices.Device) (int, error) {
	s := m.slots
	s.mu.Lock()
	if _, ok := s.ids[id]; ok {
		s.mu.Unlock()
		return 0, fmt.Errorf("%w: %q", ErrDeviceExists, id)
	}
	slot, err := m.chassis.Add(dev, -1)
	if err != nil {
		s.mu.Unlock()
		return 0, fmt.Errorf("device %q: %w", id, err)
	}
	s.ids[id] = slot
	s.mu.Unlock()
	if m.started.Load() {
		err = s.ctrl.Plug(slot)
	} else {
		err = s.ctrl.SetPresent(slot)
	}
	if err != nil {
		s.mu.Lock()
		delete(s.ids, id)
		s.mu.Unlock()
		_, rerr := m.chassis.Remove(slot)
		return 0, errors.Join(fmt.Errorf("device %q: slot %d: %w", id, slot, err), rerr)
	}
	m.log.Info("device added", "id", id, "slot", slot, "hot", m.started.Load())
	return slot, nil
}

// RemoveDevice removes the device id. While the machine runs, the guest is
// asked to release it (an ACPI eject request) and the device goes once it
// has; when ctx ends first the request is withdrawn and ErrNotReleased
// returned, with the device still attached and working.
func (m *Machine) RemoveDevice(ctx context.Context, id string) error {
	s := m.slots
	s.mu.Lock()
	slot, ok := s.ids[id]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrNoDevice, id)
	}
	if !m.started.Load() {
		delete(s.ids, id)
		s.mu.Unlock()
		_, err := m.chassis.Remove(slot)
		return err
	}
	if _, busy := s.ejected[slot]; busy {
		s.mu.Unlock()
		return fmt.Errorf("device %q: a removal is already under way", id)
	}
	done := make(chan error, 1)
	s.ejected[slot] = done
	s.mu.Unlock()
	if err := s.ctrl.RequestEject(slot); err != nil {
		s.mu.Lock()
		delete(s.ejected, slot)
		s.mu.Unlock()
		return fmt.Errorf("device %q: %w", id, err)
	}
	m.log.Info("device removal requested", "id", id, "slot", slot)
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	case <-m.exitCh:
	}
	if s.ctrl.CancelEject(slot) {
		s.mu.Lock()
		delete(s.ejected, slot)
		s.mu.Unlock()
		if m.stopping.Load() {
			return fmt.Errorf("device %q: the machine is stopping", id)
		}
		return fmt.Errorf("%w: device %q (slot %d) is still in use by the guest: %v; it stays attached", ErrNotReleased, id, slot, ctx.Err())
	}
	// The guest ejected it meanwhile.
	return <-done
}

// onEject is the hotplug controller's callback, on the vCPU thread whose
// _EJ0 write released slot: the device leaves the bus now.
func (m *Machine) onEject(slot int) {
	_, err := m.chassis.Remove(slot)
	s := m.slots
	s.mu.Lock()
	id := ""
	for k, v := range s.ids {
		if v == slot {
			id = k
			delete(s.ids, k)
		}
	}
	done, asked := s.ejected[slot]
	delete(s.ejected, slot)
	if !asked {
		s.released = append(s.released, id)
	}
	s.mu.Unlock()
	m.log.Info("device removed", "id", id, "slot", slot, "asked", asked, "err", err)
	if asked {
		done <- err
	}
}

// DeviceSlots returns the plugged devices' slots by id.
func (m *Machine) DeviceSlots() map[string]int {
	s := m.slots
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.ids))
	for k, v := range s.ids {
		out[k] = v
	}
	return out
}

// Released returns the ids of devices the guest removed on its own.
func (m *Machine) Released() []string {
	s := m.slots
	s.mu.Lock()
	defer s.mu.Unlock()
	out := append([]string(nil), s.released...)
	sort.Strings(out)
	return out
}
