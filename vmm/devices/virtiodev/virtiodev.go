// Package virtiodev plugs a virtio device model into the chassis as a
// virtio-pci function: an MSI-X vector per queue plus one for configuration
// changes, an ioeventfd per queue notify register (a device-owned goroutine
// turns their signals into QueueNotify calls, except for a model whose
// queues another process serves, virtio.ExternalQueues, which gets the
// eventfds themselves), and INTA# for guests that leave MSI-X off.
package virtiodev

import (
	"errors"
	"io"

	"rainforest/vmm/devices"
	"rainforest/vmm/eventfd"
	"rainforest/vmm/pci"
	"rainforest/vmm/virtio"
)

// Quiescer is a device model that may work outside QueueNotify (from a
// timer); Quiesce stops that, and is called when the device's goroutine
// stops.
type Quiescer interface {
	Quiesce()
}

// Device is a virtio device model on its way into, or in, a PCI slot.
type Device struct {
	model virtio.DeviceModel
	// backing is closed when the device is removed (a disk's file).
	backing io.Closer
	claimed bool // Plug took charge of backing
	fn      *virtio.PCIDevice
}

// New returns a device for model; backing, when not nil, is closed once
// the device is removed.
func New(model virtio.DeviceModel, backing io.Closer) *Device {
	return &Device{model: model, backing: backing}
}

// Model returns the device model.
func (d *Device) Model() virtio.DeviceModel { return d.model }

// Function returns the virtio-pci function once plugged.
func (d *Device) Function() *virtio.PCIDevice { return d.fn }

// Claimed reports whether Plug ran and so took charge of closing backing;
// when it did not (the chassis refused the device before), the caller
// still owns it.
func (d *Device) Claimed() bool { return d.claimed }

// Plug implements devices.Device.
func (d *Device) Plug(r *devices.Resources) (pci.Device, error) {
	d.claimed = true
	if d.backing != nil {
		r.OnRemove(d.backing.Close)
	}
	msix, err := r.MSIX(d.model.NumQueues()+1, nil)
	if err != nil {
		return nil, err
	}
	fn, err := virtio.NewPCIDevice(d.model, r.Memory(), msix)
	if err != nil {
		return nil, err
	}
	evs := make([]*eventfd.EventFD, 0, fn.NumQueues())
	r.OnRemove(func() error {
		var errs []error
		for _, ev := range evs {
			errs = append(errs, ev.Close())
		}
		return errors.Join(errs...)
	})
	for q := range fn.NumQueues() {
		ev, err := eventfd.New()
		if err != nil {
			return nil, err
		}
		evs = append(evs, ev)
		if err := r.IOEventFD(virtio.BARIndex, fn.NotifyOffsetOf(q), 2, nil, ev); err != nil {
			return nil, err
		}
	}
	if _, ok := d.model.(virtio.ExternalQueues); ok {
		// Another process serves the queues: it waits on the kicks
		// itself (the model hands them on at activation).
		if err := fn.UseKickEventFDs(evs); err != nil {
			return nil, err
		}
		d.fn = fn
		return fn, nil
	}
	r.Go(func(*eventfd.EventFD) {
		// A model that serves from a timer too (a rate-limited disk)
		// stops with the goroutine, before the vectors are released.
		if q, ok := d.model.(Quiescer); ok {
			defer q.Quiesce()
		}
		for {
			ready, err := r.Wait(evs)
			if err != nil {
				return
			}
			for _, q := range ready {
				fn.QueueNotify(q)
			}
		}
	})
	d.fn = fn
	return fn, nil
}
