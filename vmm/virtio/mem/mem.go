// Package mem is the virtio-mem device model (virtio device type 24,
// virtio 1.2 section 5.15): a region of guest physical memory, cut into
// blocks, that the driver plugs and unplugs one request at a time on the
// device's single queue, growing or shrinking the guest's memory toward
// the size the host requests (SetRequested).
//
// The model knows neither KVM nor how memory is backed: it keeps the
// plugged blocks in a bitmap and asks a Backing to make a range usable
// (Plug) or to give its pages back to the host (Unplug). The device
// offers VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE and refuses to start
// without it (Activate fails, the device needs a reset): unplugged memory
// may be made inaccessible by the Backing, and a driver that would read
// it must not use the device. ACPI_PXM and PERSISTENT_SUSPEND are not
// offered.
//
// Everything the driver sends is untrusted: a request outside the usable
// region, unaligned, for no blocks, or for blocks in the wrong state gets
// VIRTIO_MEM_RESP_ERROR; a plug beyond the requested size gets NACK. A
// request touches at most 65535 blocks (its count is 16 bits) and
// UNPLUG_ALL at most the region's blocks (MaxBlocks).
package mem

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"sync"

	"rainforest/vmm/virtio"
)

// Feature bits of virtio-mem (UNPLUGGED_INACCESSIBLE is offered and
// required).
const (
	FeatureACPIPXM               uint64 = 1 << 0
	FeatureUnpluggedInaccessible uint64 = 1 << 1
	FeaturePersistentSuspend     uint64 = 1 << 2
)

// Request types.
const (
	ReqPlug      = 0
	ReqUnplug    = 1
	ReqUnplugAll = 2
	ReqState     = 3
)

// Response types.
const (
	RespACK   = 0
	RespNACK  = 1
	RespBusy  = 2
	RespError = 3
)

// Block states in a STATE response.
const (
	StatePlugged   = 0
	StateUnplugged = 1
	StateMixed     = 2
)

// Wire sizes and limits.
const (
	// RequestLen is sizeof(struct virtio_mem_req).
	RequestLen = 24
	// ResponseLen is sizeof(struct virtio_mem_resp).
	ResponseLen = 10
	// ConfigLen is sizeof(struct virtio_mem_config).
	ConfigLen = 56
	// QueueSize is the request queue's size.
	QueueSize = 128
	// MinBlockSize is the smallest block size (a 4 KiB page).
	MinBlockSize = 4 << 10
	// MaxBlocks bounds the region's blocks (a 1 MiB bitmap at most).
	MaxBlocks = 1 << 23
)

// Config space offsets.
const (
	cfgBlockSize        = 0
	cfgNodeID           = 8
	cfgAddr             = 16
	cfgRegionSize       = 24
	cfgUsableRegionSize = 32
	cfgPluggedSize      = 40
	cfgRequestedSize    = 48
)

// ErrOptions wraps every reason New refuses its options; ErrRequested is
// returned by SetRequested for a size that is not a multiple of the block
// size or exceeds the region.
var (
	ErrOptions   = errors.New("virtio-mem: bad options")
	ErrRequested = errors.New("virtio-mem: bad requested size")
)

// Backing makes ranges of the region usable and gives them back. offset
// and size are bytes from the region's start, multiples of the block size.
type Backing interface {
	// Plug makes [offset, offset+size) usable by the guest. Memory
	// plugged after an Unplug reads as zeros.
	Plug(offset, size uint64) error
	// Unplug gives the range's pages back to the host.
	Unplug(offset, size uint64) error
}

// Options configure a device.
type Options struct {
	// Addr is the region's guest physical address, a multiple of
	// BlockSize.
	Addr uint64
	// RegionSize is the region's size, a positive multiple of BlockSize
	// of at most MaxBlocks blocks.
	RegionSize uint64
	// BlockSize is a power of two, at least MinBlockSize.
	BlockSize uint64
	// NodeID is the guest NUMA node reported in the config space.
	NodeID uint16
	// Backing backs the region.
	Backing Backing
}

// State is the device's memory as the host sees it.
type State struct {
	Addr       uint64 `json:"addr"`
	RegionSize uint64 `json:"region_size"`
	BlockSize  uint64 `json:"block_size"`
	Requested  uint64 `json:"requested"`
	Plugged    uint64 `json:"plugged"`
}

