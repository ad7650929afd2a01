package blk_test

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"rainforest/vmm/virtio/blk"
	vt "rainforest/vmm/virtio/virtiotest"
)

// loopDevice attaches an image of size bytes (made in a temporary
// directory) to a free loop device with losetup's extra args and returns
// the device and the image; it is detached when the test ends. The test
// is skipped when not run as root or without losetup.
func loopDevice(t *testing.T, size int64, args ...string) (dev string, image *os.File) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop-device tests need root (losetup)")
	}
	losetup, err := exec.LookPath("losetup")
	if err != nil {
		t.Skip("loop-device tests need losetup (util-linux):", err)
	}
	path := filepath.Join(t.TempDir(), "loop.img")
	image, err = os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { image.Close() })
	if err := image.Truncate(size); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(losetup, append(args, "--find", "--show", path)...).CombinedOutput()
	if err != nil {
		t.Skipf("losetup %s: %v: %s (no loop device support here?)", strings.Join(args, " "), err, out)
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command(losetup, "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	return dev, image
}

// readDevice reads n bytes at off from dev through a separate descriptor.
func readDevice(t *testing.T, dev string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLoopDevice(t *testing.T) {
	const size = 8 << 20
	dev, image := loopDevice(t, size)
	r := openRig(t, dev, blk.Options{ID: "loop"})
	info := r.dev.Info()
	t.Logf("%s: %+v", dev, info)
	if info.Kind != blk.KindBlockDevice || info.Size != size || r.dev.Capacity() != size/512 || info.LogicalBlockSize != 512 || info.ReadOnly {
		t.Fatalf("info %+v capacity %d", info, r.dev.Capacity())
	}
	var c [60]byte
	r.dev.ReadConfig(0, c[:])
	if binary.LittleEndian.Uint64(c[0:]) != size/512 || binary.LittleEndian.Uint32(c[20:]) != 512 {
		t.Fatalf("config % x", c)
	}

	data := r.fill(2048, 2048) // 1 MiB at 1 MiB, flushed
	if got := readDevice(t, dev, 2048*512, len(data)); !bytes.Equal(got, data) {
		t.Fatal("device content differs from what was written")
	}

	if r.dev.Features()&blk.FeatureWriteZeroes != 0 {
		r.header(blk.TypeWriteZeroes, 0)
		if st, _ := r.do(hdr, r.segments([3]uint64{2048, 8, 0}, [3]uint64{2100, 3, 0}), status); st != blk.StatusOK {
			t.Fatalf("write-zeroes status %d", st)
		}
		want := bytes.Clone(data)
		clear(want[:8*512])
		clear(want[52*512 : 55*512])
		if got := r.read(2048, 2048); !bytes.Equal(got, want) {
			t.Fatal("write-zeroes content wrong")
		}
		// Linux's BLKZEROOUT never unmaps.
		if c[56] != 0 {
			t.Fatal("write_zeroes_may_unmap set for a block device")
		}
	} else {
		t.Log("the loop device offers no write-zeroes here")
	}

	if r.dev.Features()&blk.FeatureDiscard == 0 {
		t.Skip("the loop device offers no discard here")
	}
	if binary.LittleEndian.Uint32(c[36:]) == 0 || binary.LittleEndian.Uint32(c[40:]) != blk.DiscardSegMax {
		t.Fatalf("discard config % x", c[36:48])
	}
	var before, after os.FileInfo
	before, _ = image.Stat()
	r.header(blk.TypeDiscard, 0)
	if st, _ := r.do(hdr, r.segments([3]uint64{2048, 2048, 0}), status); st != blk.StatusOK {
		t.Fatalf("discard status %d", st)
	}
	// The loop driver punches a hole in its image: zeroes, fewer blocks.
	if got := r.read(2048, 2048); !bytes.Equal(got, make([]byte, len(got))) {
		t.Fatal("discarded range does not read back as zeroes")
	}
	after, _ = image.Stat()
	b0, b1 := blocks(before), blocks(after)
	t.Logf("image: %d bytes allocated before the discard, %d after", b0, b1)
	if b1 >= b0 {
		t.Fatal("discard freed nothing in the image")
	}
	// Discard outside the device, or misaligned to nothing: refused.
	r.header(blk.TypeDiscard, 0)
	if st, _ := r.do(hdr, r.segments([3]uint64{size/512 - 1, 2, 0}), status); st != blk.StatusIOErr {
		t.Fatalf("discard past the end: status %d", st)
	}
}

// blocks returns the bytes allocated to a file.
func blocks(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return 0
}

func TestLoopDeviceReadOnly(t *testing.T) {
	dev, _ := loopDevice(t, 1<<20, "--read-only")
	r := openRig(t, dev, blk.Options{}) // not asked: the device says so
	if !r.dev.Info().ReadOnly || r.dev.Features()&blk.FeatureRO == 0 || r.dev.Features()&(blk.FeatureDiscard|blk.FeatureWriteZeroes) != 0 {
		t.Fatalf("read-only loop device: features %#x info %+v", r.dev.Features(), r.dev.Info())
	}
	r.header(blk.TypeOut, 0)
	if st, _ := r.do(hdr, vt.Buf{Addr: dataAddr, Len: 512}, status); st != blk.StatusIOErr {
		t.Fatalf("write status %d", st)
	}
	for _, typ := range []uint32{blk.TypeDiscard, blk.TypeWriteZeroes} {
		r.header(typ, 0)
		if st, _ := r.do(hdr, r.segments([3]uint64{0, 8, 0}), status); st != blk.StatusIOErr {
			t.Fatalf("type %d status %d", typ, st)
		}
	}
	r.read(0, 8)
	r.header(blk.TypeFlush, 0)
	if st, _ := r.do(hdr, status); st != blk.StatusOK {
		t.Fatalf("flush status %d", st)
	}
}

// TestLoopDevice4K: a device with 4 KiB logical blocks advertises
// blk_size 4096 and refuses requests that are not in whole blocks, with
// and without direct I/O.
func TestLoopDevice4K(t *testing.T) {
	dev, _ := loopDevice(t, 4<<20, "--sector-size", "4096")
	for _, direct := range []bool{false, true} {
		r := openRig(t, dev, blk.Options{Direct: direct})
		info := r.dev.Info()
		if info.LogicalBlockSize != 4096 || info.Direct != direct || (direct && info.DirectAlign != 4096) {
			t.Fatalf("direct %v: info %+v", direct, info)
		}
		var c [4]byte
		r.dev.ReadConfig(20, c[:])
		if binary.LittleEndian.Uint32(c[:]) != 4096 {
			t.Fatalf("blk_size % x", c)
		}
		data := r.fill(8, 16)
		if got := r.read(8, 16); !bytes.Equal(got, data) {
			t.Fatalf("direct %v: read back differs", direct)
		}
		for _, bad := range []struct {
			typ    uint32
			sector uint64
			bufs   []vt.Buf
		}{
			{blk.TypeIn, 1, []vt.Buf{hdr, {Addr: dataAddr, Len: 4096, Write: true}, status}},
			{blk.TypeIn, 0, []vt.Buf{hdr, {Addr: dataAddr, Len: 512, Write: true}, status}},
			{blk.TypeOut, 4, []vt.Buf{hdr, {Addr: dataAddr, Len: 4096}, status}},
			{blk.TypeDiscard, 0, []vt.Buf{hdr, r.segments([3]uint64{8, 4, 0}), status}},
			{blk.TypeWriteZeroes, 0, []vt.Buf{hdr, r.segments([3]uint64{4, 8, 0}), status}},
		} {
			r.header(bad.typ, bad.sector)
			if st, _ := r.do(bad.bufs...); st != blk.StatusIOErr {
				t.Errorf("direct %v: misaligned type %d at %d: status %d", direct, bad.typ, bad.sector, st)
			}
		}
		if r.dev.Features()&blk.FeatureWriteZeroes != 0 {
			r.header(blk.TypeWriteZeroes, 0)
			if st, _ := r.do(hdr, r.segments([3]uint64{8, 8, 0}), status); st != blk.StatusOK {
				t.Fatalf("aligned write-zeroes status %d", st)
			}
			clear(data[:4096])
			if got := r.read(8, 16); !bytes.Equal(got, data) {
				t.Fatal("write-zeroes content wrong")
			}
		}
		if err := r.dev.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLoopDeviceDirect serves a loop device with O_DIRECT: guest buffers
// at odd addresses and split anywhere go through the aligned bounce
// buffer.
func TestLoopDeviceDirect(t *testing.T) {
	dev, _ := loopDevice(t, 2<<20)
	r := openRig(t, dev, blk.Options{Direct: true})
	if info := r.dev.Info(); !info.Direct || info.DirectAlign != 512 {
		t.Fatalf("info %+v", info)
	}
	payload := make([]byte, 3*512)
	for i := range payload {
		payload[i] = byte(i * 13)
	}
	_ = r.drv.Mem.WriteAt(payload, dataAddr+1)
	r.header(blk.TypeOut, 101)
	if st, _ := r.do(hdr, vt.Buf{Addr: dataAddr + 1, Len: 700}, vt.Buf{Addr: dataAddr + 701, Len: 836}, status); st != blk.StatusOK {
		t.Fatalf("write status %d", st)
	}
	r.header(blk.TypeFlush, 0)
	if st, _ := r.do(hdr, status); st != blk.StatusOK {
		t.Fatalf("flush status %d", st)
	}
	if got := readDevice(t, dev, 101*512, len(payload)); !bytes.Equal(got, payload) {
		t.Fatal("device content differs")
	}
	if got := r.read(101, 3); !bytes.Equal(got, payload) {
		t.Fatal("read back differs")
	}
}
