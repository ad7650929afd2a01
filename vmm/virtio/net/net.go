// Package net is the virtio-net device model (virtio device type 1): an
// Ethernet interface whose frames go to and come from a Backend (a TAP
// interface, package tap; later an in-memory switch between VMMs).
//
// Features: VERSION_1, MAC (the supervisor's), STATUS (link up unless
// SetLinkUp says otherwise), MRG_RXBUF, and the offloads the backend
// carries: CSUM, GUEST_CSUM, HOST_TSO4/6, HOST_ECN, GUEST_TSO4/6,
// GUEST_ECN; the transport adds EVENT_IDX and INDIRECT_DESC. UFO is not
// offered (Linux no longer sends it, and a TAP's UFO offload is gone from
// recent kernels). Every frame carries its 12-byte virtio_net_hdr both
// ways and the device hands it on as it is, so a backend that
// understands the header (a TAP with IFF_VNET_HDR) gets checksum and
// segmentation offload end to end; the device only checks it (CheckTx,
// CheckRx) against what was negotiated, and fills in num_buffers.
//
// One queue pair (receiveq 0, transmitq 1), no control queue: a subOS
// has dedicated cores and one device thread per direction keeps up with
// the host's TAP; multiqueue would add a TAP queue, a goroutine pair and
// interrupt vectors per pair for throughput a subOS of a few cores does
// not need yet. MQ can be added without changing the Backend interface
// (a backend per pair).
//
// The guest is untrusted:
//   - a malformed ring or descriptor chain (virtio.ErrMalformed), a
//     device-writable buffer on transmitq or a device-readable one on
//     receiveq, or a receive buffer shorter than the header breaks the
//     queue: the device stops using it and sets DEVICE_NEEDS_RESET;
//   - a transmitted frame shorter than an Ethernet header or longer than
//     MaxFrame, with a header asking for what was not negotiated, or (with
//     Options.FilterSourceMAC) from an Ethernet source other than the
//     device's MAC is dropped and counted, and its chain completed;
//   - the source MAC is checked on a private copy of the headers, which is
//     what the backend sends: the guest cannot change it after the check;
//   - transmitq is served by the device's goroutine in batches of TxBatch
//     chains, so a flooding guest holds the queue (and a vCPU resetting
//     the device) for at most one batch at a time;
//   - a frame for the guest that its posted buffers cannot take is
//     dropped and counted (Receive never blocks); a backend that can wait
//     instead (a TAP: the host kernel bounds and counts its queue) waits
//     in WaitRx. The receive chains the device holds are bounded by the
//     queue size.
//
// Counters (Stats) count packets and bytes each way and drops by reason.
package net

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"rainforest/vmm/virtio"
)

// Queue indices and sizes.
const (
	RxQueue   = 0
	TxQueue   = 1
	QueueSize = 256
	// TxBatch bounds the transmit chains served before the device lets
	// go of transmitq (and yields) while the guest keeps it full.
	TxBatch = 64

	// configLen is struct virtio_net_config up to max_virtqueue_pairs.
	configLen = 10
)

// Feature bits of virtio-net.
const (
	FeatureCsum      uint64 = 1 << 0
	FeatureGuestCsum uint64 = 1 << 1
	FeatureMAC       uint64 = 1 << 5
	FeatureGuestTSO4 uint64 = 1 << 7
	FeatureGuestTSO6 uint64 = 1 << 8
	FeatureGuestECN  uint64 = 1 << 9
	FeatureHostTSO4  uint64 = 1 << 11
	FeatureHostTSO6  uint64 = 1 << 12
	FeatureHostECN   uint64 = 1 << 13
	FeatureMrgRxbuf  uint64 = 1 << 15
	FeatureStatus    uint64 = 1 << 16

	// OffloadFeatures are the features a backend must carry for the
	// device to offer them (Backend.Offloads).
	OffloadFeatures = FeatureCsum | FeatureGuestCsum | FeatureGuestTSO4 | FeatureGuestTSO6 | FeatureGuestECN |
		FeatureHostTSO4 | FeatureHostTSO6 | FeatureHostECN
)