// Device is a virtio-mem device model.
type Device struct {
	opts   Options
	blocks uint64

	mu        sync.Mutex
	bitmap    []uint64 // bit i: block i is plugged
	plugged   uint64   // blocks plugged
	requested uint64   // bytes
	q         *virtio.Queue
	irq       virtio.Interrupts
	changed   chan struct{} // closed and replaced at every change
}

var _ virtio.DeviceModel = (*Device)(nil)

// New checks opts and returns a device with nothing plugged and nothing
// requested.
func New(opts Options) (*Device, error) {
	bs := opts.BlockSize
	switch {
	case opts.Backing == nil:
		return nil, fmt.Errorf("%w: no backing", ErrOptions)
	case bs < MinBlockSize || bs&(bs-1) != 0:
		return nil, fmt.Errorf("%w: block size %d is not a power of two of at least %d", ErrOptions, bs, MinBlockSize)
	case opts.Addr%bs != 0:
		return nil, fmt.Errorf("%w: address %#x not aligned to the block size %#x", ErrOptions, opts.Addr, bs)
	case opts.RegionSize == 0 || opts.RegionSize%bs != 0:
		return nil, fmt.Errorf("%w: region size %d is not a positive multiple of the block size %d", ErrOptions, opts.RegionSize, bs)
	case opts.RegionSize/bs > MaxBlocks:
		return nil, fmt.Errorf("%w: region of %d blocks, at most %d", ErrOptions, opts.RegionSize/bs, MaxBlocks)
	case opts.Addr+opts.RegionSize < opts.Addr:
		return nil, fmt.Errorf("%w: region at %#x+%#x overflows", ErrOptions, opts.Addr, opts.RegionSize)
	}
	n := opts.RegionSize / bs
	return &Device{opts: opts, blocks: n, bitmap: make([]uint64, (n+63)/64), changed: make(chan struct{})}, nil
}

// Type implements virtio.DeviceModel.
func (d *Device) Type() uint16 { return virtio.TypeMem }

// Accessible reports whether the n bytes at offset off of the region lie
// in plugged blocks (n 0: the block holding off): what guest memory accessors
// ask before touching the region, whose unplugged blocks are inaccessible.
func (d *Device) Accessible(off, n uint64) bool {
	bs := d.opts.BlockSize
	if off >= d.opts.RegionSize || n > d.opts.RegionSize-off {
		return false
	}
	first, last := off/bs, off/bs
	if n > 0 {
		last = (off + n - 1) / bs
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for b := first; b <= last; b++ {
		if d.bitmap[b/64]&(1<<(b%64)) == 0 {
			return false
		}
	}
	return true
}

// Features implements virtio.DeviceModel: UNPLUGGED_INACCESSIBLE.
func (d *Device) Features() uint64 { return FeatureUnpluggedInaccessible }

// ErrInaccessibleRequired means the driver did not accept
// VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE, which the device requires.
var ErrInaccessibleRequired = errors.New("virtio-mem: the driver must accept UNPLUGGED_INACCESSIBLE (unplugged memory is inaccessible)")

// NumQueues implements virtio.DeviceModel: the guest-request queue.
func (d *Device) NumQueues() int { return 1 }

// QueueMax implements virtio.DeviceModel.
func (d *Device) QueueMax(int) uint16 { return QueueSize }

// ReadConfig implements virtio.DeviceModel.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	d.mu.Lock()
	var c [ConfigLen]byte
	le := binary.LittleEndian
	le.PutUint64(c[cfgBlockSize:], d.opts.BlockSize)
	le.PutUint16(c[cfgNodeID:], d.opts.NodeID)
	le.PutUint64(c[cfgAddr:], d.opts.Addr)
	le.PutUint64(c[cfgRegionSize:], d.opts.RegionSize)
	le.PutUint64(c[cfgUsableRegionSize:], d.opts.RegionSize)
	le.PutUint64(c[cfgPluggedSize:], d.plugged*d.opts.BlockSize)
	le.PutUint64(c[cfgRequestedSize:], d.requested)
	d.mu.Unlock()
	clear(data)
	if offset < ConfigLen {
		copy(data, c[offset:])
	}
}

// WriteConfig implements virtio.DeviceModel: the config space is
// read-only.
func (d *Device) WriteConfig(uint64, []byte) {}

