// Package bus dispatches guest port I/O and MMIO accesses to device models.
//
// A Bus maps non-overlapping address ranges to Devices. The VMM keeps one
// Bus for port I/O and one for MMIO; a vCPU thread that exits on an access
// looks the address up and calls the device with the offset into its range.
package bus

import (
	"errors"
	"fmt"
	"sort"
	"sync"
)

// ErrOverlap is returned when a range overlaps one already on the bus.
var ErrOverlap = errors.New("bus range overlaps an existing device")

// Device is a device model reachable through a bus range. offset is relative
// to the start of the range; len(data) is the access width (1, 2, 4 or 8).
// Reads fill data; devices must tolerate any offset and width the guest sends.
type Device interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}

type entry struct {
	base, size uint64
	dev        Device
}

// Bus is a set of device ranges. It is safe for concurrent use.
type Bus struct {
	mu      sync.RWMutex
	entries []entry // sorted by base
}

// Insert places dev at [base, base+size).
func (b *Bus) Insert(dev Device, base, size uint64) error {
	if size == 0 || base+size < base {
		return fmt.Errorf("bus: invalid range %#x+%#x", base, size)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, e := range b.entries {
		if base < e.base+e.size && e.base < base+size {
			return fmt.Errorf("%w: %#x+%#x and %#x+%#x", ErrOverlap, base, size, e.base, e.size)
		}
	}
	b.entries = append(b.entries, entry{base, size, dev})
	sort.Slice(b.entries, func(i, j int) bool { return b.entries[i].base < b.entries[j].base })
	return nil
}

// Remove takes the range starting at base off the bus; it reports whether
// there was one.
func (b *Bus) Remove(base uint64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, e := range b.entries {
		if e.base == base {
			b.entries = append(b.entries[:i], b.entries[i+1:]...)
			return true
		}
	}
	return false
}

func (b *Bus) find(addr uint64) (Device, uint64, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	i := sort.Search(len(b.entries), func(i int) bool { return b.entries[i].base+b.entries[i].size > addr })
	if i < len(b.entries) && b.entries[i].base <= addr {
		e := b.entries[i]
		return e.dev, addr - e.base, true
	}
	return nil, 0, false
}

// Read dispatches a read; it reports false (and fills data with 0xff, like
// an unclaimed ISA/PCI read) when no device claims addr.
func (b *Bus) Read(addr uint64, data []byte) bool {
	dev, off, ok := b.find(addr)
	if !ok {
		for i := range data {
			data[i] = 0xff
		}
		return false
	}
	dev.Read(off, data)
	return true
}

// Write dispatches a write; it reports false when no device claims addr.
func (b *Bus) Write(addr uint64, data []byte) bool {
	dev, off, ok := b.find(addr)
	if !ok {
		return false
	}
	dev.Write(off, data)
	return true
}