// StatusLinkUp is VIRTIO_NET_S_LINK_UP in the config's status.
const StatusLinkUp = 1

// Errors.
var (
	// ErrBadMAC: Options.MAC is not a unicast address.
	ErrBadMAC = errors.New("virtio-net: MAC address is zero or multicast")
	// ErrFeatures: the driver accepted a feature without one it needs
	// (TSO without the checksum offload, for example).
	ErrFeatures = errors.New("virtio-net: inconsistent features")
	// ErrNotReady: the driver has not started the device (or reset it).
	ErrNotReady = errors.New("virtio-net: driver not ready")
	// ErrNoBuffers: the guest's posted receive buffers cannot take the
	// frame.
	ErrNoBuffers = errors.New("virtio-net: no receive buffers for the frame")
	// ErrBadFrame: a frame shorter than a header and an Ethernet header,
	// or longer than MaxPacket.
	ErrBadFrame = errors.New("virtio-net: frame size out of bounds")
)

// Port is the device as its backend sees it: where frames for the guest
// go.
type Port interface {
	// Receive hands the guest one frame: a header (HeaderLen bytes, its
	// num_buffers filled in by the device) then the Ethernet frame. It
	// copies frame and never blocks. A frame the driver is not ready for,
	// out of bounds, with a header asking for an offload the driver did
	// not accept, or that the guest's posted buffers cannot take, is
	// dropped, counted and refused (ErrNotReady, ErrBadFrame,
	// ErrBadHeader, ErrNoBuffers).
	Receive(frame []byte) error
	// WaitRx returns once the guest's posted receive buffers can take
	// any frame (MaxPacket bytes with MRG_RXBUF, one buffer without), or
	// with ctx's error when it ends first. A backend that can leave its
	// frames where they are (a TAP's queue in the host kernel, which
	// bounds and counts it) waits here before taking one, so that the
	// guest pushes back instead of the device dropping.
	WaitRx(ctx context.Context) error
}

// Backend carries frames between the device and what is outside: a TAP
// interface (package tap), an in-memory switch between VMMs. A frame is
// always its header then the Ethernet frame, so offloads pass through.
type Backend interface {
	// Offloads returns which of OffloadFeatures the backend carries:
	// frames with partial checksums or of a GSO type, both ways.
	Offloads() uint64
	// Configure is called when the driver starts the device, with the
	// negotiated features, before any Send: from then on the backend
	// gives the guest only frames whose headers it accepted (GUEST_CSUM,
	// GUEST_TSO4, ...).
	Configure(features uint64) error
	// Send transmits one frame from the guest, given as a scatter list:
	// the first slice is a copy of the header and the Ethernet header
	// (checked by the device), the rest alias guest memory. The backend
	// must not keep any of them after it returns, and must not block for
	// long: a frame it cannot take now it drops, returning an error (the
	// device counts it).
	Send(frame [][]byte) error
	// Run hands frames for the guest to port until ctx ends, and
	// returns. The device runs it on a goroutine of its own from New to
	// Close.
	Run(ctx context.Context, port Port) error
	// Close releases the backend, once Run has returned.
	Close() error
}

// MAC is an Ethernet address.
type MAC [6]byte

// String formats m as aa:bb:cc:dd:ee:ff.
func (m MAC) String() string {
	const hex = "0123456789abcdef"
	b := make([]byte, 0, 17)
	for i, v := range m {
		if i > 0 {
			b = append(b, ':')
		}
		b = append(b, hex[v>>4], hex[v&15])
	}
	return string(b)
}

// Options configure a device.
type Options struct {
	// MAC is the guest's address: unicast, not zero.
	MAC MAC
	// FilterSourceMAC drops (and counts) frames the guest sends from an
	// Ethernet source other than MAC.
	FilterSourceMAC bool
	// Logger, when set, hears of a backend that stopped.
	Logger *slog.Logger
}

