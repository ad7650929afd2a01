package vhostuser

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"

	"rainforest/vmm/eventfd"
	"rainforest/vmm/guestmem"
	"rainforest/vmm/virtio"
)

// WantedProtocolFeatures are the protocol features a Device uses when the
// back end offers them: several queues, acknowledged requests, and a
// device reset.
const WantedProtocolFeatures = ProtocolMQ | ProtocolReplyAck | ProtocolResetDevice

// deviceFeatureMask are the device-type-specific feature bits (0-23 and
// 50-63); the others belong to the transport or to vhost-user.
const deviceFeatureMask uint64 = 1<<24 - 1 | ^uint64(1<<50-1)

// DeviceConfig is what a Device presents to the guest.
type DeviceConfig struct {
	// Type is the virtio device type (virtio.TypeFS, ...).
	Type uint16
	// Queues is the number of virtqueues (at most what the back end
	// supports, when it says: GET_QUEUE_NUM); QueueSize is each one's
	// maximum size (a power of two up to virtio.MaxQueueSize).
	Queues    int
	QueueSize uint16
	// Features are the device-type-specific feature bits the VMM lets
	// the guest negotiate; the back end's are masked with them.
	Features uint64
	Logger   *slog.Logger
}

// BackEnd is what the handshake learnt about the back end.
type BackEnd struct {
	// Features are its virtio feature bits (GET_FEATURES).
	Features uint64
	// Protocol are the protocol features in use (offered and wanted).
	Protocol uint64
	// Queues is how many queues it supports, 0 when it does not say.
	Queues uint64
}

// Handshake runs the connection's opening exchange: GET_FEATURES, and when
// the back end speaks protocol features GET_PROTOCOL_FEATURES and
// SET_PROTOCOL_FEATURES (those offered among want), GET_QUEUE_NUM with
// ProtocolMQ; then SET_OWNER.
func Handshake(ctx context.Context, cn *Conn, want uint64) (BackEnd, error) {
	var b BackEnd
	var err error
	if b.Features, err = cn.GetFeatures(ctx); err != nil {
		return BackEnd{}, err
	}
	if b.Features&FeatureProtocolFeatures != 0 {
		offered, err := cn.GetProtocolFeatures(ctx)
		if err != nil {
			return BackEnd{}, err
		}
		b.Protocol = offered & want
		if err := cn.SetProtocolFeatures(ctx, b.Protocol); err != nil {
			return BackEnd{}, err
		}
		if b.Protocol&ProtocolMQ != 0 {
			if b.Queues, err = cn.GetQueueNum(ctx); err != nil {
				return BackEnd{}, err
			}
		}
	}
	if err := cn.SetOwner(ctx); err != nil {
		return BackEnd{}, err
	}
	return b, nil
}

// Device is a virtio device model whose queues a vhost-user back end
// serves (virtio.ExternalQueues). It reads zeros from its configuration
// space; a device type embeds it and serves its own (vmm/virtio/fs).
//
// On DRIVER_OK (Activate) it sends the features the driver negotiated,
// the memory table and every enabled queue: size, base 0, ring addresses,
// call, error and kick eventfds, and enables it. The kick is the queue's
// ioeventfd, so the back end is woken by KVM; the call is the irqfd of the
// queue's MSI-X vector, so the back end interrupts the guest through KVM;
// while the guest takes the queue's interrupts another way (INTx, no
// vector) the call is an eventfd of the device's that a goroutine relays
// to virtio.Interrupts.UsedBuffer. On reset each queue is stopped
// (GET_VRING_BASE), then the back end reset (RESET_DEVICE) when it can.
//
// When the back end fails (gone, a protocol error, a request timing out),
// the device logs it, Err reports it, and an active device asks the
// driver for a reset (DEVICE_NEEDS_RESET); activations fail from then
// on.
type Device struct {
	cfg     DeviceConfig
	conn    *Conn
	backEnd BackEnd
	log     *slog.Logger
	ctx     context.Context // ended by Close
	cancel  context.CancelFunc

	mu  sync.Mutex
	act *activation // nil while inactive

	watcher   sync.WaitGroup
	closeOnce sync.Once
}

var _ virtio.ExternalQueues = (*Device)(nil)

