package blk_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"rainforest/vmm/virtio"
	"rainforest/vmm/virtio/blk"
	vt "rainforest/vmm/virtio/virtiotest"
)

const (
	hdrAddr    = 0x40000
	dataAddr   = 0x50000
	statusAddr = 0x60000
)

type rig struct {
	t   *testing.T
	dev *blk.Device
	drv *vt.Driver
	irq *vt.IRQ
	f   *os.File // the image, opened separately
}

// newRig serves an image of sectors sectors (and a partial sector the
// device ignores) made in a temporary directory.
func newRig(t *testing.T, sectors int64, opts blk.Options) *rig {
	t.Helper()
	return newRigIn(t, t.TempDir(), sectors*blk.SectorSize+100, opts)
}

// newRigIn serves an image of size bytes made in dir.
func newRigIn(t *testing.T, dir string, size int64, opts blk.Options) *rig {
	t.Helper()
	path := filepath.Join(dir, "disk.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	r := openRig(t, path, opts)
	r.f = f
	return r
}

// openRig serves path with an active queue, FLUSH negotiated.
func openRig(t *testing.T, path string, opts blk.Options) *rig {
	t.Helper()
	dev, err := blk.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := dev.Close(); err != nil {
			t.Error(err)
		}
	})
	mem := vt.NewMemory(rigMemory)
	drv := vt.NewDriver(mem, 16, 0x1000)
	q, err := virtio.NewQueue(mem, drv.Config(), virtio.FeatureIndirectDesc)
	if err != nil {
		t.Fatal(err)
	}
	irq := &vt.IRQ{}
	a := virtio.Activation{Mem: mem, Features: virtio.FeatureVersion1 | blk.FeatureFlush | dev.Features(), Queues: []*virtio.Queue{q}, IRQ: irq}
	if err := dev.Activate(a); err != nil {
		t.Fatal(err)
	}
	return &rig{t: t, dev: dev, drv: drv, irq: irq}
}

func (r *rig) header(typ uint32, sector uint64) {
	var h [16]byte
	binary.LittleEndian.PutUint32(h[0:], typ)
	binary.LittleEndian.PutUint64(h[8:], sector)
	_ = r.drv.Mem.WriteAt(h[:], hdrAddr)
	_ = r.drv.Mem.PutUint16(statusAddr, 0xFF)
}

// do posts bufs, notifies and returns the status byte and used length.
func (r *rig) do(bufs ...vt.Buf) (byte, uint32) {
	r.t.Helper()
	r.drv.AddChain(bufs...)
	r.dev.QueueNotify(0)
	_, n, ok := r.drv.TakeUsed()
	if !ok {
		r.t.Fatal("request not completed")
	}
	st, _ := r.drv.Mem.Slice(statusAddr, 1)
	return st[0], n
}

var (
	hdr    = vt.Buf{Addr: hdrAddr, Len: 16}
	status = vt.Buf{Addr: statusAddr, Len: 1, Write: true}
)

func TestConfigAndFeatures(t *testing.T) {
	r := newRig(t, 2048, blk.Options{})
	var c [24]byte
	r.dev.ReadConfig(0, c[:])
	if cap := binary.LittleEndian.Uint64(c[0:]); cap != 2048 || r.dev.Capacity() != 2048 {
		t.Fatalf("capacity %d", cap)
	}
	if sm := binary.LittleEndian.Uint32(c[12:]); sm != blk.SegMax {
		t.Fatalf("seg_max %d", sm)
	}
	if bs := binary.LittleEndian.Uint32(c[20:]); bs != 512 {
		t.Fatalf("blk_size %d", bs)
	}
	f := r.dev.Features()
	if f&blk.FeatureRO != 0 || f&blk.FeatureFlush == 0 || f&blk.FeatureSegMax == 0 || f&blk.FeatureBlkSize == 0 {
		t.Fatalf("features %#x", f)
	}
	var far [4]byte
	r.dev.ReadConfig(1<<40, far[:])
	r.dev.WriteConfig(0, []byte{1, 2, 3})
	if r.dev.Type() != virtio.TypeBlock || r.dev.NumQueues() != 1 || r.dev.QueueMax(0) != 256 {
		t.Fatal("identity")
	}
}

