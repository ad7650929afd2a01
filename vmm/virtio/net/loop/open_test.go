package loop

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// laneFile is a memfd of size bytes, sealed as rfm/region seals its
// regions when sealed.
func laneFile(t *testing.T, size int64, sealed bool) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate("lane", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "lane")
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if sealed {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// readOnly reopens f read-only, as the supervisor hands a peer's lane.
func readOnly(t *testing.T, f *os.File) *os.File {
	t.Helper()
	fd, err := rawFD(f)
	if err != nil {
		t.Fatal(err)
	}
	ro, err := os.OpenFile("/proc/self/fd/"+strconv.Itoa(fd), os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	return ro
}

func eventFile(t *testing.T) *os.File {
	t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fd), "bell")
}

// dup duplicates f.
func dup(t *testing.T, f *os.File) *os.File {
	t.Helper()
	fd, err := rawFD(f)
	if err != nil {
		t.Fatal(err)
	}
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(nfd), f.Name())
}

// TestOpen: two members on memfds, each mapping its own lane read-write
// and the other's read-only, exchange frames; descriptors that do not
// fit are refused, and closed.
func TestOpen(t *testing.T) {
	ms := members(2)
	region, err := LaneRegion(2, MinSlots)
	if err != nil {
		t.Fatal(err)
	}
	size := int64(region.Size())
	lanes := []*os.File{laneFile(t, size, true), laneFile(t, size, true)}
	bells := []*os.File{eventFile(t), eventFile(t)}
	defer Files{Lanes: lanes, Bells: bells}.Close()
	files := func(self int) Files {
		var f Files
		for i := range 2 {
			if i == self {
				f.Lanes = append(f.Lanes, dup(t, lanes[i]))
			} else {
				f.Lanes = append(f.Lanes, readOnly(t, lanes[i]))
			}
			f.Bells = append(f.Bells, dup(t, bells[i]))
		}
		return f
	}
	var bs [2]*Backend
	for i := range 2 {
		b, err := Open(Config{Network: "t", Self: i, Members: ms, Slots: MinSlots}, files(i))
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		bs[i] = b
	}
	p := udp(0, 1, 500)
	if err := bs[0].Send([][]byte{p}); err != nil {
		t.Fatal(err)
	}
	port := newPort()
	if n, err := bs[1].poll(t.Context(), port); n != 1 || err != nil {
		t.Fatalf("poll: %d, %v", n, err)
	}
	if got := port.take(); len(got) != 1 || !bytes.Equal(got[0], p) {
		t.Fatal("frame not received")
	}

	// Refusals, each closing what it was given.
	bad := []struct {
		name string
		f    func() Files
	}{
		{"own lane read-only", func() Files { f := files(0); f.Lanes[0].Close(); f.Lanes[0] = readOnly(t, lanes[0]); return f }},
		{"unsealed lane", func() Files { f := files(0); f.Lanes[1].Close(); f.Lanes[1] = laneFile(t, size, false); return f }},
		{"short lane", func() Files { f := files(0); f.Lanes[1].Close(); f.Lanes[1] = laneFile(t, size-4096, true); return f }},
		{"long lane", func() Files { f := files(0); f.Lanes[1].Close(); f.Lanes[1] = laneFile(t, size+4<<20, true); return f }},
		{"missing doorbell", func() Files { f := files(0); f.Bells[1].Close(); f.Bells = f.Bells[:1]; return f }},
	}
	for _, c := range bad {
		f := c.f()
		if _, err := Open(Config{Network: "t", Self: 0, Members: ms, Slots: MinSlots}, f); err == nil {
			t.Errorf("%s: accepted", c.name)
		}
		for _, x := range append(f.Lanes, f.Bells...) {
			if err := x.Close(); !errors.Is(err, os.ErrClosed) {
				t.Errorf("%s: a descriptor left open", c.name)
			}
		}
	}
	f := files(0)
	if _, err := Open(Config{Network: "t", Self: 0, Members: ms[:1]}, f); !errors.Is(err, ErrTooFewMembers) {
		t.Errorf("one member: %v", err)
	}
	if err := f.Lanes[0].Close(); !errors.Is(err, os.ErrClosed) {
		t.Error("a refused configuration left its descriptors open")
	}
}
