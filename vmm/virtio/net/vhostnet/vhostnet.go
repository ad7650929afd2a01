// Package vhostnet puts a virtio-net device's data path in the host
// kernel (vhost-net, vmm/vhost) when the VMM has a vhost-net descriptor
// for a TAP NIC, with the VMM's own userspace device (vmm/virtio/net on
// its TAP backend) as the fallback.
//
// The device is a virtio.ExternalQueues model: the transport hands it the
// queues' doorbells (the notify registers' ioeventfds, and the irqfds of
// the MSI-X vectors the driver gave the queues) instead of calling
// QueueNotify for them. When the driver starts the device (DRIVER_OK) it
// gives the kernel the negotiated features that vhost-net knows (the
// others, the offloads, the TAP carries: TUNSETOFFLOAD), the guest memory
// map (all of guest RAM, hotplug memory included), both rings, the kicks
// (ioeventfds: the kernel is woken by KVM) and calls (irqfds: the kernel
// interrupts the guest through KVM), sets the TAP's header size to the
// 12 bytes of virtio 1 (mergeable receive buffers), and attaches the
// rings to the TAP (VHOST_NET_SET_BACKEND), which starts them. No VMM
// thread is on the frame path then. On reset it detaches the TAP (back
// end -1) and takes the rings back (VHOST_GET_VRING_BASE).
//
// When a step fails, or the driver takes interrupts without MSI-X (no
// irqfd to hand on), the device logs it and serves that activation with
// the userspace device instead, relaying the kicks to it itself: the NIC
// still works, at userspace speed. A vhost descriptor that cannot even
// be owned (SET_OWNER, GET_FEATURES) is dropped at New: the device is
// userspace-only from then on.
//
// The kernel path does not filter the guest's source MAC address
// (net.Options.FilterSourceMAC): that is the host's to enforce on the
// TAP for a NIC on vhost.
package vhostnet

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"rainforest/vmm/eventfd"
	"rainforest/vmm/vhostuser"
	"rainforest/vmm/virtio"
	vnet "rainforest/vmm/virtio/net"
)

// Kernel is the in-kernel data path's controls: a *vhost.Net, or a fake
// in tests. The methods are the vhost ioctls of the same names.
type Kernel interface {
	SetOwner() error
	Features() (uint64, error)
	SetFeatures(features uint64) error
	SetMemTable(regions []vhostuser.MemoryRegion) error
	SetVringNum(index, num uint32) error
	SetVringBase(index, base uint32) error
	VringBase(index uint32) (uint32, error)
	SetVringAddr(addr vhostuser.VringAddr) error
	SetVringKick(index uint32, fd int) error
	SetVringCall(index uint32, fd int) error
	SetBackend(index uint32, fd int) error
	Close() error
}

// Tap is the NIC's TAP interface as the kernel path needs it (a
// *tap.Tap).
type Tap interface {
	// Configure sets the offloads the guest accepts (TUNSETOFFLOAD).
	Configure(features uint64) error
	// SetHeaderSize sets the header before every frame
	// (TUNSETVNETHDRSZ).
	SetHeaderSize(n int) error
	// Control runs f with the TAP's descriptor.
	Control(f func(fd uintptr)) error
}

// unbind detaches a ring's eventfd or back end (VHOST_FILE_UNBIND).
const unbind = -1

// State says who serves the queues.
type State string

// States.
const (
	// StateReady: vhost-net is set up and takes the queues when the
	// driver starts the device.
	StateReady State = "ready"
	// StateOn: the kernel serves the queues now.
	StateOn State = "on"
	// StateFallback: the userspace device serves the queues after a
	// vhost step failed (or without MSI-X); the next activation tries
	// vhost again.
	StateFallback State = "fallback"
	// StateOff: vhost-net is unusable (it could not be owned); the
	// userspace device serves the queues.
	StateOff State = "off"
)

// errNoDoorbells: the transport has no kick or call eventfd for a queue
// (the driver left MSI-X off).
var errNoDoorbells = errors.New("no ioeventfd or irqfd for a queue (MSI-X off?)")

// Device is a virtio-net device whose queues the kernel serves while it
// can; the embedded userspace device presents the configuration space and
// serves them otherwise.
type Device struct {
	*vnet.Device
	tap       Tap
	log       *slog.Logger
	kfeatures uint64

	mu     sync.Mutex
	kernel Kernel // nil: off
	state  State
	act    *activation // nil while inactive
}

var _ virtio.ExternalQueues = (*Device)(nil)

// activation is one DRIVER_OK's state.
type activation struct {
	irq      virtio.Interrupts
	features uint64
	kernel   bool               // the kernel serves the queues
	kicks    []*eventfd.EventFD // by queue
	started  []uint32           // rings given kick and call
	attached []uint32           // rings attached to the TAP
	stop     *eventfd.EventFD   // ends the relay (userspace)
	wg       sync.WaitGroup
}