func TestReadWriteFlushRoundTrip(t *testing.T) {
	r := newRig(t, 64, blk.Options{ID: "rf-disk-1"})
	payload := bytes.Repeat([]byte("RainForest!"), 200)[:3*512]
	_ = r.drv.Mem.WriteAt(payload, dataAddr)
	r.header(blk.TypeOut, 5)
	// Data split over two descriptors.
	if st, n := r.do(hdr, vt.Buf{Addr: dataAddr, Len: 1000}, vt.Buf{Addr: dataAddr + 1000, Len: 536}, status); st != blk.StatusOK || n != 1 {
		t.Fatalf("write status %d len %d", st, n)
	}
	onDisk := make([]byte, len(payload))
	if _, err := r.f.ReadAt(onDisk, 5*512); err != nil || !bytes.Equal(onDisk, payload) {
		t.Fatalf("file content wrong: %v", err)
	}
	r.header(blk.TypeFlush, 0)
	if st, _ := r.do(hdr, status); st != blk.StatusOK {
		t.Fatalf("flush status %d", st)
	}
	// Read back into a different place, header and status via indirect.
	r.header(blk.TypeIn, 5)
	r.drv.AddIndirect(0x70000, hdr, vt.Buf{Addr: 0x80000, Len: 512, Write: true},
		vt.Buf{Addr: 0x80200, Len: 1024, Write: true}, status)
	r.dev.QueueNotify(0)
	_, n, ok := r.drv.TakeUsed()
	st, _ := r.drv.Mem.Slice(statusAddr, 1)
	got, _ := r.drv.Mem.Slice(0x80000, 3*512)
	if !ok || st[0] != blk.StatusOK || n != 3*512+1 || !bytes.Equal(got, payload) {
		t.Fatalf("read: ok %v status %d n %d equal %v", ok, st[0], n, bytes.Equal(got, payload))
	}
	if u := r.irq.TakeUsed(); len(u) == 0 || u[0] != 0 {
		t.Fatalf("interrupts %v", u)
	}
	// GET_ID.
	r.header(blk.TypeGetID, 0)
	if st, n := r.do(hdr, vt.Buf{Addr: 0x90000, Len: 20, Write: true}, status); st != blk.StatusOK || n != 21 {
		t.Fatalf("get id status %d n %d", st, n)
	}
	id, _ := r.drv.Mem.Slice(0x90000, 20)
	if string(bytes.TrimRight(id, "\x00")) != "rf-disk-1" {
		t.Fatalf("id %q", id)
	}
}

func TestBadRequests(t *testing.T) {
	r := newRig(t, 64, blk.Options{})
	cases := []struct {
		name   string
		typ    uint32
		sector uint64
		bufs   []vt.Buf
		want   byte
	}{
		{"read past end", blk.TypeIn, 63, []vt.Buf{hdr, {Addr: dataAddr, Len: 1024, Write: true}, status}, blk.StatusIOErr},
		{"read at capacity", blk.TypeIn, 64, []vt.Buf{hdr, {Addr: dataAddr, Len: 512, Write: true}, status}, blk.StatusIOErr},
		{"huge sector", blk.TypeIn, 1 << 62, []vt.Buf{hdr, {Addr: dataAddr, Len: 512, Write: true}, status}, blk.StatusIOErr},
		{"sector overflow", blk.TypeOut, ^uint64(0), []vt.Buf{hdr, {Addr: dataAddr, Len: 512}, status}, blk.StatusIOErr},
		{"write past end", blk.TypeOut, 60, []vt.Buf{hdr, {Addr: dataAddr, Len: 8 * 512}, status}, blk.StatusIOErr},
		{"partial sector", blk.TypeOut, 0, []vt.Buf{hdr, {Addr: dataAddr, Len: 100}, status}, blk.StatusIOErr},
		{"unknown type", 77, 0, []vt.Buf{hdr, status}, blk.StatusUnsupp},
		{"short header", blk.TypeIn, 0, []vt.Buf{{Addr: hdrAddr, Len: 8}, status}, blk.StatusIOErr},
		{"get id short buffer", blk.TypeGetID, 0, []vt.Buf{hdr, {Addr: dataAddr, Len: 4, Write: true}, status}, blk.StatusIOErr},
	}
	for _, c := range cases {
		r.header(c.typ, c.sector)
		if st, _ := r.do(c.bufs...); st != c.want {
			t.Errorf("%s: status %d, want %d", c.name, st, c.want)
		}
	}
	// No writable byte at all: dropped (returned with 0 bytes).
	r.header(blk.TypeIn, 0)
	r.drv.AddChain(hdr)
	r.dev.QueueNotify(0)
	if _, n, ok := r.drv.TakeUsed(); !ok || n != 0 {
		t.Fatalf("no-status request: ok %v n %d", ok, n)
	}
	// Malformed chain: the device asks for a reset and stops.
	r.drv.SetDesc(r.drv.Desc, 0, dataAddr, 16, virtio.DescFlagNext, 0)
	r.drv.Publish(0)
	r.dev.QueueNotify(0)
	if r.irq.NeedsResetCount() != 1 {
		t.Fatal("malformed chain did not request reset")
	}
	r.dev.QueueNotify(0)
	r.dev.QueueNotify(3)
	r.dev.Reset()
	r.dev.QueueNotify(0)
}