// NewDevice runs the handshake on cn (Handshake with
// WantedProtocolFeatures) and returns the device; it takes charge of cn,
// which is closed on error.
func NewDevice(ctx context.Context, cn *Conn, cfg DeviceConfig) (*Device, error) {
	fail := func(err error) (*Device, error) {
		cn.Close()
		return nil, err
	}
	if cfg.Queues < 1 || cfg.Queues > min(virtio.MaxQueues, vringIndexMask+1) {
		return fail(fmt.Errorf("vhost-user: %d queues", cfg.Queues))
	}
	if s := cfg.QueueSize; s == 0 || s > virtio.MaxQueueSize || s&(s-1) != 0 {
		return fail(fmt.Errorf("vhost-user: queue size %d", s))
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	b, err := Handshake(ctx, cn, WantedProtocolFeatures)
	if err != nil {
		return fail(fmt.Errorf("vhost-user handshake: %w", err))
	}
	if b.Features&virtio.FeatureVersion1 == 0 {
		return fail(fmt.Errorf("vhost-user: the back end does not offer VIRTIO_F_VERSION_1 (features %#x)", b.Features))
	}
	if b.Queues != 0 && b.Queues < uint64(cfg.Queues) {
		return fail(fmt.Errorf("vhost-user: the back end supports %d queues, the device needs %d", b.Queues, cfg.Queues))
	}
	dctx, cancel := context.WithCancel(context.Background())
	d := &Device{cfg: cfg, conn: cn, backEnd: b, log: cfg.Logger, ctx: dctx, cancel: cancel}
	d.log.Debug("vhost-user back end", "features", fmt.Sprintf("%#x", b.Features),
		"protocol", fmt.Sprintf("%#x", b.Protocol), "queues", b.Queues)
	d.watcher.Add(1)
	go d.watch()
	return d, nil
}

// watch reports the back end's failure; it ends with the device.
func (d *Device) watch() {
	defer d.watcher.Done()
	select {
	case <-d.conn.Done():
	case <-d.ctx.Done():
		return
	}
	if d.ctx.Err() != nil {
		return // closed by Close
	}
	d.log.Error("vhost-user back end failed; the device needs a reset", "err", d.conn.Err())
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.act != nil {
		d.act.irq.NeedsReset()
	}
}

// BackEnd returns what the handshake learnt.
func (d *Device) BackEnd() BackEnd { return d.backEnd }

// Done is closed once the back end has failed or the device is closed.
func (d *Device) Done() <-chan struct{} { return d.conn.Done() }

// Err returns why the back end failed, nil while it is up.
func (d *Device) Err() error { return d.conn.Err() }

// Close stops the device's goroutines and closes the connection.
func (d *Device) Close() error {
	d.closeOnce.Do(func() {
		d.cancel()
		d.conn.Close()
		d.watcher.Wait()
		d.mu.Lock()
		act := d.act
		d.act = nil
		d.mu.Unlock()
		if act != nil {
			act.close()
		}
	})
	return nil
}

// Type implements virtio.DeviceModel.
func (d *Device) Type() uint16 { return d.cfg.Type }

// Features implements virtio.DeviceModel: the back end's device-specific
// features that the configuration lets through.
func (d *Device) Features() uint64 { return d.backEnd.Features & d.cfg.Features & deviceFeatureMask }

// ServedTransportFeatures implements virtio.ExternalQueues.
func (d *Device) ServedTransportFeatures() uint64 {
	return d.backEnd.Features & virtio.TransportFeatures
}

// NumQueues implements virtio.DeviceModel.
func (d *Device) NumQueues() int { return d.cfg.Queues }

// QueueMax implements virtio.DeviceModel.
func (d *Device) QueueMax(int) uint16 { return d.cfg.QueueSize }

// ReadConfig implements virtio.DeviceModel: zeros.
func (d *Device) ReadConfig(_ uint64, data []byte) { clear(data) }

// WriteConfig implements virtio.DeviceModel: ignored.
func (d *Device) WriteConfig(uint64, []byte) {}

// activation is one DRIVER_OK's state.
type activation struct {
	irq     virtio.Interrupts
	kicks   []*eventfd.EventFD // by queue; nil where not started
	started []uint32           // queues handed to the back end
	owned   []*eventfd.EventFD // eventfds the device made, closed at the end
	// watched are the relayed calls and the error eventfds the
	// goroutine waits on; what says for each which queue and what.
	watched []*eventfd.EventFD
	what    []watchedFD
	stop    *eventfd.EventFD
	wg      sync.WaitGroup
}

type watchedFD struct {
	queue int
	err   bool // the queue's error eventfd, else its relayed call
}

// newEventFD makes an eventfd the activation owns.
func (a *activation) newEventFD() (*eventfd.EventFD, error) {
	ev, err := eventfd.New()
	if err != nil {
		return nil, err
	}
	a.owned = append(a.owned, ev)
	return ev, nil
}

// close stops the relay goroutine and closes the device's eventfds.
func (a *activation) close() {
	if a.stop != nil {
		_ = a.stop.Signal()
		a.wg.Wait()
	}
	for _, ev := range a.owned {
		ev.Close()
	}
}

// run relays calls to the driver and reports ring errors until stopped.
func (a *activation) run(log *slog.Logger) {
	defer a.wg.Done()
	for {
		ready, err := eventfd.Wait(a.stop, a.watched)
		if err != nil {
			if !errors.Is(err, eventfd.ErrStopped) {
				log.Error("vhost-user: waiting on queue eventfds", "err", err)
			}
			return
		}
		for _, i := range ready {
			w := a.what[i]
			if w.err {
				log.Error("vhost-user back end reports an error on a queue; the device needs a reset", "queue", w.queue)
				a.irq.NeedsReset()
				continue
			}
			if err := a.irq.UsedBuffer(w.queue); err != nil {
				log.Warn("vhost-user: relay interrupt", "queue", w.queue, "err", err)
			}
		}
	}
}

// Activate implements virtio.DeviceModel.
func (d *Device) Activate(va virtio.Activation) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.act != nil {
		return errors.New("vhost-user: already active")
	}
	if err := d.conn.Err(); err != nil {
		return fmt.Errorf("vhost-user: back end: %w", err)
	}
	a := &activation{irq: va.IRQ, kicks: make([]*eventfd.EventFD, d.cfg.Queues)}
	if err := d.start(a, va); err != nil {
		d.stop(a)
		a.close()
		return err
	}
	if len(a.watched) > 0 {
		stop, err := eventfd.New()
		if err != nil {
			d.stop(a)
			a.close()
			return err
		}
		a.owned = append(a.owned, stop)
		a.stop = stop
		a.wg.Add(1)
		go a.run(d.log)
	}
	d.act = a
	return nil
}