// Stats are the device's counters since New.
type Stats struct {
	TxPackets, TxBytes uint64 // frames sent to the backend; their bytes after the header
	RxPackets, RxBytes uint64 // frames delivered to the guest; likewise

	TxShort      uint64 // shorter than a header and an Ethernet header
	TxOversize   uint64 // longer than MaxPacket
	TxBadHeader  uint64 // header not matching the negotiated features
	TxSpoofed    uint64 // Ethernet source other than the device's MAC
	TxBackendErr uint64 // the backend refused it

	RxNotReady  uint64 // the driver had not started the device
	RxBadFrame  uint64 // shorter than a header and an Ethernet header, or longer than MaxPacket
	RxBadHeader uint64 // header not matching what the driver accepted
	RxNoBuffers uint64 // the guest's buffers could not take it

	// Malformed counts queues broken by the driver (DEVICE_NEEDS_RESET).
	Malformed uint64
}

// TxDropped is the count of frames from the guest that were dropped.
func (s Stats) TxDropped() uint64 {
	return s.TxShort + s.TxOversize + s.TxBadHeader + s.TxSpoofed + s.TxBackendErr
}

// RxDropped is the count of frames for the guest that were dropped.
func (s Stats) RxDropped() uint64 {
	return s.RxNotReady + s.RxBadFrame + s.RxBadHeader + s.RxNoBuffers
}

type counters struct {
	txPackets, txBytes, rxPackets, rxBytes                   atomic.Uint64
	txShort, txOversize, txBadHeader, txSpoofed, txBackend   atomic.Uint64
	rxNotReady, rxBadFrame, rxBadHeader, rxNoBuffers, broken atomic.Uint64
}

// heldChain is a receive chain taken from the ring and not used yet.
type heldChain struct {
	head uint16
	bufs [][]byte
	room uint64 // writable bytes, at most MaxPacket
}

// Device is a virtio-net device model.
type Device struct {
	mac     MAC
	filter  bool
	backend Backend
	offered uint64
	log     *slog.Logger
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	txKick  chan struct{}
	txSync  chan chan struct{}
	closed  sync.Once
	closeE  error
	linkUp  atomic.Bool
	c       counters

	// mu guards the receive side and the activation.
	mu        sync.Mutex
	active    bool
	features  uint64
	irq       virtio.Interrupts
	rx        *virtio.Queue
	held      [virtio.MaxQueueSize]heldChain // a ring: heldN chains from heldAt
	heldAt    int
	heldN     int
	heldRoom  uint64
	rxChanged chan struct{} // closed (and replaced) when receiving may have become possible
	rxWaiters int           // backends in WaitRx (tests wait for one)
	rxUsed    []virtio.Used

	// txMu guards transmitq; the transmit goroutine holds it for one
	// batch at a time.
	txMu       sync.Mutex
	tx         *virtio.Queue
	txIRQ      virtio.Interrupts
	txFeatures uint64
	txPrefix   [HeaderLen + EthHeaderLen]byte
	txFrame    [][]byte
	txUsed     []virtio.Used
}

var _ virtio.DeviceModel = (*Device)(nil)
var _ Port = (*Device)(nil)