// Activate implements virtio.DeviceModel.
func (d *Device) Activate(a virtio.Activation) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.q = nil
	if a.Features&FeatureUnpluggedInaccessible == 0 {
		return ErrInaccessibleRequired
	}
	if len(a.Queues) > 0 {
		d.q = a.Queues[0]
	}
	d.irq = a.IRQ
	return nil
}

// Reset implements virtio.DeviceModel. Plugged blocks stay plugged (the
// spec forbids changing them on a device reset); a new driver unplugs
// them with UNPLUG_ALL.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.q, d.irq = nil, nil
}

// QueueNotify implements virtio.DeviceModel.
func (d *Device) QueueNotify(q int) {
	if q != 0 {
		return
	}
	d.mu.Lock()
	queue, irq := d.q, d.irq
	if queue == nil {
		d.mu.Unlock()
		return
	}
	pushed, broken := false, false
	before := d.plugged
	for {
		c, ok, err := queue.Pop()
		if err != nil {
			broken = true
			break
		}
		if !ok {
			break
		}
		n := d.serveLocked(&c)
		if err := queue.Push(c.Head, n); err != nil {
			broken = true
			break
		}
		pushed = true
	}
	if broken {
		d.q = nil
	}
	notify := pushed && !broken && queue.NeedsNotify()
	if d.plugged != before {
		d.signalLocked()
	}
	d.mu.Unlock()
	if broken {
		irq.NeedsReset()
		return
	}
	if notify {
		_ = irq.UsedBuffer(0) // nothing better to do when delivery fails
	}
}

// serveLocked answers one request chain and returns the bytes written.
func (d *Device) serveLocked(c *virtio.Chain) uint32 {
	if c.WritableLen() < ResponseLen {
		return 0 // nowhere to answer
	}
	var req [RequestLen]byte
	resp := make([]byte, ResponseLen)
	le := binary.LittleEndian
	if virtio.ReadBuffers(c.Readable, 0, req[:]) < RequestLen {
		le.PutUint16(resp, RespError)
	} else {
		typ, state := d.handleLocked(le.Uint16(req[0:]), le.Uint64(req[8:]), le.Uint16(req[16:]))
		le.PutUint16(resp, typ)
		le.PutUint16(resp[8:], state)
	}
	return uint32(virtio.WriteBuffers(c.Writable, 0, resp))
}

// handleLocked carries out one request; it returns the response type and,
// for STATE, the state.
func (d *Device) handleLocked(typ uint16, addr uint64, nb uint16) (resp, state uint16) {
	if typ == ReqUnplugAll {
		if err := d.unplugAllLocked(); err != nil {
			return RespBusy, 0
		}
		return RespACK, 0
	}
	first, n, ok := d.blockRange(addr, nb)
	switch typ {
	case ReqPlug:
		if !ok || !d.allLocked(first, n, false) {
			return RespError, 0
		}
		if (d.plugged+n)*d.opts.BlockSize > d.requested {
			return RespNACK, 0
		}
		if err := d.opts.Backing.Plug(first*d.opts.BlockSize, n*d.opts.BlockSize); err != nil {
			return RespNACK, 0
		}
		d.setLocked(first, n, true)
		return RespACK, 0
	case ReqUnplug:
		if !ok || !d.allLocked(first, n, true) {
			return RespError, 0
		}
		if err := d.opts.Backing.Unplug(first*d.opts.BlockSize, n*d.opts.BlockSize); err != nil {
			return RespBusy, 0
		}
		d.setLocked(first, n, false)
		return RespACK, 0
	case ReqState:
		if !ok {
			return RespError, 0
		}
		switch {
		case d.allLocked(first, n, true):
			return RespACK, StatePlugged
		case d.allLocked(first, n, false):
			return RespACK, StateUnplugged
		}
		return RespACK, StateMixed
	}
	return RespError, 0
}

// blockRange checks that nb blocks at addr lie in the usable region,
// aligned, and returns the first block's index and the count.
func (d *Device) blockRange(addr uint64, nb uint16) (first, n uint64, ok bool) {
	bs := d.opts.BlockSize
	if nb == 0 || addr < d.opts.Addr || (addr-d.opts.Addr)%bs != 0 {
		return 0, 0, false
	}
	first, n = (addr-d.opts.Addr)/bs, uint64(nb)
	if first >= d.blocks || n > d.blocks-first {
		return 0, 0, false
	}
	return first, n, true
}