// New returns the device: dev, the userspace device on the TAP tap, whose
// queues kernel serves while it can. It takes charge of kernel (and, by
// Close, of dev). It makes the process kernel's owner and reads its
// features; when either fails it logs it, closes kernel and the device
// is userspace-only (StateOff).
func New(dev *vnet.Device, tap Tap, kernel Kernel, log *slog.Logger) *Device {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Device{Device: dev, tap: tap, log: log, state: StateOff}
	if kernel == nil {
		return d
	}
	err := kernel.SetOwner()
	if err == nil {
		d.kfeatures, err = kernel.Features()
	}
	if err == nil && d.kfeatures&virtio.FeatureVersion1 == 0 {
		err = fmt.Errorf("vhost-net: no VIRTIO_F_VERSION_1 among features %#x", d.kfeatures)
	}
	if err != nil {
		log.Warn("vhost-net unusable; the NIC is served in userspace", "err", err)
		kernel.Close()
		return d
	}
	d.kernel, d.state = kernel, StateReady
	return d
}

// State says who serves the queues now.
func (d *Device) State() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state
}

// Features implements virtio.DeviceModel: the userspace device's, less
// mergeable receive buffers if vhost-net lacks them.
func (d *Device) Features() uint64 {
	f := d.Device.Features()
	if d.kfeatures != 0 && d.kfeatures&vnet.FeatureMrgRxbuf == 0 {
		f &^= vnet.FeatureMrgRxbuf
	}
	return f
}

// ServedTransportFeatures implements virtio.ExternalQueues: those both
// paths serve.
func (d *Device) ServedTransportFeatures() uint64 {
	if d.kfeatures == 0 {
		return virtio.TransportFeatures
	}
	return virtio.TransportFeatures & d.kfeatures
}

// Activate implements virtio.DeviceModel: the kernel takes the queues, or
// else the userspace device.
func (d *Device) Activate(va virtio.Activation) error {
	if err := vnet.CheckFeatures(va.Features); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.act != nil {
		return errors.New("vhost-net: already active")
	}
	if d.kernel != nil {
		a, err := d.startKernel(va)
		if err == nil {
			d.act, d.state = a, StateOn
			d.log.Info("vhost-net serves the NIC")
			return nil
		}
		d.log.Warn("vhost-net failed; the NIC is served in userspace", "err", err)
		d.state = StateFallback
	}
	a, err := d.startUser(va)
	if err != nil {
		return err
	}
	d.act = a
	return nil
}

// startKernel hands the queues to the kernel; on error it has taken back
// what it gave.
func (d *Device) startKernel(va virtio.Activation) (*activation, error) {
	a := &activation{irq: va.IRQ, features: va.Features, kernel: true, kicks: make([]*eventfd.EventFD, d.NumQueues())}
	calls := make([]*eventfd.EventFD, d.NumQueues())
	for q := range d.NumQueues() {
		if q >= len(va.Queues) || va.Queues[q] == nil {
			return nil, fmt.Errorf("queue %d not enabled by the driver", q)
		}
		if va.Doorbells != nil {
			a.kicks[q], calls[q] = va.Doorbells.Kick(q), va.Doorbells.Call(q)
		}
		if a.kicks[q] == nil || calls[q] == nil {
			return nil, fmt.Errorf("queue %d: %w", q, errNoDoorbells)
		}
	}
	err := d.handOver(a, va, calls)
	if err != nil {
		d.takeBack(a)
	}
	return a, err
}

func (d *Device) handOver(a *activation, va virtio.Activation, calls []*eventfd.EventFD) error {
	k := d.kernel
	if err := d.tap.Configure(va.Features); err != nil {
		return err
	}
	if err := d.tap.SetHeaderSize(vnet.HeaderLen); err != nil {
		return fmt.Errorf("tap: TUNSETVNETHDRSZ: %w", err)
	}
	if err := k.SetFeatures(va.Features & d.kfeatures); err != nil {
		return err
	}
	regions, err := vhostuser.HostMemoryTable(va.Mem)
	if err != nil {
		return err
	}
	if err := k.SetMemTable(regions); err != nil {
		return err
	}
	for q := range d.NumQueues() {
		idx, qc := uint32(q), va.Queues[q].Config()
		addr, err := vhostuser.RingAddr(va.Mem, idx, qc)
		if err != nil {
			return fmt.Errorf("queue %d: %w", q, err)
		}
		if err := k.SetVringNum(idx, uint32(qc.Size)); err != nil {
			return err
		}
		if err := k.SetVringBase(idx, 0); err != nil {
			return err
		}
		if err := k.SetVringAddr(addr); err != nil {
			return err
		}
		a.started = append(a.started, idx)
		if err := k.SetVringKick(idx, a.kicks[q].Fd()); err != nil {
			return err
		}
		if err := k.SetVringCall(idx, calls[q].Fd()); err != nil {
			return err
		}
	}
	for q := range d.NumQueues() {
		idx := uint32(q)
		var err error
		if cerr := d.tap.Control(func(fd uintptr) { err = k.SetBackend(idx, int(fd)) }); cerr != nil {
			return fmt.Errorf("tap: %w", cerr)
		}
		if err != nil {
			return err
		}
		a.attached = append(a.attached, idx)
	}
	return nil
}

