// Package blk is the virtio block device model (virtio device type 2)
// backed by a raw image file. Requests are served synchronously in
// QueueNotify under the device's mutex.
package blk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sync"

	"rainforest/vmm/virtio"
)

// Feature bits, request types and status values (virtio spec 5.2).
const (
	FeatureSegMax  uint64 = 1 << 2
	FeatureRO      uint64 = 1 << 5
	FeatureBlkSize uint64 = 1 << 6
	FeatureFlush   uint64 = 1 << 9

	TypeIn    = 0
	TypeOut   = 1
	TypeFlush = 4
	TypeGetID = 8

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

	headerLen = 16
	configLen = 0x3C
)

// ErrNoQueue is returned by Activate when the driver did not enable the
// request queue.
var ErrNoQueue = errors.New("blk: request queue not enabled")

// File is the image backing a device; *os.File implements it.
type File interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
	Stat() (fs.FileInfo, error)
}

// Options configure a device.
type Options struct {
	ReadOnly bool
	// ID is the serial returned by GET_ID (at most IDLen bytes used).
	ID string
}

// Device is a virtio-blk device model.
type Device struct {
	file     File
	opts     Options
	capacity uint64 // in sectors
	config   [configLen]byte

	mu  sync.Mutex
	q   *virtio.Queue
	irq virtio.Interrupts
}

var _ virtio.DeviceModel = (*Device)(nil)

// New returns a device serving file; its capacity is the file size
// rounded down to whole sectors.
func New(file File, opts Options) (*Device, error) {
	st, err := file.Stat()
	if err != nil {
		return nil, fmt.Errorf("blk: stat image: %w", err)
	}
	d := &Device{file: file, opts: opts, capacity: uint64(st.Size()) / SectorSize}
	le := binary.LittleEndian
	le.PutUint64(d.config[0:], d.capacity)
	le.PutUint32(d.config[12:], SegMax)
	le.PutUint32(d.config[20:], SectorSize)
	return d, nil
}

// Capacity returns the capacity in 512-byte sectors.
func (d *Device) Capacity() uint64 { return d.capacity }

// Type implements virtio.DeviceModel.
func (d *Device) Type() uint16 { return virtio.TypeBlock }

// Features implements virtio.DeviceModel.
func (d *Device) Features() uint64 {
	f := FeatureSegMax | FeatureBlkSize | FeatureFlush
	if d.opts.ReadOnly {
		f |= FeatureRO
	}
	return f
}

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
	d.q, d.irq = a.Queues[0], a.IRQ
	return nil
}

// Reset implements virtio.DeviceModel.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.q, d.irq = nil, nil
}

// QueueNotify implements virtio.DeviceModel: it serves every available
// request.
func (d *Device) QueueNotify(q int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if q != 0 || d.q == nil {
		return
	}
	for {
		c, ok, err := d.q.Pop()
		if err != nil {
			d.irq.NeedsReset()
			return
		}
		if !ok {
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
	status, n := d.serve(typ, sector, c, data)
	virtio.WriteBuffers(statusBufs, 0, []byte{status})
	return n + 1
}

func (d *Device) inRange(sector, length uint64) bool {
	if length%SectorSize != 0 || sector > d.capacity {
		return false
	}
	return length/SectorSize <= d.capacity-sector
}

// serve returns the status and the data bytes written to the guest.
func (d *Device) serve(typ uint32, sector uint64, c *virtio.Chain, data [][]byte) (byte, uint32) {
	switch typ {
	case TypeIn:
		n := 0
		length := bufLen(data)
		if !d.inRange(sector, length) || length > 1<<31 {
			return StatusIOErr, 0
		}
		off := int64(sector * SectorSize)
		for _, b := range data {
			m, err := d.file.ReadAt(b, off)
			n += m
			if err != nil {
				return StatusIOErr, uint32(n)
			}
			off += int64(m)
		}
		return StatusOK, uint32(n)
	case TypeOut:
		_, payload := virtio.SplitBuffers(c.Readable, headerLen)
		length := bufLen(payload)
		if d.opts.ReadOnly || !d.inRange(sector, length) {
			return StatusIOErr, 0
		}
		off := int64(sector * SectorSize)
		for _, b := range payload {
			m, err := d.file.WriteAt(b, off)
			if err != nil {
				return StatusIOErr, 0
			}
			off += int64(m)
		}
		return StatusOK, 0
	case TypeFlush:
		if err := d.file.Sync(); err != nil {
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
	}
	return StatusUnsupp, 0
}

func bufLen(bs [][]byte) uint64 {
	var n uint64
	for _, b := range bs {
		n += uint64(len(b))
	}
	return n
}
