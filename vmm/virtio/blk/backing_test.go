package blk_test

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"rainforest/vmm/virtio/blk"
	vt "rainforest/vmm/virtio/virtiotest"
)

func TestCheckPath(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(file, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, ok := range []string{file, link} {
		if err := blk.CheckPath(ok); err != nil {
			t.Errorf("CheckPath(%s): %v", ok, err)
		}
	}
	for path, what := range map[string]string{
		dir:         "a directory",
		"/dev/null": "a character device",
		fifo:        "a FIFO",
		sock:        "a socket",
	} {
		err := blk.CheckPath(path)
		if !errors.Is(err, blk.ErrFileType) || !strings.Contains(err.Error(), path+" is "+what) {
			t.Errorf("CheckPath(%s) = %v, want %q and ErrFileType", path, err, what)
		}
		// Open refuses them too, before opening (a FIFO would block).
		if _, err := blk.Open(path, blk.Options{}); !errors.Is(err, blk.ErrFileType) {
			t.Errorf("Open(%s) = %v", path, err)
		}
	}
	if err := blk.CheckPath(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if st, err := os.Stat("/dev/loop0"); err == nil && st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0 {
		if err := blk.CheckPath("/dev/loop0"); err != nil {
			t.Errorf("block device refused: %v", err)
		}
	}
}

func TestOpenRegularFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, 8*512+7), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := blk.Open(path, blk.Options{ID: "x"})
	if err != nil {
		t.Fatal(err)
	}
	info := d.Info()
	if info.Kind != blk.KindFile || info.Size != 8*512 || info.LogicalBlockSize != 512 || info.ReadOnly || info.Direct || d.Capacity() != 8 {
		t.Fatalf("info %+v capacity %d", info, d.Capacity())
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	// A file opened read-only is served read-only.
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err = blk.New(f, blk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !d.Info().ReadOnly || d.Features()&blk.FeatureRO == 0 {
		t.Fatalf("O_RDONLY file served writable: %+v", d.Info())
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Stat(); err != nil {
		t.Fatal("Close of a New device closed the caller's file")
	}
	// Direct asked for on a file opened without O_DIRECT.
	if _, err := blk.New(f, blk.Options{Direct: true}); err == nil {
		t.Fatal("Direct without O_DIRECT accepted")
	}
}

// directDir returns a directory on a file system that takes O_DIRECT:
// the temporary directory or, where that refuses (tmpfs on older
// kernels), one made next to the test.
func directDir(t *testing.T) string {
	t.Helper()
	for _, dir := range []string{t.TempDir(), ""} {
		if dir == "" {
			d, err := os.MkdirTemp(".", ".direct-test-")
			if err != nil {
				t.Skip("no directory for a direct I/O test:", err)
			}
			t.Cleanup(func() { os.RemoveAll(d) })
			dir = d
		}
		probe := filepath.Join(dir, "probe")
		f, err := os.OpenFile(probe, os.O_CREATE|os.O_RDWR|unix.O_DIRECT, 0o600)
		if err == nil {
			f.Close()
			os.Remove(probe)
			return dir
		}
	}
	t.Skip("no file system here takes O_DIRECT")
	return ""
}

// TestDirect serves an image with O_DIRECT: reads and writes of any
// sector-aligned size and buffer layout go through the aligned bounce
// buffer.
func TestDirect(t *testing.T) {
	r := newRigIn(t, directDir(t), 1<<20, blk.Options{Direct: true})
	info := r.dev.Info()
	if !info.Direct || info.DirectAlign < 512 || info.DirectAlign&(info.DirectAlign-1) != 0 {
		t.Fatalf("info %+v", info)
	}
	t.Logf("direct I/O alignment %d", info.DirectAlign)
	payload := make([]byte, 5*512)
	for i := range payload {
		payload[i] = byte(i*7 + i/512)
	}
	_ = r.drv.Mem.WriteAt(payload, dataAddr+3) // an odd guest address
	r.header(blk.TypeOut, 7)                   // not aligned to 4 KiB
	if st, _ := r.do(hdr, vt.Buf{Addr: dataAddr + 3, Len: 1000}, vt.Buf{Addr: dataAddr + 1003, Len: 5*512 - 1000}, status); st != blk.StatusOK {
		t.Fatalf("write status %d", st)
	}
	onDisk := make([]byte, len(payload))
	if _, err := r.f.ReadAt(onDisk, 7*512); err != nil || !bytes.Equal(onDisk, payload) {
		t.Fatalf("file content wrong: %v", err)
	}
	if got := r.read(7, 5); !bytes.Equal(got, payload) {
		t.Fatal("read back differs")
	}
	if got := r.read(6, 1); !bytes.Equal(got, make([]byte, 512)) {
		t.Fatal("neighbouring sector changed")
	}
	r.header(blk.TypeWriteZeroes, 0)
	if st, _ := r.do(hdr, r.segments([3]uint64{8, 2, 0}), status); st != blk.StatusOK {
		t.Fatalf("write-zeroes status %d", st)
	}
	clear(payload[512:1536])
	if got := r.read(7, 5); !bytes.Equal(got, payload) {
		t.Fatal("write-zeroes with O_DIRECT: content wrong")
	}
	// A size that is not a multiple of the alignment is refused.
	odd := filepath.Join(filepath.Dir(r.f.Name()), "odd.img")
	if err := os.WriteFile(odd, make([]byte, 3*512), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := blk.Open(odd, blk.Options{Direct: true}); info.DirectAlign > 512 && !errors.Is(err, blk.ErrDirectSize) {
		t.Fatalf("odd size with alignment %d: %v", info.DirectAlign, err)
	}
}

// TestDirectRefused: a file system without O_DIRECT (ramfs, and tmpfs
// before Linux 6.6) makes Open fail at once with a clear error.
func TestDirectRefused(t *testing.T) {
	var dirs []string
	if os.Geteuid() == 0 {
		mnt := t.TempDir()
		if err := unix.Mount("ramfs", mnt, "ramfs", 0, ""); err == nil {
			t.Cleanup(func() {
				if err := unix.Unmount(mnt, 0); err != nil {
					t.Error(err)
				}
			})
			dirs = append(dirs, mnt)
		} else {
			t.Logf("mount ramfs: %v", err)
		}
	}
	if d, err := os.MkdirTemp("/dev/shm", "blk-test-"); err == nil {
		t.Cleanup(func() { os.RemoveAll(d) })
		dirs = append(dirs, d)
	}
	tested := false
	for _, dir := range dirs {
		path := filepath.Join(dir, "disk.img")
		if err := os.WriteFile(path, make([]byte, 1<<16), 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
		if err == nil {
			f.Close()
			t.Logf("%s takes O_DIRECT", dir)
			continue
		}
		_, err = blk.Open(path, blk.Options{Direct: true})
		if !errors.Is(err, blk.ErrDirectUnsupported) || !strings.Contains(err.Error(), path) {
			t.Fatalf("Open with Direct in %s: %v", dir, err)
		}
		t.Log(err)
		tested = true
		// Without Direct it opens; with no fallocate there, discard is
		// not offered and write-zeroes writes zeroes.
		r := openRig(t, path, blk.Options{})
		t.Logf("without Direct: %+v", r.dev.Info())
		if r.dev.Info().Discard {
			continue
		}
		r.header(blk.TypeDiscard, 0)
		if st, _ := r.do(hdr, r.segments([3]uint64{0, 8, 0}), status); st != blk.StatusUnsupp {
			t.Fatalf("discard without support: status %d", st)
		}
		r.header(blk.TypeWriteZeroes, 0)
		if st, _ := r.do(hdr, r.segments([3]uint64{0, 8, blk.FlagUnmap}), status); st != blk.StatusOK {
			t.Fatalf("write-zeroes by writing: status %d", st)
		}
	}
	if !tested {
		t.Skip("no file system refusing O_DIRECT here (ramfs needs root; tmpfs takes O_DIRECT since Linux 6.6)")
	}
}

// A file adopted by descriptor (its name is no path: a jailed VMM's disk)
// has its discard support probed on its own file system, as Open does by
// path, and the probe changes neither its size nor its data.
func TestAdoptProbesOwnFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	data := bytes.Repeat([]byte{0xa5}, 1<<20)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	opened, err := blk.Open(path, blk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := opened.Info().Discard
	opened.Close()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	// Named as received over a socket: no directory to probe in.
	adopted, err := blk.Adopt(os.NewFile(uintptr(fd), "vmmctl"), blk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer adopted.Close()
	t.Logf("discard %v", want)
	if got := adopted.Info().Discard; got != want {
		t.Errorf("adopted file offers discard %v, opened by path %v", got, want)
	}
	after, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(after, data) {
		t.Errorf("probe changed the image: %d bytes, %v", len(after), err)
	}
}

func TestAdoptRefusesFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(fifo, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := blk.Adopt(f, blk.Options{}); !errors.Is(err, blk.ErrFileType) {
		t.Errorf("Adopt(FIFO) = %v", err)
	}
}