// allLocked reports whether blocks [first, first+n) all are plugged (or
// all unplugged).
func (d *Device) allLocked(first, n uint64, plugged bool) bool {
	for i := first; i < first+n; {
		w := d.bitmap[i/64]
		if !plugged {
			w = ^w
		}
		lo := i % 64
		span := min(64-lo, first+n-i)
		mask := ^uint64(0) >> (64 - span) << lo
		if w&mask != mask {
			return false
		}
		i += span
	}
	return true
}

// setLocked marks blocks [first, first+n) plugged or unplugged (all were
// in the other state) and counts them.
func (d *Device) setLocked(first, n uint64, plugged bool) {
	for i := first; i < first+n; {
		lo := i % 64
		span := min(64-lo, first+n-i)
		mask := ^uint64(0) >> (64 - span) << lo
		if plugged {
			d.bitmap[i/64] |= mask
		} else {
			d.bitmap[i/64] &^= mask
		}
		i += span
	}
	if plugged {
		d.plugged += n
	} else {
		d.plugged -= n
	}
}

// unplugAllLocked unplugs every plugged run of blocks; on a backing error
// the runs unplugged so far stay unplugged.
func (d *Device) unplugAllLocked() error {
	for i := uint64(0); i < d.blocks; {
		start, ok := d.nextLocked(i, true)
		if !ok {
			return nil
		}
		end, ok := d.nextLocked(start, false)
		if !ok {
			end = d.blocks
		}
		bs := d.opts.BlockSize
		if err := d.opts.Backing.Unplug(start*bs, (end-start)*bs); err != nil {
			return err
		}
		d.setLocked(start, end-start, false)
		i = end
	}
	return nil
}

// nextLocked returns the first block from i on that is plugged (or
// unplugged).
func (d *Device) nextLocked(i uint64, plugged bool) (uint64, bool) {
	for i < d.blocks {
		w := d.bitmap[i/64]
		if !plugged {
			w = ^w
		}
		w >>= i % 64
		if w != 0 {
			j := i + uint64(bits.TrailingZeros64(w))
			return j, j < d.blocks
		}
		i = (i/64 + 1) * 64
	}
	return 0, false
}

// signalLocked wakes those waiting for a change.
func (d *Device) signalLocked() {
	close(d.changed)
	d.changed = make(chan struct{})
}

// SetRequested sets the size the host asks the guest to plug (a multiple
// of the block size, at most the region's size) and, while a driver
// runs, raises a configuration-change interrupt so that it plugs or
// unplugs toward it.
func (d *Device) SetRequested(size uint64) error {
	bs := d.opts.BlockSize
	if size%bs != 0 || size > d.opts.RegionSize {
		return fmt.Errorf("%w: %d bytes: a multiple of the %d-byte block size, at most the region's %d", ErrRequested, size, bs, d.opts.RegionSize)
	}
	d.mu.Lock()
	irq := d.irq
	changed := d.requested != size
	d.requested = size
	if changed {
		d.signalLocked()
	}
	d.mu.Unlock()
	if irq != nil && changed {
		if err := irq.ConfigChanged(); err != nil {
			return fmt.Errorf("virtio-mem: config change interrupt: %w", err)
		}
	}
	return nil
}

// Plugged returns the bytes plugged.
func (d *Device) Plugged() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.plugged * d.opts.BlockSize
}

// State returns the region, the requested size and the plugged size.
func (d *Device) State() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stateLocked()
}

func (d *Device) stateLocked() State {
	return State{Addr: d.opts.Addr, RegionSize: d.opts.RegionSize, BlockSize: d.opts.BlockSize,
		Requested: d.requested, Plugged: d.plugged * d.opts.BlockSize}
}

// Changed returns a channel closed at the next change of the plugged or
// requested size.
func (d *Device) Changed() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.changed
}

// Settle waits until the plugged size equals the requested size, or ctx
// ends; it returns the state then, with ctx's error when the guest had
// not got there (a partial result: State says how far it got).
func (d *Device) Settle(ctx context.Context) (State, error) {
	for {
		d.mu.Lock()
		s, ch := d.stateLocked(), d.changed
		d.mu.Unlock()
		if s.Plugged == s.Requested {
			return s, nil
		}
		select {
		case <-ctx.Done():
			if s := d.State(); s.Plugged != s.Requested {
				return s, ctx.Err()
			}
			continue
		case <-ch:
		}
	}
}
