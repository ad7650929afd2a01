// Package console is the virtio console device model (virtio device type
// 3) with a single port and no multiport support: queue 0 (receiveq)
// carries host input to the guest, queue 1 (transmitq) carries guest
// output to an io.Writer.
package console

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"rainforest/vmm/virtio"
)

// Queue indices and sizes.
const (
	ReceiveQueue  = 0
	TransmitQueue = 1
	QueueSize     = 256

	// DefaultInputBuffer is the input buffer size when Options leaves it 0.
	DefaultInputBuffer = 64 << 10
)

// ErrInputFull is returned by Enqueue when the input buffer cannot take
// all the bytes; the rest were dropped.
var ErrInputFull = errors.New("console: input buffer full")

// Options configure a console.
type Options struct {
	// InputBuffer bounds the host input held until the guest posts
	// receive buffers (bytes; 0 means DefaultInputBuffer).
	InputBuffer int
}

// Device is a virtio-console device model.
type Device struct {
	out io.Writer
	max int

	mu      sync.Mutex
	pending []byte
	rx, tx  *virtio.Queue
	irq     virtio.Interrupts
	outErr  error
}

var _ virtio.DeviceModel = (*Device)(nil)

// New returns a console writing guest output to out.
func New(out io.Writer, opts Options) *Device {
	m := opts.InputBuffer
	if m <= 0 {
		m = DefaultInputBuffer
	}
	return &Device{out: out, max: m}
}

// Type implements virtio.DeviceModel.
func (d *Device) Type() uint16 { return virtio.TypeConsole }

// Features implements virtio.DeviceModel: no optional features.
func (d *Device) Features() uint64 { return 0 }

// NumQueues implements virtio.DeviceModel.
func (d *Device) NumQueues() int { return 2 }

// QueueMax implements virtio.DeviceModel.
func (d *Device) QueueMax(int) uint16 { return QueueSize }

// ReadConfig implements virtio.DeviceModel (all fields zero: no size, one
// port).
func (d *Device) ReadConfig(offset uint64, data []byte) { clear(data) }

// WriteConfig implements virtio.DeviceModel (emerg_wr is not offered).
func (d *Device) WriteConfig(offset uint64, data []byte) {}

// Activate implements virtio.DeviceModel.
func (d *Device) Activate(a virtio.Activation) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(a.Queues) > ReceiveQueue {
		d.rx = a.Queues[ReceiveQueue]
	}
	if len(a.Queues) > TransmitQueue {
		d.tx = a.Queues[TransmitQueue]
	}
	d.irq = a.IRQ
	return nil
}

// Reset implements virtio.DeviceModel. Buffered input is kept.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rx, d.tx, d.irq = nil, nil, nil
}

// QueueNotify implements virtio.DeviceModel.
func (d *Device) QueueNotify(q int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch q {
	case ReceiveQueue:
		d.deliverLocked()
	case TransmitQueue:
		d.transmitLocked()
	}
}

// Enqueue adds host input for the guest. It never blocks: bytes beyond
// the input buffer are dropped and ErrInputFull returned with the count
// accepted.
func (d *Device) Enqueue(p []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := min(len(p), d.max-len(d.pending))
	d.pending = append(d.pending, p[:n]...)
	d.deliverLocked()
	if n < len(p) {
		return n, fmt.Errorf("%w: %d of %d bytes dropped", ErrInputFull, len(p)-n, len(p))
	}
	return n, nil
}

// OutputError returns the first error writing guest output, if any.
func (d *Device) OutputError() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.outErr
}

func (d *Device) deliverLocked() {
	if d.rx == nil {
		return
	}
	pushed := false
	for len(d.pending) > 0 {
		c, ok, err := d.rx.Pop()
		if err != nil {
			d.rx = nil
			d.irq.NeedsReset()
			return
		}
		if !ok {
			break
		}
		n := virtio.WriteBuffers(c.Writable, 0, d.pending)
		d.pending = d.pending[n:]
		if err := d.rx.Push(c.Head, uint32(n)); err != nil {
			d.rx = nil
			d.irq.NeedsReset()
			return
		}
		pushed = true
	}
	if len(d.pending) == 0 {
		d.pending = nil
	}
	if pushed && d.rx.NeedsNotify() {
		_ = d.irq.UsedBuffer(ReceiveQueue) // nothing better to do when delivery fails
	}
}

func (d *Device) transmitLocked() {
	if d.tx == nil {
		return
	}
	pushed := false
	for {
		c, ok, err := d.tx.Pop()
		if err != nil {
			d.tx = nil
			d.irq.NeedsReset()
			return
		}
		if !ok {
			break
		}
		for _, b := range c.Readable {
			if _, err := d.out.Write(b); err != nil && d.outErr == nil {
				d.outErr = fmt.Errorf("console: write output: %w", err)
			}
		}
		if err := d.tx.Push(c.Head, 0); err != nil {
			d.tx = nil
			d.irq.NeedsReset()
			return
		}
		pushed = true
	}
	if pushed && d.tx.NeedsNotify() {
		_ = d.irq.UsedBuffer(TransmitQueue)
	}
}
