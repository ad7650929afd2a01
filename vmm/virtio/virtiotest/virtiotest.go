// Package virtiotest simulates the driver side of a split virtqueue on
// fake guest memory, for tests of virtio device models.
package virtiotest

import (
	"encoding/binary"
	"fmt"
	"sync"

	"rainforest/vmm/guestmem"
	"rainforest/vmm/virtio"
)

// NewMemory returns size bytes of zeroed fake guest memory at GPA 0.
func NewMemory(size int) *guestmem.Memory {
	m, err := guestmem.New(guestmem.Region{GPA: 0, Data: make([]byte, size)})
	if err != nil {
		panic(err) // only for size <= 0, a bug in the test
	}
	return m
}

// Buf is one buffer of a chain the driver posts.
type Buf struct {
	Addr  uint64
	Len   uint32
	Write bool // device-writable
}

// Driver is the driver side of one split virtqueue. Descriptors are used
// round-robin, so a test must not post more than Size outstanding.
type Driver struct {
	Mem                *guestmem.Memory
	Size               uint16
	Desc, Avail, Used  uint64
	availIdx, usedSeen uint16
	next               uint16
}

// NewDriver lays out a queue of size entries at base (16-byte aligned):
// descriptor table, then available ring, then used ring (4 KiB aligned).
func NewDriver(mem *guestmem.Memory, size uint16, base uint64) *Driver {
	desc := base
	avail := desc + 16*uint64(size)
	used := (avail + 6 + 2*uint64(size) + 4095) &^ 4095
	return &Driver{Mem: mem, Size: size, Desc: desc, Avail: avail, Used: used}
}

// Config returns the queue's configuration for virtio.NewQueue.
func (d *Driver) Config() virtio.QueueConfig {
	return virtio.QueueConfig{Size: d.Size, Desc: d.Desc, Driver: d.Avail, Device: d.Used}
}

// SetDesc writes descriptor i of the table at table.
func (d *Driver) SetDesc(table uint64, i uint16, addr uint64, length uint32, flags, next uint16) {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[0:], addr)
	binary.LittleEndian.PutUint32(b[8:], length)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
	must(d.Mem.WriteAt(b[:], table+16*uint64(i)))
}

// Publish puts head in the available ring and bumps its index.
func (d *Driver) Publish(head uint16) {
	must(d.Mem.PutUint16(d.Avail+4+2*uint64(d.availIdx%d.Size), head))
	d.availIdx++
	must(d.Mem.PutUint16(d.Avail+2, d.availIdx))
}

// SetAvailIdx writes the available index directly (for malformed rings).
func (d *Driver) SetAvailIdx(v uint16) {
	d.availIdx = v
	must(d.Mem.PutUint16(d.Avail+2, v))
}

// SetAvailFlags writes the available ring's flags.
func (d *Driver) SetAvailFlags(v uint16) { must(d.Mem.PutUint16(d.Avail, v)) }

// SetUsedEvent writes used_event (EVENT_IDX).
func (d *Driver) SetUsedEvent(v uint16) {
	must(d.Mem.PutUint16(d.Avail+4+2*uint64(d.Size), v))
}

// AvailEvent reads avail_event (EVENT_IDX).
func (d *Driver) AvailEvent() uint16 {
	v, err := d.Mem.Uint16(d.Used + 4 + 8*uint64(d.Size))
	must(err)
	return v
}

// AddChain posts bufs as one chain of direct descriptors and returns its
// head.
func (d *Driver) AddChain(bufs ...Buf) uint16 {
	head := d.next
	for i, b := range bufs {
		idx := d.next
		d.next = (d.next + 1) % d.Size
		var flags uint16
		if b.Write {
			flags |= virtio.DescFlagWrite
		}
		if i < len(bufs)-1 {
			flags |= virtio.DescFlagNext
		}
		d.SetDesc(d.Desc, idx, b.Addr, b.Len, flags, d.next)
	}
	d.Publish(head)
	return head
}

// AddIndirect posts bufs through an indirect table written at table and
// returns the head.
func (d *Driver) AddIndirect(table uint64, bufs ...Buf) uint16 {
	for i, b := range bufs {
		var flags uint16
		if b.Write {
			flags |= virtio.DescFlagWrite
		}
		if i < len(bufs)-1 {
			flags |= virtio.DescFlagNext
		}
		d.SetDesc(table, uint16(i), b.Addr, b.Len, flags, uint16(i+1))
	}
	head := d.next
	d.next = (d.next + 1) % d.Size
	d.SetDesc(d.Desc, head, table, uint32(16*len(bufs)), virtio.DescFlagIndirect, 0)
	d.Publish(head)
	return head
}

// TakeUsed returns the next used element, if the device added one.
func (d *Driver) TakeUsed() (id uint16, length uint32, ok bool) {
	idx, err := d.Mem.Uint16(d.Used + 2)
	must(err)
	if idx == d.usedSeen {
		return 0, 0, false
	}
	e := d.Used + 4 + 8*uint64(d.usedSeen%d.Size)
	id32, err := d.Mem.Uint32(e)
	must(err)
	length, err = d.Mem.Uint32(e + 4)
	must(err)
	d.usedSeen++
	return uint16(id32), length, true
}

func must(err error) {
	if err != nil {
		panic(fmt.Sprintf("virtiotest: %v", err))
	}
}

// IRQ records interrupts a device model raises; it implements
// virtio.Interrupts.
type IRQ struct {
	mu         sync.Mutex
	used       []int
	configs    int
	needsReset int
}

var _ virtio.Interrupts = (*IRQ)(nil)

// UsedBuffer implements virtio.Interrupts.
func (i *IRQ) UsedBuffer(q int) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.used = append(i.used, q)
	return nil
}

// ConfigChanged implements virtio.Interrupts.
func (i *IRQ) ConfigChanged() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.configs++
	return nil
}

// NeedsReset implements virtio.Interrupts.
func (i *IRQ) NeedsReset() {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.needsReset++
}

// TakeUsed returns and clears the queues signalled so far.
func (i *IRQ) TakeUsed() []int {
	i.mu.Lock()
	defer i.mu.Unlock()
	u := i.used
	i.used = nil
	return u
}

// NeedsResetCount returns how often NeedsReset was called.
func (i *IRQ) NeedsResetCount() int {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.needsReset
}

// ConfigCount returns how often ConfigChanged was called.
func (i *IRQ) ConfigCount() int {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.configs
}
