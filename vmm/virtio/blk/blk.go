// Package blk is the virtio block device model (virtio device type 2),
// backed by a raw image file or a host block device (see Open, New and
// CheckPath). Requests are served synchronously in QueueNotify under the
// device's mutex.
//
// Everything the guest puts in a request is untrusted: sector ranges,
// lengths, segment counts and flags are checked against the disk and the
// limits in the config space before any I/O, and a bad request gets an
// error status, never a panic or unbounded work.
//
// Write cache: the device offers VIRTIO_BLK_F_FLUSH. A driver that
// negotiates it sees a writeback cache (completed writes may sit in the
// host page cache or the disk's volatile cache) and makes them stable
// with VIRTIO_BLK_T_FLUSH, which is fdatasync. A driver that does not
// negotiate it must see every completed write stable (virtio 1.2,
// 5.2.6.2), so then every write, discard and write-zeroes is followed by
// fdatasync before it completes.
//
// Rate limits: Options.IOPS and Options.Bandwidth are token buckets
// (requests/s and bytes/s, each with a burst). A request over the limit
// is held, popped but not served, until the buckets refill; QueueNotify
// never sleeps, and a timer of Options.Clock serves the held request and
// the rest of the queue when tokens return. Reset and Close drop the
// timer, so teardown never waits on a throttled queue.
package blk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"rainforest/internal/tokenbucket"
	"rainforest/vmm/virtio"
)

// Feature bits, request types and status values (virtio 1.2, 5.2).
const (
	FeatureSegMax      uint64 = 1 << 2
	FeatureRO          uint64 = 1 << 5
	FeatureBlkSize     uint64 = 1 << 6
	FeatureFlush       uint64 = 1 << 9
	FeatureDiscard     uint64 = 1 << 13
	FeatureWriteZeroes uint64 = 1 << 14

	TypeIn          = 0
	TypeOut         = 1
	TypeFlush       = 4
	TypeGetID       = 8
	TypeDiscard     = 11
	TypeWriteZeroes = 13

	StatusOK     = 0
	StatusIOErr  = 1
	StatusUnsupp = 2

	SectorSize = 512
	// IDLen is the length of the GET_ID serial string.
	IDLen = 20
	// QueueSize is the size of the single request queue.
	QueueSize = 256
	// SegMax is the most data segments per request offered to the driver.
	SegMax = QueueSize - 2
	// DiscardSegMax and WriteZeroesSegMax are the most segments in one
	// discard or write-zeroes request (max_discard_seg,
	// max_write_zeroes_seg).
	DiscardSegMax     = 16
	WriteZeroesSegMax = 16
	// SegmentLen is the size of one discard or write-zeroes segment
	// (struct virtio_blk_discard_write_zeroes).
	SegmentLen = 16
	// FlagUnmap is the only segment flag: a write-zeroes request may
	// deallocate the range. Any other bit is reserved.
	FlagUnmap = 1

	headerLen = 16
	configLen = 0x3C

	// maxSegmentBytes bounds one discard or write-zeroes segment
	// (max_discard_sectors, max_write_zeroes_sectors), and
	// maxZeroWriteBytes one write-zeroes segment carried out by writing
	// zeroes, to bound the work of a request served under the mutex.
	maxSegmentBytes   = 1 << 30
	maxZeroWriteBytes = 8 << 20
)

// Offsets in the config space (struct virtio_blk_config).
const (
	cfgCapacity          = 0
	cfgSegMax            = 12
	cfgBlkSize           = 20
	cfgMaxDiscardSectors = 36
	cfgMaxDiscardSeg     = 40
	cfgDiscardAlign      = 44
	cfgMaxZeroesSectors  = 48
	cfgMaxZeroesSeg      = 52
	cfgZeroesMayUnmap    = 56
)

// ErrNoQueue is returned by Activate when the driver did not enable the
// request queue.
var ErrNoQueue = errors.New("blk: request queue not enabled")

// Options configure a device.
type Options struct {
	// ReadOnly serves the disk read-only (VIRTIO_BLK_F_RO); Open then
	// opens it read-only. A read-only block device is always served
	// read-only.
	ReadOnly bool
	// Direct makes Open use O_DIRECT, bypassing the host page cache; it
	// fails with ErrDirectUnsupported where the file system refuses.
	Direct bool
	// ID is the serial returned by GET_ID (at most IDLen bytes used).
	ID string
	// IOPS limits requests per second (every request counts one) and
	// Bandwidth the data bytes per second of reads and writes; the zero
	// Limit is unlimited.
	IOPS      tokenbucket.Limit
	Bandwidth tokenbucket.Limit
	// Clock times the limits (the system clock when nil).
	Clock tokenbucket.Clock
	// probeByFD finds a regular file's fallocate modes on the file itself
	// (Adopt: its name is no path to probe beside).
	probeByFD bool
}

