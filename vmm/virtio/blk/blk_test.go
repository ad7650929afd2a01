package blk_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

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
	// fillAddr and readAddr hold up to 1 MiB of data each.
	fillAddr  = 0x100000
	readAddr  = 0x200000
	rigMemory = 0x300000
)

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
	if got := r.read(3, 5); !bytes.Equal(got, data) {
		t.Fatal("content wrong")
	}
}