// New returns a device on backend and starts its goroutines (the
// transmit path, and the backend's Run); Close stops them and closes the
// backend. On error the backend is closed.
func New(backend Backend, opts Options) (*Device, error) {
	if opts.MAC == (MAC{}) || opts.MAC[0]&1 != 0 {
		backend.Close()
		return nil, fmt.Errorf("%w: %s", ErrBadMAC, opts.MAC)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &Device{
		mac: opts.MAC, filter: opts.FilterSourceMAC, backend: backend, log: log,
		offered: offeredFeatures(backend.Offloads()),
		ctx:     ctx, cancel: cancel,
		txKick: make(chan struct{}, 1), txSync: make(chan chan struct{}),
		rxChanged: make(chan struct{}),
	}
	d.linkUp.Store(true)
	d.wg.Add(2)
	go d.runTx()
	go d.runBackend()
	return d, nil
}

// Close stops the device's goroutines and closes the backend.
func (d *Device) Close() error {
	d.closed.Do(func() {
		d.cancel()
		d.wg.Wait()
		d.closeE = d.backend.Close()
	})
	return d.closeE
}

// Stats returns the counters.
func (d *Device) Stats() Stats {
	c := &d.c
	return Stats{
		TxPackets: c.txPackets.Load(), TxBytes: c.txBytes.Load(),
		RxPackets: c.rxPackets.Load(), RxBytes: c.rxBytes.Load(),
		TxShort: c.txShort.Load(), TxOversize: c.txOversize.Load(), TxBadHeader: c.txBadHeader.Load(),
		TxSpoofed: c.txSpoofed.Load(), TxBackendErr: c.txBackend.Load(),
		RxNotReady: c.rxNotReady.Load(), RxBadFrame: c.rxBadFrame.Load(), RxBadHeader: c.rxBadHeader.Load(),
		RxNoBuffers: c.rxNoBuffers.Load(), Malformed: c.broken.Load(),
	}
}

// MAC returns the device's address.
func (d *Device) MAC() MAC { return d.mac }

// SetLinkUp sets the link status the guest reads (STATUS), and tells a
// running driver that it changed.
func (d *Device) SetLinkUp(up bool) {
	if d.linkUp.Swap(up) == up {
		return
	}
	d.mu.Lock()
	irq, active := d.irq, d.active && d.features&FeatureStatus != 0
	d.mu.Unlock()
	if active {
		_ = irq.ConfigChanged() // nothing better to do when delivery fails
	}
}

// Sync waits until the transmit goroutine has served every notification
// made before the call (tests use it instead of waiting on a clock).
func (d *Device) Sync() {
	done := make(chan struct{})
	select {
	case d.txSync <- done:
		<-done
	case <-d.ctx.Done():
	}
}

// offeredFeatures are the device's features given the backend's
// offloads: those whose dependencies the backend carries too.
func offeredFeatures(offloads uint64) uint64 {
	f := FeatureMAC | FeatureMrgRxbuf | FeatureStatus | offloads&OffloadFeatures
	for _, dep := range featureDeps {
		if f&dep.feature != 0 && f&dep.anyOf == 0 {
			f &^= dep.feature
		}
	}
	return f
}

// featureDeps: a feature needs at least one of anyOf (in this order, so
// one pass settles chains such as ECN -> TSO -> checksum).
var featureDeps = []struct{ feature, anyOf uint64 }{
	{FeatureHostTSO4, FeatureCsum},
	{FeatureHostTSO6, FeatureCsum},
	{FeatureHostECN, FeatureHostTSO4 | FeatureHostTSO6},
	{FeatureGuestTSO4, FeatureGuestCsum},
	{FeatureGuestTSO6, FeatureGuestCsum},
	{FeatureGuestECN, FeatureGuestTSO4 | FeatureGuestTSO6},
}

// CheckFeatures reports whether a driver may accept features: no feature
// without one it depends on.
func CheckFeatures(features uint64) error {
	for _, dep := range featureDeps {
		if features&dep.feature != 0 && features&dep.anyOf == 0 {
			return fmt.Errorf("%w: %#x without any of %#x", ErrFeatures, dep.feature, dep.anyOf)
		}
	}
	return nil
}

// Type implements virtio.DeviceModel.
func (d *Device) Type() uint16 { return virtio.TypeNet }

// Features implements virtio.DeviceModel.
func (d *Device) Features() uint64 { return d.offered }

// NumQueues implements virtio.DeviceModel.
func (d *Device) NumQueues() int { return 2 }

// QueueMax implements virtio.DeviceModel.
func (d *Device) QueueMax(int) uint16 { return QueueSize }

// ReadConfig implements virtio.DeviceModel: mac, status and
// max_virtqueue_pairs (1), little endian.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	var cfg [configLen]byte
	copy(cfg[:], d.mac[:])
	if d.linkUp.Load() {
		binary.LittleEndian.PutUint16(cfg[6:], StatusLinkUp)
	}
	binary.LittleEndian.PutUint16(cfg[8:], 1)
	clear(data)
	if offset < configLen {
		copy(data, cfg[offset:])
	}
}