// Stats are a device's counters.
type Stats struct {
	// Throttled counts requests held back by a rate limit (each once).
	Throttled uint64
}

// Device is a virtio-blk device model.
type Device struct {
	b        *backing
	opts     Options
	owned    bool   // Close closes the file (made by Open)
	capacity uint64 // in sectors
	features uint64
	lbs      uint64 // logical block size in sectors
	config   [configLen]byte

	clock tokenbucket.Clock
	ops   *tokenbucket.Bucket // nil: unlimited
	bytes *tokenbucket.Bucket // nil: unlimited

	mu           sync.Mutex
	q            *virtio.Queue
	irq          virtio.Interrupts
	writeThrough bool          // VIRTIO_BLK_F_FLUSH not negotiated
	held         *virtio.Chain // popped, waiting for tokens
	stopTimer    func() bool   // the armed wake-up of a throttled queue
	timerGen     uint64        // bumped per timer: a stale wake-up does nothing
	closed       bool
	stats        Stats
}

var _ virtio.DeviceModel = (*Device)(nil)

// New returns a device serving the open file f, a regular file or a
// block device. Its capacity is the size rounded down to whole sectors;
// it is read-only when opts.ReadOnly, when f was opened read-only or when
// the block device is read-only; it does direct I/O when f was opened with
// O_DIRECT (opts.Direct without O_DIRECT is an error). The caller keeps
// ownership of f.
func New(f *os.File, opts Options) (*Device, error) {
	b, err := newBacking(f, opts)
	if err != nil {
		return nil, fmt.Errorf("blk: %w", err)
	}
	clock := opts.Clock
	if clock == nil {
		clock = tokenbucket.SystemClock{}
	}
	d := &Device{
		b:        b,
		opts:     opts,
		clock:    clock,
		ops:      tokenbucket.New(opts.IOPS, clock.Now()),
		bytes:    tokenbucket.New(opts.Bandwidth, clock.Now()),
		capacity: uint64(b.info.Size) / SectorSize,
		lbs:      uint64(b.info.LogicalBlockSize) / SectorSize,
		features: FeatureSegMax | FeatureBlkSize | FeatureFlush,
	}
	le := binary.LittleEndian
	le.PutUint64(d.config[cfgCapacity:], d.capacity)
	le.PutUint32(d.config[cfgSegMax:], SegMax)
	le.PutUint32(d.config[cfgBlkSize:], b.info.LogicalBlockSize)
	if b.info.ReadOnly {
		d.features |= FeatureRO
	} else {
		if b.info.Discard {
			d.features |= FeatureDiscard
			le.PutUint32(d.config[cfgMaxDiscardSectors:], b.maxDiscard)
			le.PutUint32(d.config[cfgMaxDiscardSeg:], DiscardSegMax)
			le.PutUint32(d.config[cfgDiscardAlign:], b.discardAlign)
		}
		if b.info.WriteZeroes != ZeroNone {
			d.features |= FeatureWriteZeroes
			le.PutUint32(d.config[cfgMaxZeroesSectors:], b.maxZeroes)
			le.PutUint32(d.config[cfgMaxZeroesSeg:], WriteZeroesSegMax)
			if b.info.WriteZeroesMayUnmap {
				d.config[cfgZeroesMayUnmap] = 1
			}
		}
	}
	return d, nil
}

// Close closes the file when the device was made by Open; a device made
// by New leaves it to the caller.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	d.dropHeld()
	d.q, d.irq = nil, nil
	if !d.owned {
		return nil
	}
	d.owned = false
	return d.b.f.Close()
}

// Stats returns the device's counters.
func (d *Device) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats
}

// Limits returns the device's rate limits: requests and bytes per second
// (the zero Limit where unlimited).
func (d *Device) Limits() (iops, bandwidth tokenbucket.Limit) {
	return d.ops.Limit(), d.bytes.Limit()
}

// Throttled reports whether a request is held for tokens.
func (d *Device) Throttled() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.held != nil
}

// dropHeld forgets the held request and stops the wake-up; d.mu is held.
func (d *Device) dropHeld() {
	d.held = nil
	d.timerGen++
	if d.stopTimer != nil {
		d.stopTimer()
		d.stopTimer = nil
	}
}

// Info describes the device's backing and what it offers.
func (d *Device) Info() Info { return d.b.info }

