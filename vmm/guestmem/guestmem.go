// Package guestmem gives bounds-checked access to guest physical memory.
//
// A Memory is a set of non-overlapping regions, each a byte slice placed at a
// guest physical address (GPA). In the VMM the slices are the hugepage
// mappings KVM also sees; in tests they are plain Go slices ("fake guest
// memory"). Every accessor checks that the whole access lies inside one
// region, because addresses come from the untrusted guest.
package guestmem

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
)

// ErrOutOfRange is returned when an access is not fully inside one region.
var ErrOutOfRange = errors.New("guest address out of range")

// ErrInaccessible is returned when an access falls in a part of a region
// that is not accessible now (unplugged hotplug memory); it wraps
// ErrOutOfRange.
var ErrInaccessible = fmt.Errorf("%w: guest memory not plugged", ErrOutOfRange)

// Region is a contiguous piece of guest physical memory.
type Region struct {
	GPA  uint64
	Data []byte
	// Accessible, when set, says whether the n bytes at offset off of
	// Data may be touched now (hotplug memory: only plugged blocks are
	// mapped readable); nil means all of Data always may.
	Accessible func(off, n uint64) bool
}

// End returns the first GPA after the region.
func (r Region) End() uint64 { return r.GPA + uint64(len(r.Data)) }

// Memory is guest physical memory made of regions.
type Memory struct {
	regions []Region // sorted by GPA, non-overlapping
}

// New builds a Memory from regions; they must not overlap or be empty.
func New(regions ...Region) (*Memory, error) {
	rs := append([]Region(nil), regions...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].GPA < rs[j].GPA })
	for i, r := range rs {
		if len(r.Data) == 0 {
			return nil, fmt.Errorf("guestmem: empty region at %#x", r.GPA)
		}
		if r.End() < r.GPA {
			return nil, fmt.Errorf("guestmem: region at %#x wraps the address space", r.GPA)
		}
		if i > 0 && rs[i-1].End() > r.GPA {
			return nil, fmt.Errorf("guestmem: region at %#x overlaps region at %#x", r.GPA, rs[i-1].GPA)
		}
	}
	return &Memory{regions: rs}, nil
}

// Regions returns the regions, sorted by GPA. The slice must not be modified.
func (m *Memory) Regions() []Region { return m.regions }

// Size returns the total number of bytes in all regions.
func (m *Memory) Size() uint64 {
	var n uint64
	for _, r := range m.regions {
		n += uint64(len(r.Data))
	}
	return n
}

// Slice returns the n bytes at gpa as a slice aliasing guest memory.
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	for _, r := range m.regions {
		if gpa >= r.GPA && gpa < r.End() {
			off := gpa - r.GPA
			if n > uint64(len(r.Data))-off {
				break
			}
			if r.Accessible != nil && !r.Accessible(off, n) {
				return nil, fmt.Errorf("%w: %d bytes at %#x", ErrInaccessible, n, gpa)
			}
			return r.Data[off : off+n : off+n], nil
		}
	}
	return nil, fmt.Errorf("%w: %d bytes at %#x", ErrOutOfRange, n, gpa)
}

// ReadAt copies len(p) bytes from gpa into p.
func (m *Memory) ReadAt(p []byte, gpa uint64) error {
	s, err := m.Slice(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(p, s)
	return nil
}

// WriteAt copies p into guest memory at gpa.
func (m *Memory) WriteAt(p []byte, gpa uint64) error {
	s, err := m.Slice(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(s, p)
	return nil
}

// Uint16 reads a little-endian uint16 at gpa.
func (m *Memory) Uint16(gpa uint64) (uint16, error) {
	s, err := m.Slice(gpa, 2)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(s), nil
}

// Uint32 reads a little-endian uint32 at gpa.
func (m *Memory) Uint32(gpa uint64) (uint32, error) {
	s, err := m.Slice(gpa, 4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(s), nil
}

// Uint64 reads a little-endian uint64 at gpa.
func (m *Memory) Uint64(gpa uint64) (uint64, error) {
	s, err := m.Slice(gpa, 8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(s), nil
}

// PutUint16 writes a little-endian uint16 at gpa.
func (m *Memory) PutUint16(gpa uint64, v uint16) error {
	s, err := m.Slice(gpa, 2)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint16(s, v)
	return nil
}

// PutUint32 writes a little-endian uint32 at gpa.
func (m *Memory) PutUint32(gpa uint64, v uint32) error {
	s, err := m.Slice(gpa, 4)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(s, v)
	return nil
}

// PutUint64 writes a little-endian uint64 at gpa.
func (m *Memory) PutUint64(gpa uint64, v uint64) error {
	s, err := m.Slice(gpa, 8)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint64(s, v)
	return nil
}
