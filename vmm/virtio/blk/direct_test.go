package blk

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestAlignedBuffer(t *testing.T) {
	for _, align := range []int{512, 4096, 65536} {
		for _, size := range []int{512, 4096, 3 * 65536} {
			b := alignedBuffer(size, align)
			if len(b) != size || cap(b) != size || bufferAddress(b)%uintptr(align) != 0 {
				t.Fatalf("alignedBuffer(%d, %d): len %d cap %d address %#x", size, align, len(b), cap(b), bufferAddress(b))
			}
		}
	}
}

// TestAlignedIOReadModifyWrite drives alignedIO with a 4 KiB alignment
// (more than the 512 bytes most file systems need, so the
// read-modify-write path runs) and a bounce buffer of three blocks (so
// transfers are split) through random reads and writes at any byte
// offset, length and scatter layout, against a model of the disk. The
// file is opened with O_DIRECT where its file system takes it.
func TestAlignedIOReadModifyWrite(t *testing.T) {
	const align, size = 4096, 64 << 10
	path := filepath.Join(t.TempDir(), "disk.img")
	model := make([]byte, size)
	for i := range model {
		model[i] = byte(i * 31)
	}
	if err := os.WriteFile(path, model, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Logf("no O_DIRECT here (%v): checking the arithmetic on a buffered file", err)
		f, err = os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
	}
	defer f.Close()
	a := &alignedIO{f: f, align: align, bounce: alignedBuffer(3*align, align)}
	rng := rand.New(rand.NewPCG(1, 2))
	scatter := func(n int) [][]byte {
		var bufs [][]byte
		for n > 0 {
			m := min(n, 1+rng.IntN(9000))
			bufs = append(bufs, make([]byte, m))
			n -= m
		}
		return bufs
	}
	for i := range 400 {
		off := rng.IntN(size)
		n := rng.IntN(min(size-off, 5*align) + 1)
		if i%4 == 0 { // sector-aligned, as the device uses it
			off &^= 511
			n &^= 511
		}
		bufs := scatter(n)
		if rng.IntN(2) == 0 {
			for _, b := range bufs {
				for j := range b {
					b[j] = byte(rng.Uint32())
				}
			}
			if err := a.write(bufs, int64(off)); err != nil {
				t.Fatalf("write %d at %d: %v", n, off, err)
			}
			copy(model[off:], bytes.Join(bufs, nil))
		} else {
			if err := a.read(bufs, int64(off)); err != nil {
				t.Fatalf("read %d at %d: %v", n, off, err)
			}
			if got := bytes.Join(bufs, nil); !bytes.Equal(got, model[off:off+n]) {
				t.Fatalf("read %d at %d differs from the model", n, off)
			}
		}
	}
	whole := make([]byte, size)
	if err := a.read([][]byte{whole}, 0); err != nil || !bytes.Equal(whole, model) {
		t.Fatalf("final content differs: %v", err)
	}
	if st, err := f.Stat(); err != nil || st.Size() != size {
		t.Fatalf("file size changed: %v", err)
	}
}