// Capacity returns the capacity in 512-byte sectors.
func (d *Device) Capacity() uint64 { return d.capacity }

// Type implements virtio.DeviceModel.
func (d *Device) Type() uint16 { return virtio.TypeBlock }

// Features implements virtio.DeviceModel.
func (d *Device) Features() uint64 { return d.features }

// NumQueues implements virtio.DeviceModel.
func (d *Device) NumQueues() int { return 1 }

// QueueMax implements virtio.DeviceModel.
func (d *Device) QueueMax(int) uint16 { return QueueSize }

// ReadConfig implements virtio.DeviceModel.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	for i := range data {
		data[i] = 0
		if o := offset + uint64(i); o < configLen {
			data[i] = d.config[o]
		}
	}
}

// WriteConfig implements virtio.DeviceModel: the config is read-only.
func (d *Device) WriteConfig(offset uint64, data []byte) {}

// Activate implements virtio.DeviceModel.
func (d *Device) Activate(a virtio.Activation) error {
	if len(a.Queues) < 1 || a.Queues[0] == nil {
		return ErrNoQueue
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dropHeld()
	d.q, d.irq = a.Queues[0], a.IRQ
	d.writeThrough = a.Features&FeatureFlush == 0
	return nil
}

// Quiesce stops serving until the next Activate: a held request and its
// timer are dropped, so nothing touches guest memory or interrupts once
// it returns. The device adapter calls it when the device's goroutine
// stops (removal, machine teardown), before its vectors go.
func (d *Device) Quiesce() { d.Reset() }

// Reset implements virtio.DeviceModel.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dropHeld()
	d.q, d.irq = nil, nil
}

// QueueNotify implements virtio.DeviceModel: it serves every available
// request, or, under a rate limit, those the buckets allow (the rest are
// served by a timer when tokens return).
func (d *Device) QueueNotify(q int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if q != 0 || d.q == nil || d.stopTimer != nil {
		return // a throttled queue waits for its timer
	}
	d.serveQueue()
}

// wake serves a throttled queue once its wait is over; gen is the
// timer's (one dropped since does nothing).
func (d *Device) wake(gen uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if gen != d.timerGen {
		return
	}
	d.stopTimer = nil
	if d.closed || d.q == nil {
		return
	}
	d.serveQueue()
}

// serveQueue serves the held request and then the queue until it is
// empty or a limit holds a request back; d.mu is held.
func (d *Device) serveQueue() {
	for {
		var c virtio.Chain
		wasHeld := d.held != nil
		if wasHeld {
			c, d.held = *d.held, nil
		} else {
			var ok bool
			var err error
			c, ok, err = d.q.Pop()
			if err != nil {
				d.irq.NeedsReset()
				return
			}
			if !ok {
				break
			}
		}
		if wait := d.admit(&c); wait > 0 {
			if !wasHeld {
				d.stats.Throttled++
			}
			d.held = &c
			d.timerGen++
			gen := d.timerGen
			d.stopTimer = d.clock.AfterFunc(wait, func() { d.wake(gen) })
			break
		}
		written := d.handle(&c)
		if err := d.q.Push(c.Head, written); err != nil {
			d.irq.NeedsReset()
			return
		}
	}
	if d.q.NeedsNotify() {
		_ = d.irq.UsedBuffer(0) // nothing better to do when delivery fails
	}
}

// admit takes the tokens of request c and returns 0, or takes none and
// returns how long until it can; d.mu is held.
func (d *Device) admit(c *virtio.Chain) time.Duration {
	if d.ops == nil && d.bytes == nil {
		return 0
	}
	now := d.clock.Now()
	n := dataLen(c)
	if wait := max(d.ops.Delay(now, 1), d.bytes.Delay(now, n)); wait > 0 {
		return wait
	}
	d.ops.Take(now, 1)
	d.bytes.Take(now, n)
	return 0
}

// dataLen is the data a request moves, for the bandwidth limit: the
// payload of a write, the data buffers of a read (the status byte aside);
// other requests count none.
func dataLen(c *virtio.Chain) uint64 {
	var hdr [headerLen]byte
	if virtio.ReadBuffers(c.Readable, 0, hdr[:]) < headerLen {
		return 0
	}
	switch binary.LittleEndian.Uint32(hdr[0:]) {
	case TypeIn:
		if w := c.WritableLen(); w > 0 {
			return w - 1
		}
	case TypeOut:
		return c.ReadableLen() - headerLen
	}
	return 0
}

