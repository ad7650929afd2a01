package blk_test

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"rainforest/vmm/virtio"
	"rainforest/vmm/virtio/blk"
	vt "rainforest/vmm/virtio/virtiotest"
)

// fuzzDisk is one device the request fuzzer drives.
type fuzzDisk struct {
	dev   *blk.Device
	image string
	size  int64
	// content is the image's content for a read-only disk (it must not
	// change), nil otherwise.
	content []byte
}

// FuzzRequest posts one request of any type, sector, payload and buffer
// layout to a device: over a writable image, a read-only one and, where
// the file system takes O_DIRECT, a direct one. Whatever the guest sends,
// the request completes with a valid status, nothing panics, the image
// never changes size and a read-only image never changes.
func FuzzRequest(f *testing.F) {
	seg := func(sector uint64, n, flags uint32) []byte {
		b := make([]byte, 16)
		binary.LittleEndian.PutUint64(b, sector)
		binary.LittleEndian.PutUint32(b[8:], n)
		binary.LittleEndian.PutUint32(b[12:], flags)
		return b
	}
	f.Add(uint32(blk.TypeDiscard), uint64(0), seg(8, 16, 0), []byte{16, 0, 0}, uint8(0))
	f.Add(uint32(blk.TypeWriteZeroes), uint64(0), append(seg(0, 8, 1), seg(60, 4, 0)...), []byte{7, 0, 0}, uint8(2))
	f.Add(uint32(blk.TypeOut), uint64(3), bytes.Repeat([]byte{0xEE}, 1024), []byte{100, 0, 0}, uint8(6))
	f.Add(uint32(blk.TypeIn), uint64(63), []byte{}, []byte{0, 2, 4}, uint8(1))

	const sectors = 64
	size := int64(sectors*blk.SectorSize + 100)
	image := func(dir string, content []byte) string {
		path := filepath.Join(dir, "disk.img")
		if err := os.WriteFile(path, content, 0o600); err != nil {
			f.Fatal(err)
		}
		return path
	}
	content := bytes.Repeat([]byte("RainForest disk "), int(size)/16+1)[:size]
	var disks []fuzzDisk
	add := func(path string, opts blk.Options, fixed []byte) {
		dev, err := blk.Open(path, opts)
		if err != nil {
			f.Fatal(err)
		}
		f.Cleanup(func() { dev.Close() })
		disks = append(disks, fuzzDisk{dev: dev, image: path, size: size, content: fixed})
	}
	add(image(f.TempDir(), content), blk.Options{ID: "rw"}, nil)
	add(image(f.TempDir(), content), blk.Options{ReadOnly: true}, content)
	direct := make([]byte, sectors*blk.SectorSize) // a multiple of any alignment up to 32 KiB
	if p := image(f.TempDir(), direct); probeDirect(p) {
		add(p, blk.Options{Direct: true}, nil)
		disks[len(disks)-1].size = int64(len(direct))
	}

	const (
		hdrAt     = 0x10000
		payloadAt = 0x11000
		dataAt    = 0x20000
		statusAt  = 0x30000
	)
	f.Fuzz(func(t *testing.T, typ uint32, sector uint64, payload, layout []byte, opts uint8) {
		d := disks[int(opts)%len(disks)]
		mem := vt.NewMemory(0x40000)
		drv := vt.NewDriver(mem, 16, 0x1000)
		q, err := virtio.NewQueue(mem, drv.Config(), 0)
		if err != nil {
			t.Fatal(err)
		}
		features := virtio.FeatureVersion1
		if opts&0x10 != 0 {
			features |= blk.FeatureFlush
		}
		d.dev.Reset()
		irq := &vt.IRQ{}
		if err := d.dev.Activate(virtio.Activation{Mem: mem, Features: features, Queues: []*virtio.Queue{q}, IRQ: irq}); err != nil {
			t.Fatal(err)
		}
		var h [16]byte
		binary.LittleEndian.PutUint32(h[0:], typ)
		binary.LittleEndian.PutUint64(h[8:], sector)
		_ = mem.WriteAt(h[:], hdrAt)
		payload = payload[:min(len(payload), 0x8000)]
		_ = mem.WriteAt(payload, payloadAt)
		_ = mem.WriteAt([]byte{0xFF}, statusAt)

		// layout: header length, writable data length (in 64-byte
		// units), then the lengths of the payload's descriptors.
		hdrLen := uint32(16)
		if len(layout) > 0 && layout[0] < 16 {
			hdrLen = uint32(layout[0])
		}
		var dataLen uint32
		if len(layout) > 1 {
			dataLen = uint32(layout[1]) * 64
		}
		bufs := []vt.Buf{{Addr: hdrAt, Len: hdrLen}}
		rest, at := uint32(len(payload)), uint64(payloadAt)
		for i := 2; rest > 0 && len(bufs) < 10; i++ {
			n := rest
			if i < len(layout) && layout[i] != 0 && len(bufs) < 9 {
				n = min(rest, uint32(layout[i]))
			}
			bufs = append(bufs, vt.Buf{Addr: at, Len: n})
			at, rest = at+uint64(n), rest-n
		}
		if dataLen > 0 {
			bufs = append(bufs, vt.Buf{Addr: dataAt, Len: dataLen, Write: true})
		}
		withStatus := opts&0x20 == 0
		if withStatus {
			bufs = append(bufs, vt.Buf{Addr: statusAt, Len: 1, Write: true})
		}
		drv.AddChain(bufs...)
		d.dev.QueueNotify(0)
		_, n, ok := drv.TakeUsed()
		if !ok {
			t.Fatal("request not completed")
		}
		writable := dataLen
		if withStatus {
			writable++
		}
		if n > writable {
			t.Fatalf("used length %d, writable %d", n, writable)
		}
		if writable > 0 {
			st, _ := mem.Slice(uint64(dataAt+dataLen-1), 1)
			if withStatus {
				st, _ = mem.Slice(statusAt, 1)
			}
			if st[0] > blk.StatusUnsupp {
				t.Fatalf("status %d", st[0])
			}
		}
		if irq.NeedsResetCount() != 0 {
			t.Fatal("a well-formed chain broke the queue")
		}
		fi, err := os.Stat(d.image)
		if err != nil || fi.Size() != d.size {
			t.Fatalf("image size %d, want %d (%v)", fi.Size(), d.size, err)
		}
		if d.content != nil {
			got, err := os.ReadFile(d.image)
			if err != nil || !bytes.Equal(got, d.content) {
				t.Fatalf("read-only image changed (%v)", err)
			}
		}
	})
}

// probeDirect reports whether path can be opened with O_DIRECT.
func probeDirect(path string) bool {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}