func TestReadOnly(t *testing.T) {
	r := newRig(t, 8, blk.Options{ReadOnly: true})
	if r.dev.Features()&blk.FeatureRO == 0 {
		t.Fatal("RO feature not offered")
	}
	r.header(blk.TypeOut, 0)
	if st, _ := r.do(hdr, vt.Buf{Addr: dataAddr, Len: 512}, status); st != blk.StatusIOErr {
		t.Fatalf("write on read-only: status %d", st)
	}
	r.header(blk.TypeIn, 0)
	if st, _ := r.do(hdr, vt.Buf{Addr: dataAddr, Len: 512, Write: true}, status); st != blk.StatusOK {
		t.Fatalf("read on read-only: status %d", st)
	}
}

func TestActivateWithoutQueue(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "d"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dev, err := blk.New(f, blk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.Activate(virtio.Activation{Queues: []*virtio.Queue{nil}}); !errors.Is(err, blk.ErrNoQueue) {
		t.Fatal(err)
	}
}

const (
	segAddr = 0x58000
	// fillAddr and readAddr hold up to 1 MiB of data each.
	fillAddr  = 0x100000
	readAddr  = 0x200000
	rigMemory = 0x300000
)

// segments writes discard / write-zeroes segments {sector, num_sectors,
// flags} at segAddr and returns the buffer holding them.
func (r *rig) segments(segs ...[3]uint64) vt.Buf {
	b := make([]byte, blk.SegmentLen*len(segs))
	for i, s := range segs {
		binary.LittleEndian.PutUint64(b[16*i:], s[0])
		binary.LittleEndian.PutUint32(b[16*i+8:], uint32(s[1]))
		binary.LittleEndian.PutUint32(b[16*i+12:], uint32(s[2]))
	}
	_ = r.drv.Mem.WriteAt(b, segAddr)
	return vt.Buf{Addr: segAddr, Len: uint32(len(b))}
}

// fill writes n sectors of a non-zero pattern at sector through the
// device and flushes.
func (r *rig) fill(sector uint64, n int) []byte {
	r.t.Helper()
	data := bytes.Repeat([]byte{0xA5, 0x5A, 0x33, 0xCC}, n*blk.SectorSize/4)
	_ = r.drv.Mem.WriteAt(data, fillAddr)
	r.header(blk.TypeOut, sector)
	if st, _ := r.do(hdr, vt.Buf{Addr: fillAddr, Len: uint32(len(data))}, status); st != blk.StatusOK {
		r.t.Fatalf("write status %d", st)
	}
	r.header(blk.TypeFlush, 0)
	if st, _ := r.do(hdr, status); st != blk.StatusOK {
		r.t.Fatalf("flush status %d", st)
	}
	return data
}

// read returns n sectors at sector, read through the device.
func (r *rig) read(sector uint64, n int) []byte {
	r.t.Helper()
	r.header(blk.TypeIn, sector)
	if st, _ := r.do(hdr, vt.Buf{Addr: readAddr, Len: uint32(n * blk.SectorSize), Write: true}, status); st != blk.StatusOK {
		r.t.Fatalf("read status %d", st)
	}
	got, _ := r.drv.Mem.Slice(readAddr, uint64(n*blk.SectorSize))
	return bytes.Clone(got)
}

// allocated returns the bytes allocated to the image on the host.
func (r *rig) allocated() int64 {
	r.t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(r.f.Fd()), &st); err != nil {
		r.t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestDiscardAndWriteZeroesConfig(t *testing.T) {
	r := newRig(t, 2048, blk.Options{})
	info := r.dev.Info()
	t.Logf("backing: %+v", info)
	f := r.dev.Features()
	if f&blk.FeatureWriteZeroes == 0 || info.WriteZeroes == blk.ZeroNone {
		t.Fatalf("write-zeroes not offered on a regular file: features %#x, info %+v", f, info)
	}
	if (f&blk.FeatureDiscard != 0) != info.Discard {
		t.Fatalf("discard feature %#x disagrees with info %+v", f, info)
	}
	var c [60]byte
	r.dev.ReadConfig(0, c[:])
	le := binary.LittleEndian
	if info.Discard {
		if le.Uint32(c[36:]) == 0 || le.Uint32(c[40:]) != blk.DiscardSegMax || le.Uint32(c[44:]) == 0 {
			t.Fatalf("discard config % x", c[36:48])
		}
		if c[56] != 1 {
			t.Fatal("write_zeroes_may_unmap not set although holes can be punched")
		}
	}
	if le.Uint32(c[48:]) == 0 || le.Uint32(c[52:]) != blk.WriteZeroesSegMax {
		t.Fatalf("write-zeroes config % x", c[48:57])
	}
}

func TestDiscardFreesBlocks(t *testing.T) {
	r := newRig(t, 1024, blk.Options{})
	if !r.dev.Info().Discard {
		t.Skipf("the file system of %s punches no holes", t.TempDir())
	}
	r.fill(0, 512)
	before := r.allocated()
	r.header(blk.TypeDiscard, 0)
	// Two segments, the second split over two descriptors.
	segs := r.segments([3]uint64{0, 128, 0}, [3]uint64{128, 384, 0})
	if st, n := r.do(hdr, vt.Buf{Addr: segs.Addr, Len: 24}, vt.Buf{Addr: segs.Addr + 24, Len: 8}, status); st != blk.StatusOK || n != 1 {
		t.Fatalf("discard status %d len %d", st, n)
	}
	after := r.allocated()
	if after >= before || before-after < 200<<10 {
		t.Fatalf("allocated %d bytes before the discard, %d after", before, after)
	}
	if got := r.read(0, 512); !bytes.Equal(got, make([]byte, len(got))) {
		t.Fatal("discarded sectors do not read back as zeroes")
	}
}

func TestWriteZeroes(t *testing.T) {
	r := newRig(t, 1024, blk.Options{})
	data := r.fill(0, 64)
	// Without unmap: the sectors read back as zeroes; those around are
	// untouched.
	r.header(blk.TypeWriteZeroes, 0)
	if st, _ := r.do(hdr, r.segments([3]uint64{8, 16, 0}, [3]uint64{40, 1, 0}), status); st != blk.StatusOK {
		t.Fatalf("write-zeroes status %d", st)
	}
	got := r.read(0, 64)
	want := bytes.Clone(data)
	clear(want[8*512 : 24*512])
	clear(want[40*512 : 41*512])
	if !bytes.Equal(got, want) {
		t.Fatal("write-zeroes content wrong")
	}
	// With unmap, where holes can be punched, the blocks go.
	r.fill(256, 512)
	before := r.allocated()
	r.header(blk.TypeWriteZeroes, 0)
	if st, _ := r.do(hdr, r.segments([3]uint64{256, 512, blk.FlagUnmap}), status); st != blk.StatusOK {
		t.Fatalf("write-zeroes (unmap) status %d", st)
	}
	if got := r.read(256, 512); !bytes.Equal(got, make([]byte, len(got))) {
		t.Fatal("write-zeroes (unmap) does not read back as zeroes")
	}
	if r.dev.Info().WriteZeroesMayUnmap {
		if after := r.allocated(); before-after < 200<<10 {
			t.Fatalf("unmap: allocated %d bytes before, %d after", before, after)
		}
	}
}

func TestBadSegments(t *testing.T) {
	r := newRig(t, 64, blk.Options{})
	if !r.dev.Info().Discard {
		t.Skip("no discard on this file system")
	}
	huge := uint64(blk.DiscardSegMax + 1)
	cases := []struct {
		name string
		typ  uint32
		segs [][3]uint64
		bufs []vt.Buf // instead of segs
		want byte
	}{
		{"discard with unmap", blk.TypeDiscard, [][3]uint64{{0, 8, blk.FlagUnmap}}, nil, blk.StatusUnsupp},
		{"discard reserved flag", blk.TypeDiscard, [][3]uint64{{0, 8, 2}}, nil, blk.StatusUnsupp},
		{"write-zeroes reserved flag", blk.TypeWriteZeroes, [][3]uint64{{0, 8, 1 << 31}}, nil, blk.StatusUnsupp},
		{"flag beats range", blk.TypeWriteZeroes, [][3]uint64{{1 << 40, 8, 0}, {0, 8, 4}}, nil, blk.StatusUnsupp},
		{"past the end", blk.TypeDiscard, [][3]uint64{{60, 8, 0}}, nil, blk.StatusIOErr},
		{"at capacity", blk.TypeWriteZeroes, [][3]uint64{{64, 1, 0}}, nil, blk.StatusIOErr},
		{"sector overflow", blk.TypeWriteZeroes, [][3]uint64{{^uint64(0), 1, 0}}, nil, blk.StatusIOErr},
		{"count overflow", blk.TypeDiscard, [][3]uint64{{8, 0xFFFF_FFFF, 0}}, nil, blk.StatusIOErr},
		{"second segment bad", blk.TypeDiscard, [][3]uint64{{0, 8, 0}, {63, 2, 0}}, nil, blk.StatusIOErr},
		{"no segment", blk.TypeDiscard, nil, []vt.Buf{hdr, status}, blk.StatusIOErr},
		{"partial segment", blk.TypeWriteZeroes, nil, []vt.Buf{hdr, {Addr: segAddr, Len: 15}, status}, blk.StatusIOErr},
		{"segment and a half", blk.TypeDiscard, nil, []vt.Buf{hdr, {Addr: segAddr, Len: 24}, status}, blk.StatusIOErr},
		{"too many segments", blk.TypeDiscard, nil, []vt.Buf{hdr, {Addr: segAddr, Len: uint32(16 * huge)}, status}, blk.StatusIOErr},
		{"huge payload", blk.TypeWriteZeroes, nil, []vt.Buf{hdr, {Addr: segAddr, Len: 1 << 16}, status}, blk.StatusIOErr},
		{"most segments", blk.TypeDiscard, nil, []vt.Buf{hdr, {Addr: segAddr, Len: 16 * blk.DiscardSegMax}, status}, blk.StatusOK},
		{"empty segment", blk.TypeDiscard, [][3]uint64{{64, 0, 0}}, nil, blk.StatusOK},
		{"whole disk", blk.TypeWriteZeroes, [][3]uint64{{0, 64, blk.FlagUnmap}}, nil, blk.StatusOK},
		{"secure erase", 14, [][3]uint64{{0, 8, 0}}, nil, blk.StatusUnsupp},
		{"get lifetime", 10, nil, []vt.Buf{hdr, {Addr: dataAddr, Len: 8, Write: true}, status}, blk.StatusUnsupp},
	}
	zeros := make([]byte, 16*huge)
	for _, c := range cases {
		_ = r.drv.Mem.WriteAt(zeros, segAddr)
		bufs := c.bufs
		if bufs == nil {
			bufs = []vt.Buf{hdr, r.segments(c.segs...), status}
		}
		r.header(c.typ, 0)
		if st, _ := r.do(bufs...); st != c.want {
			t.Errorf("%s: status %d, want %d", c.name, st, c.want)
		}
	}
	if st, err := r.f.Stat(); err != nil || st.Size() != 64*512+100 {
		t.Fatalf("image size changed: %v %v", st.Size(), err)
	}
}

func TestReadOnlyRefusesDiscardAndWriteZeroes(t *testing.T) {
	r := newRig(t, 64, blk.Options{ReadOnly: true})
	data := bytes.Repeat([]byte{7}, 64*512)
	if _, err := r.f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if f := r.dev.Features(); f&(blk.FeatureDiscard|blk.FeatureWriteZeroes) != 0 || f&blk.FeatureRO == 0 {
		t.Fatalf("read-only features %#x", f)
	}
	for _, typ := range []uint32{blk.TypeDiscard, blk.TypeWriteZeroes} {
		r.header(typ, 0)
		if st, _ := r.do(hdr, r.segments([3]uint64{0, 8, 0}), status); st != blk.StatusIOErr {
			t.Errorf("type %d on a read-only disk: status %d", typ, st)
		}
	}
	if got := r.read(0, 64); !bytes.Equal(got, data) {
		t.Fatal("read-only disk changed")
	}
}

// TestWriteThrough: a driver that did not negotiate FLUSH gets every
// write stable before it completes (it is fdatasync'd; here only the
// statuses can be seen).
func TestWriteThrough(t *testing.T) {
	r := newRig(t, 64, blk.Options{})
	mem := vt.NewMemory(rigMemory)
	drv := vt.NewDriver(mem, 16, 0x1000)
	q, err := virtio.NewQueue(mem, drv.Config(), 0)
	if err != nil {
		t.Fatal(err)
	}
	r.dev.Reset()
	if err := r.dev.Activate(virtio.Activation{Mem: mem, Features: virtio.FeatureVersion1, Queues: []*virtio.Queue{q}, IRQ: r.irq}); err != nil {
		t.Fatal(err)
	}
	r.drv = drv
	data := r.fill(3, 5)
	r.header(blk.TypeWriteZeroes, 0)
	if st, _ := r.do(hdr, r.segments([3]uint64{4, 1, 0}), status); st != blk.StatusOK {
		t.Fatalf("write-zeroes status %d", st)
	}
	clear(data[512:1024])
	if got := r.read(3, 5); !bytes.Equal(got, data) {
		t.Fatal("content wrong")
	}
}