// handle serves one request and returns the bytes written to the chain.
func (d *Device) handle(c *virtio.Chain) uint32 {
	// The status byte is the last writable byte.
	wlen := c.WritableLen()
	if wlen == 0 {
		return 0 // nowhere to put a status: drop the request
	}
	data, statusBufs := virtio.SplitBuffers(c.Writable, wlen-1)
	var hdr [headerLen]byte
	if virtio.ReadBuffers(c.Readable, 0, hdr[:]) < headerLen {
		virtio.WriteBuffers(statusBufs, 0, []byte{StatusIOErr})
		return 1
	}
	typ := binary.LittleEndian.Uint32(hdr[0:])
	sector := binary.LittleEndian.Uint64(hdr[8:])
	_, payload := virtio.SplitBuffers(c.Readable, headerLen)
	status, n := d.serve(typ, sector, payload, data)
	virtio.WriteBuffers(statusBufs, 0, []byte{status})
	return n + 1
}

// inRange reports whether length bytes at sector lie inside the disk, in
// whole logical blocks.
func (d *Device) inRange(sector, length uint64) bool {
	if length%SectorSize != 0 || sector > d.capacity {
		return false
	}
	n := length / SectorSize
	return n <= d.capacity-sector && sector%d.lbs == 0 && n%d.lbs == 0
}

// serve returns the status and the data bytes written to the guest.
func (d *Device) serve(typ uint32, sector uint64, payload, data [][]byte) (byte, uint32) {
	switch typ {
	case TypeIn:
		length := bufLen(data)
		if !d.inRange(sector, length) || length > 1<<31 {
			return StatusIOErr, 0
		}
		if err := d.b.read(data, int64(sector*SectorSize)); err != nil {
			return StatusIOErr, 0
		}
		return StatusOK, uint32(length)
	case TypeOut:
		if d.b.info.ReadOnly || !d.inRange(sector, bufLen(payload)) {
			return StatusIOErr, 0
		}
		if err := d.b.write(payload, int64(sector*SectorSize)); err != nil {
			return StatusIOErr, 0
		}
		return d.completeWrite(), 0
	case TypeFlush:
		if err := d.b.flush(); err != nil {
			return StatusIOErr, 0
		}
		return StatusOK, 0
	case TypeGetID:
		var id [IDLen]byte
		copy(id[:], d.opts.ID)
		if bufLen(data) < IDLen {
			return StatusIOErr, 0
		}
		return StatusOK, uint32(virtio.WriteBuffers(data, 0, id[:]))
	case TypeDiscard, TypeWriteZeroes:
		return d.discardOrZero(typ, payload), 0
	}
	return StatusUnsupp, 0
}

// completeWrite returns the status of a write that succeeded: when the
// driver did not negotiate VIRTIO_BLK_F_FLUSH, it must be stable first.
func (d *Device) completeWrite() byte {
	if d.writeThrough {
		if err := d.b.flush(); err != nil {
			return StatusIOErr
		}
	}
	return StatusOK
}

// discardOrZero serves a discard or write-zeroes request whose segments
// are payload: all of them are checked before any is carried out.
func (d *Device) discardOrZero(typ uint32, payload [][]byte) byte {
	if d.b.info.ReadOnly {
		return StatusIOErr // a write request on a read-only disk
	}
	lim := segmentLimits{capacity: d.capacity, align: d.lbs}
	switch {
	case typ == TypeDiscard && d.features&FeatureDiscard != 0:
		lim.maxSectors, lim.maxSegs = d.b.maxDiscard, DiscardSegMax
	case typ == TypeWriteZeroes && d.features&FeatureWriteZeroes != 0:
		lim.maxSectors, lim.maxSegs, lim.flags = d.b.maxZeroes, WriteZeroesSegMax, FlagUnmap
	default:
		return StatusUnsupp
	}
	var raw [max(DiscardSegMax, WriteZeroesSegMax) * SegmentLen]byte
	n := bufLen(payload)
	if n > uint64(len(raw)) {
		return StatusIOErr
	}
	virtio.ReadBuffers(payload, 0, raw[:n])
	segs, status := parseSegments(raw[:n], lim)
	if status != StatusOK {
		return status
	}
	for _, s := range segs {
		off, length := int64(s.sector*SectorSize), int64(s.sectors)*SectorSize
		if length == 0 {
			continue
		}
		var err error
		if typ == TypeDiscard {
			err = d.b.discard(off, length)
		} else {
			err = d.b.writeZeroes(off, length, s.flags&FlagUnmap != 0)
		}
		if err != nil {
			return StatusIOErr
		}
	}
	return d.completeWrite()
}

func bufLen(bs [][]byte) uint64 {
	var n uint64
	for _, b := range bs {
		n += uint64(len(b))
	}
	return n
}
