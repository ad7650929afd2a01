package rfcom

import (
	"context"
	"fmt"

	"rainforest/rfcom/device"
	"rainforest/vmm/shmem/abi"
)

// Segment is a mapped shared segment: the read-write section of a
// protocol-2 shared-memory device, granted by the supervisor.
type Segment struct {
	dev *device.Device
}

// SegmentInfo describes a segment granted to this subOS.
type SegmentInfo struct {
	Name     string
	Size     uint64
	ReadOnly bool
	Address  string // PCI address
}

// openSegments opens every segment device (without interrupts) and calls
// visit with it until visit returns true (the device is kept open).
func openSegments(ctx context.Context, opts Options, visit func(*device.Device) bool) error {
	sys, dev := opts.Roots()
	infos, err := device.Find(sys)
	if err != nil {
		return err
	}
	for _, info := range infos {
		if info.Protocol() != abi.ProtocolSegment {
			continue
		}
		d, err := device.Open(ctx, sys, dev, info, device.WithoutInterrupts())
		if err != nil {
			return fmt.Errorf("segment device %s: %w", info.Address, err)
		}
		if visit(d) {
			return nil
		}
		_ = d.Close()
	}
	return nil
}

// MapSegment maps the segment called name. It returns ErrNotGranted if no
// segment of that name was granted to this subOS.
func MapSegment(ctx context.Context, opts Options, name string) (*Segment, error) {
	var found *device.Device
	err := openSegments(ctx, opts, func(d *device.Device) bool {
		if d.Name() == name {
			found = d
			return true
		}
		return false
	})
	if err != nil {
		return nil, err
	}
	if found == nil {
		return nil, fmt.Errorf("%w: no segment %q in this subOS", ErrNotGranted, name)
	}
	return &Segment{dev: found}, nil
}

// Segments lists the segments granted to this subOS.
func Segments(ctx context.Context, opts Options) ([]SegmentInfo, error) {
	var out []SegmentInfo
	err := openSegments(ctx, opts, func(d *device.Device) bool {
		out = append(out, SegmentInfo{Name: d.Name(), Size: d.Layout().RWSize, ReadOnly: d.RWReadOnly(), Address: d.Info().Address})
		return false
	})
	return out, err
}

// Name returns the segment's name.
func (s *Segment) Name() string { return s.dev.Name() }

// Bytes returns the segment's memory (nil after Unmap). Writing to a
// read-only segment does not change it (the writes are dropped by the VMM).
func (s *Segment) Bytes() []byte { return s.dev.RW() }

// ReadOnly reports whether the segment is read-only for this subOS.
func (s *Segment) ReadOnly() bool { return s.dev.RWReadOnly() }

// Size returns the segment's size in bytes.
func (s *Segment) Size() uint64 { return s.dev.Layout().RWSize }

// Unmap releases the segment; Bytes is invalid afterwards.
func (s *Segment) Unmap() error { return s.dev.Close() }