// WriteConfig implements virtio.DeviceModel: the config is read-only
// (VIRTIO_NET_F_CTRL_MAC_ADDR is not offered).
func (d *Device) WriteConfig(uint64, []byte) {}

// Activate implements virtio.DeviceModel.
func (d *Device) Activate(a virtio.Activation) error {
	if err := CheckFeatures(a.Features); err != nil {
		return err
	}
	if err := d.backend.Configure(a.Features); err != nil {
		return fmt.Errorf("virtio-net: backend: %w", err)
	}
	queue := func(i int) *virtio.Queue {
		if i < len(a.Queues) {
			return a.Queues[i]
		}
		return nil
	}
	d.txMu.Lock()
	d.tx, d.txIRQ, d.txFeatures = queue(TxQueue), a.IRQ, a.Features
	d.txMu.Unlock()
	d.mu.Lock()
	d.rx, d.irq, d.features, d.active = queue(RxQueue), a.IRQ, a.Features, true
	d.dropHeldLocked()
	d.rxChangedLocked()
	d.mu.Unlock()
	d.kickTx()
	return nil
}

// Reset implements virtio.DeviceModel: the device forgets the queues and
// the receive chains it held; frames for the guest are refused until
// the next activation.
func (d *Device) Reset() {
	d.txMu.Lock()
	d.tx, d.txIRQ = nil, nil
	d.txMu.Unlock()
	d.mu.Lock()
	d.rx, d.irq, d.active = nil, nil, false
	d.dropHeldLocked()
	d.rxChangedLocked()
	d.mu.Unlock()
}

// Quiesce stops the device touching guest memory and interrupts (the
// device adapter calls it when the device's notifications stop, before
// its vectors go): it is Reset.
func (d *Device) Quiesce() { d.Reset() }

// QueueNotify implements virtio.DeviceModel: a transmitq notification
// wakes the transmit goroutine, a receiveq one (new buffers) a backend
// waiting in WaitRx.
func (d *Device) QueueNotify(q int) {
	switch q {
	case TxQueue:
		d.kickTx()
	case RxQueue:
		d.mu.Lock()
		d.rxChangedLocked()
		d.mu.Unlock()
	}
}

func (d *Device) kickTx() {
	select {
	case d.txKick <- struct{}{}:
	default:
	}
}

// runBackend runs the backend's frame path until Close.
func (d *Device) runBackend() {
	defer d.wg.Done()
	if err := d.backend.Run(d.ctx, d); err != nil && d.ctx.Err() == nil {
		d.log.Warn("virtio-net: backend stopped; no more frames reach the guest", "err", err)
	}
}

// Counters are s as named counters (snake_case, for reports): only the
// ones that are not zero, and the totals tx_dropped and rx_dropped.
func (s Stats) Counters() map[string]uint64 {
	return nonZero(map[string]uint64{
		"tx_packets": s.TxPackets, "tx_bytes": s.TxBytes, "rx_packets": s.RxPackets, "rx_bytes": s.RxBytes,
		"tx_short": s.TxShort, "tx_oversize": s.TxOversize, "tx_bad_header": s.TxBadHeader,
		"tx_spoofed_mac": s.TxSpoofed, "tx_backend_refused": s.TxBackendErr,
		"rx_not_ready": s.RxNotReady, "rx_bad_frame": s.RxBadFrame, "rx_bad_header": s.RxBadHeader,
		"rx_no_buffers": s.RxNoBuffers, "malformed": s.Malformed,
		"tx_dropped": s.TxDropped(), "rx_dropped": s.RxDropped(),
	})
}

// nonZero drops m's zero counters.
func nonZero(m map[string]uint64) map[string]uint64 {
	for k, v := range m {
		if v == 0 {
			delete(m, k)
		}
	}
	return m
}