// takeBack detaches the TAP from the rings and takes them back from the
// kernel (best effort: failures are logged).
func (d *Device) takeBack(a *activation) {
	k := d.kernel
	for _, idx := range a.attached {
		if err := k.SetBackend(idx, unbind); err != nil {
			d.log.Warn("vhost-net: detach the TAP", "queue", idx, "err", err)
		}
	}
	for _, idx := range a.started {
		base, err := k.VringBase(idx)
		if err != nil {
			d.log.Warn("vhost-net: stop queue", "queue", idx, "err", err)
		} else {
			d.log.Debug("vhost-net: queue stopped", "queue", idx, "base", base)
		}
		if err := errors.Join(k.SetVringKick(idx, unbind), k.SetVringCall(idx, unbind)); err != nil {
			d.log.Warn("vhost-net: unbind eventfds", "queue", idx, "err", err)
		}
	}
	a.attached, a.started = nil, nil
}

// startUser starts the userspace device, and a goroutine relaying the
// queues' kicks to it when the transport has them.
func (d *Device) startUser(va virtio.Activation) (*activation, error) {
	a := &activation{kicks: make([]*eventfd.EventFD, d.NumQueues())}
	var kicks []*eventfd.EventFD
	var which []int
	for q := range d.NumQueues() {
		if va.Doorbells != nil {
			if k := va.Doorbells.Kick(q); k != nil {
				a.kicks[q] = k
				kicks = append(kicks, k)
				which = append(which, q)
			}
		}
	}
	if len(kicks) > 0 {
		stop, err := eventfd.New()
		if err != nil {
			return nil, fmt.Errorf("vhost-net: %w", err)
		}
		a.stop = stop
	}
	if err := d.Device.Activate(va); err != nil {
		if a.stop != nil {
			a.stop.Close()
		}
		return nil, err
	}
	if a.stop != nil {
		a.wg.Add(1)
		go d.relay(a, kicks, which) // owner: the activation; ended by stopUser
	}
	return a, nil
}

// relay turns kicks into the userspace device's QueueNotify until
// stopped.
func (d *Device) relay(a *activation, kicks []*eventfd.EventFD, which []int) {
	defer a.wg.Done()
	for {
		ready, err := eventfd.Wait(a.stop, kicks)
		if err != nil {
			if !errors.Is(err, eventfd.ErrStopped) {
				d.log.Error("vhost-net: waiting on kicks", "err", err)
			}
			return
		}
		for _, i := range ready {
			d.Device.QueueNotify(which[i])
		}
	}
}

// stopUser ends the relay and resets the userspace device.
func (d *Device) stopUser(a *activation) {
	if a.stop != nil {
		_ = a.stop.Signal()
		a.wg.Wait()
		a.stop.Close()
	}
	d.Device.Reset()
}

// QueueNotify implements virtio.DeviceModel: a notification that reached
// the VMM goes to whoever serves the queue.
func (d *Device) QueueNotify(q int) {
	d.mu.Lock()
	a := d.act
	d.mu.Unlock()
	if a == nil || q < 0 || q >= len(a.kicks) {
		return
	}
	if !a.kernel {
		d.Device.QueueNotify(q)
		return
	}
	if err := a.kicks[q].Signal(); err != nil {
		d.log.Warn("vhost-net: kick", "queue", q, "err", err)
	}
}

// Reset implements virtio.DeviceModel.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.resetLocked()
}

func (d *Device) resetLocked() {
	a := d.act
	d.act = nil
	if a == nil {
		return
	}
	if a.kernel {
		d.takeBack(a)
		d.state = StateReady
		return
	}
	d.stopUser(a)
}

// SetLinkUp sets the link status the guest reads (STATUS) and tells a
// running driver, whoever serves the queues.
func (d *Device) SetLinkUp(up bool) {
	d.Device.SetLinkUp(up) // tells the driver while the userspace device is active
	d.mu.Lock()
	a := d.act
	d.mu.Unlock()
	if a != nil && a.kernel && a.features&vnet.FeatureStatus != 0 {
		_ = a.irq.ConfigChanged() // nothing better to do when delivery fails
	}
}

// Quiesce stops the device touching guest memory and interrupts: Reset.
func (d *Device) Quiesce() { d.Reset() }

// Close stops the device, closes the vhost-net descriptor and the
// userspace device (and with it the TAP).
func (d *Device) Close() error {
	d.mu.Lock()
	d.resetLocked()
	k := d.kernel
	d.kernel, d.state = nil, StateOff
	d.mu.Unlock()
	var err error
	if k != nil {
		err = k.Close()
	}
	return errors.Join(d.Device.Close(), err)
}