// start hands the memory and the driver's queues to the back end.
func (d *Device) start(a *activation, va virtio.Activation) error {
	ctx := d.ctx
	features := va.Features
	if d.backEnd.Features&FeatureProtocolFeatures != 0 {
		features |= FeatureProtocolFeatures
	}
	if err := d.conn.SetFeatures(ctx, features); err != nil {
		return err
	}
	regions, files, err := MemoryTable(va.Mem)
	if err != nil {
		return err
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	err = d.conn.SetMemTable(ctx, regions, fds)
	runtime.KeepAlive(files)
	if err != nil {
		return err
	}
	for q, queue := range va.Queues {
		if queue == nil || q >= d.cfg.Queues {
			continue
		}
		if err := d.startQueue(ctx, a, va, q, queue); err != nil {
			return fmt.Errorf("vhost-user: queue %d: %w", q, err)
		}
	}
	return nil
}

func (d *Device) startQueue(ctx context.Context, a *activation, va virtio.Activation, q int, queue *virtio.Queue) error {
	qc := queue.Config()
	idx := uint32(q)
	addr, err := RingAddr(va.Mem, idx, qc)
	if err != nil {
		return err // NewQueue checked them
	}
	if err := d.conn.SetVringNum(ctx, idx, uint32(qc.Size)); err != nil {
		return err
	}
	if err := d.conn.SetVringBase(ctx, idx, 0); err != nil {
		return err
	}
	if err := d.conn.SetVringAddr(ctx, addr); err != nil {
		return err
	}
	var call, kick *eventfd.EventFD
	if va.Doorbells != nil {
		call, kick = va.Doorbells.Call(q), va.Doorbells.Kick(q)
	}
	if call == nil {
		if call, err = a.newEventFD(); err != nil {
			return err
		}
		a.watched = append(a.watched, call)
		a.what = append(a.what, watchedFD{queue: q})
	}
	if kick == nil {
		if kick, err = a.newEventFD(); err != nil {
			return err
		}
	}
	errEv, err := a.newEventFD()
	if err != nil {
		return err
	}
	a.watched = append(a.watched, errEv)
	a.what = append(a.what, watchedFD{queue: q, err: true})
	if err := d.conn.SetVringCall(ctx, idx, call.Fd()); err != nil {
		return err
	}
	if err := d.conn.SetVringErr(ctx, idx, errEv.Fd()); err != nil {
		return err
	}
	// The kick starts the ring.
	a.started = append(a.started, idx)
	if err := d.conn.SetVringKick(ctx, idx, kick.Fd()); err != nil {
		return err
	}
	a.kicks[q] = kick
	if d.backEnd.Features&FeatureProtocolFeatures != 0 {
		if err := d.conn.SetVringEnable(ctx, idx, true); err != nil {
			return err
		}
	}
	return nil
}

// stop takes the started queues back from the back end (best effort: a
// failed back end has nothing to give back).
func (d *Device) stop(a *activation) {
	if d.conn.Err() != nil {
		return
	}
	ctx := d.ctx
	for _, idx := range a.started {
		if d.backEnd.Features&FeatureProtocolFeatures != 0 {
			if err := d.conn.SetVringEnable(ctx, idx, false); err != nil {
				d.log.Warn("vhost-user: disable queue", "queue", idx, "err", err)
				return
			}
		}
		base, err := d.conn.GetVringBase(ctx, idx)
		if err != nil {
			d.log.Warn("vhost-user: stop queue", "queue", idx, "err", err)
			return
		}
		d.log.Debug("vhost-user: queue stopped", "queue", idx, "base", base)
	}
	if d.backEnd.Protocol&ProtocolResetDevice != 0 {
		if err := d.conn.ResetDevice(ctx); err != nil {
			d.log.Warn("vhost-user: reset back end", "err", err)
		}
	}
}

// QueueNotify implements virtio.DeviceModel: a notification that reached
// the VMM (not the ioeventfd) is passed to the back end's kick.
func (d *Device) QueueNotify(q int) {
	d.mu.Lock()
	a := d.act
	d.mu.Unlock()
	if a == nil || q < 0 || q >= len(a.kicks) || a.kicks[q] == nil {
		return
	}
	if err := a.kicks[q].Signal(); err != nil {
		d.log.Warn("vhost-user: kick", "queue", q, "err", err)
	}
}

// Reset implements virtio.DeviceModel.
func (d *Device) Reset() {
	d.mu.Lock()
	a := d.act
	d.act = nil
	d.mu.Unlock()
	if a == nil {
		return
	}
	if a.stop != nil {
		_ = a.stop.Signal()
		a.wg.Wait()
	}
	d.stop(a)
	a.close()
}

// MemoryTable returns the memory table of mem: a region per guest memory
// region, at its host address, with the file it maps (the caller keeps
// the files open while it uses them). Every region must have a file.
func MemoryTable(mem *guestmem.Memory) ([]MemoryRegion, []*os.File, error) {
	regions, err := HostMemoryTable(mem)
	if err != nil {
		return nil, nil, err
	}
	var files []*os.File
	for i, r := range mem.Regions() {
		if r.File == nil {
			return nil, nil, fmt.Errorf("vhost-user: guest memory at %#x has no file to share", r.GPA)
		}
		regions[i].MmapOffset = r.Offset
		files = append(files, r.File)
	}
	return regions, files, nil
}

// HostMemoryTable returns the memory table of mem for a back end in this
// process's address space (the kernel's vhost): a region per guest memory
// region, at its host address, MmapOffset 0. Hotplug memory is in it
// whole; its unplugged blocks are inaccessible to the back end as to the
// VMM.
func HostMemoryTable(mem *guestmem.Memory) ([]MemoryRegion, error) {
	var regions []MemoryRegion
	for _, r := range mem.Regions() {
		regions = append(regions, MemoryRegion{GPA: r.GPA, Size: uint64(len(r.Data)), UserAddr: hostAddr(r.Data)})
	}
	if len(regions) == 0 || len(regions) > MaxMemoryRegions {
		return nil, fmt.Errorf("vhost: %d guest memory regions, at most %d", len(regions), MaxMemoryRegions)
	}
	return regions, nil
}

// RingAddr returns the addresses of virtqueue qc's rings in this process
// as ring index's SET_VRING_ADDR (vhost-user) or VHOST_SET_VRING_ADDR
// (the kernel's vhost) payload; the rings must lie in mem.
func RingAddr(mem *guestmem.Memory, index uint32, qc virtio.QueueConfig) (VringAddr, error) {
	n := uint64(qc.Size)
	desc, err1 := mem.Slice(qc.Desc, 16*n)
	avail, err2 := mem.Slice(qc.Driver, 6+2*n)
	used, err3 := mem.Slice(qc.Device, 6+8*n)
	if err := errors.Join(err1, err2, err3); err != nil {
		return VringAddr{}, err
	}
	return VringAddr{Index: index, Desc: hostAddr(desc), Used: hostAddr(used), Avail: hostAddr(avail)}, nil
}
