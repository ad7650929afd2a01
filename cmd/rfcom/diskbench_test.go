package main

import (
	"bytes"
	"context"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// runDisk runs rfcom diskbench with open standing in for os.OpenFile (nil:
// os.OpenFile).
func runDisk(t *testing.T, open func(string, int, os.FileMode) (*os.File, error), args ...string) result {
	t.Helper()
	if open == nil {
		open = os.OpenFile
	}
	var out, errb bytes.Buffer
	e := &env{ctx: context.Background(), stdin: strings.NewReader(""), stdout: &out, stderr: &errb, openFile: open}
	code := e.main(append([]string{"diskbench"}, args...))
	return result{code, out.String(), errb.String()}
}

// scratchFile makes a file of size bytes filled with fill.
func scratchFile(t *testing.T, size int, fill byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, bytes.Repeat([]byte{fill}, size), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// diskFields parses the one RF-DISK line of out.
func diskFields(t *testing.T, out string) map[string]float64 {
	t.Helper()
	line, ok := strings.CutSuffix(out, "\n")
	if !ok || strings.Contains(line, "\n") || !strings.HasPrefix(line, "RF-DISK ") {
		t.Fatalf("output %q is not one RF-DISK line", out)
	}
	f := map[string]float64{}
	for _, kv := range strings.Fields(line)[1:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			t.Fatalf("field %q in %q", kv, line)
		}
		x, err := strconv.ParseFloat(v, 64)
		if err != nil || math.IsNaN(x) || math.IsInf(x, 0) || x < 0 {
			t.Fatalf("field %q in %q: %v", kv, line, err)
		}
		f[k] = x
	}
	return f
}

var (
	readKeys  = []string{"direct", "size_bytes", "seconds", "seq_read_mbps", "rand_read_iops", "rand_read_p50_us", "rand_read_p99_us"}
	writeKeys = []string{"seq_write_mbps", "rand_write_iops", "rand_write_p50_us", "rand_write_p99_us"}
)

// checkDiskLine checks the keys of an RF-DISK line and the figures that
// do not depend on the clock.
func checkDiskLine(t *testing.T, f map[string]float64, size int, write bool) {
	t.Helper()
	keys := readKeys
	if write {
		keys = append(keys, writeKeys...)
	}
	if len(f) != len(keys) {
		t.Errorf("fields %v, want %v", f, keys)
	}
	for _, k := range keys {
		if _, ok := f[k]; !ok {
			t.Errorf("no %s in %v", k, f)
		}
	}
	if f["size_bytes"] != float64(size) {
		t.Errorf("size_bytes=%v, want %d", f["size_bytes"], size)
	}
	// Every phase does at least one transfer.
	for _, k := range []string{"seq_read_mbps", "rand_read_iops", "seq_write_mbps", "rand_write_iops"} {
		if _, ok := f[k]; ok && f[k] <= 0 {
			t.Errorf("%s=%v", k, f[k])
		}
	}
	if f["rand_read_p99_us"] < f["rand_read_p50_us"] || f["rand_write_p99_us"] < f["rand_write_p50_us"] {
		t.Errorf("p99 under p50: %v", f)
	}
}

func TestDiskbenchUsageErrors(t *testing.T) {
	img := scratchFile(t, 2<<20, 0)
	cases := []struct {
		args []string
		want string
	}{
		{nil, "--dev PATH is required"},
		{[]string{"--dev", img, "--seconds", "0"}, "--seconds 0"},
		{[]string{"--dev", img, "--seconds", "-1"}, "--seconds -1"},
		{[]string{"--dev", img, "--seconds", "4000"}, "--seconds 4000"},
		{[]string{"--dev", img, "--seconds", "NaN"}, "--seconds NaN"},
		{[]string{"--dev", img, "--seconds", "soon"}, "invalid value"},
		{[]string{"--dev", img, "--write"}, "add --i-know-it-is-scratch"},
		{[]string{"--dev", img, "x"}, "unexpected argument"},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, "_"), func(t *testing.T) {
			r := runDisk(t, nil, c.args...)
			checkFailure(t, r, 2, c.want)
			if !strings.HasPrefix(r.stderr, "rfcom: usage: diskbench: ") {
				t.Errorf("stderr %q", r.stderr)
			}
		})
	}
	if r := runDisk(t, nil, "-h"); r.code != 0 || !strings.Contains(r.stdout, "diskbench --dev PATH") {
		t.Errorf("diskbench -h: %+v", r)
	}
}

// Reads only: the file is left as it was.
func TestDiskbenchRead(t *testing.T) {
	const size = 3<<20 + 4096 // not a multiple of the sequential block
	img := scratchFile(t, size, 0xA5)
	r := runDisk(t, nil, "--dev", img, "--seconds", "0.01")
	if r.code != 0 {
		t.Fatalf("diskbench: %+v", r)
	}
	f := diskFields(t, r.stdout)
	checkDiskLine(t, f, size, false)
	// The temporary directory may be on tmpfs: a note says so.
	if (f["direct"] == 0) != strings.Contains(r.stderr, "note: "+img+" refuses O_DIRECT") {
		t.Errorf("direct=%v, stderr %q", f["direct"], r.stderr)
	}
	b, err := os.ReadFile(img)
	if err != nil || !bytes.Equal(b, bytes.Repeat([]byte{0xA5}, size)) {
		t.Errorf("the read benchmark changed the file (%v)", err)
	}
}

// With --write the file is overwritten, from the start, never extended.
func TestDiskbenchWrite(t *testing.T) {
	const size = 2 << 20
	img := scratchFile(t, size, 0)
	r := runDisk(t, nil, "--dev", img, "--seconds", "0.01", "--write", "--i-know-it-is-scratch")
	if r.code != 0 {
		t.Fatalf("diskbench --write: %+v", r)
	}
	checkDiskLine(t, diskFields(t, r.stdout), size, true)
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != size {
		t.Errorf("file of %d bytes after the benchmark, want %d", len(b), size)
	}
	if bytes.Count(b[:seqBlock], []byte{0}) > seqBlock/2 {
		t.Error("the first sequential block was not written with data")
	}
}

// refuseOpen is an os.OpenFile that fails with errno when flag has any of
// the bits in when.
func refuseOpen(when int, errno error) func(string, int, os.FileMode) (*os.File, error) {
	return func(name string, flag int, perm os.FileMode) (*os.File, error) {
		if flag&when != 0 {
			return nil, &os.PathError{Op: "open", Path: name, Err: errno}
		}
		return os.OpenFile(name, flag, perm)
	}
}

// A file system that refuses O_DIRECT (tmpfs before Linux 6.6): the file
// is measured through the page cache, with a note and direct=0.
func TestDiskbenchWithoutODirect(t *testing.T) {
	const size = 2 << 20
	img := scratchFile(t, size, 1)
	r := runDisk(t, refuseOpen(unix.O_DIRECT, unix.EINVAL), "--dev", img, "--seconds", "0.01", "--write", "--i-know-it-is-scratch")
	if r.code != 0 {
		t.Fatalf("diskbench: %+v", r)
	}
	f := diskFields(t, r.stdout)
	checkDiskLine(t, f, size, true)
	if f["direct"] != 0 {
		t.Errorf("direct=%v without O_DIRECT", f["direct"])
	}
	if want := "rfcom: diskbench: note: " + img + " refuses O_DIRECT: measuring through the page cache, not the disk\n"; r.stderr != want {
		t.Errorf("stderr %q, want %q", r.stderr, want)
	}
}

func TestDiskbenchRefusals(t *testing.T) {
	img := scratchFile(t, 2<<20, 0)
	small := scratchFile(t, 4096, 0)
	write := []string{"--write", "--i-know-it-is-scratch", "--seconds", "0.01"}
	cases := []struct {
		name string
		open func(string, int, os.FileMode) (*os.File, error)
		args []string
		want string
	}{
		{"directory", nil, []string{"--dev", t.TempDir()}, "is not a block device or a regular file"},
		{"missing", nil, []string{"--dev", filepath.Join(t.TempDir(), "none")}, "no such file"},
		{"small", nil, []string{"--dev", small}, "is too small: 4096 bytes, need at least 1048576"},
		{"read-only device", refuseOpen(os.O_RDWR, unix.EROFS), append([]string{"--dev", img}, write...), "is not writable"},
		{"busy device", refuseOpen(os.O_RDWR, unix.EBUSY), append([]string{"--dev", img}, write...), "is in use (mounted?): refusing --write"},
		// Only EINVAL (O_DIRECT refused) is retried without O_DIRECT.
		{"open error", refuseOpen(unix.O_DIRECT, unix.EIO), []string{"--dev", img}, "input/output error"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			checkFailure(t, runDisk(t, c.open, c.args...), 1, c.want)
		})
	}
	// A file this user cannot write.
	if os.Geteuid() == 0 {
		t.Log("root writes read-only files: skipping the permission case")
		return
	}
	if err := os.Chmod(img, 0o444); err != nil {
		t.Fatal(err)
	}
	checkFailure(t, runDisk(t, nil, append([]string{"--dev", img}, write...)...), 1, "is not writable")
	if r := runDisk(t, nil, "--dev", img, "--seconds", "0.01"); r.code != 0 {
		t.Errorf("reading a read-only file: %+v", r)
	}
}

// An interrupted benchmark (SIGINT, SIGTERM) ends each phase after one
// transfer and still reports.
func TestDiskbenchInterrupted(t *testing.T) {
	const size = 2 << 20
	img := scratchFile(t, size, 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errb bytes.Buffer
	e := &env{ctx: ctx, stdin: strings.NewReader(""), stdout: &out, stderr: &errb, openFile: os.OpenFile}
	if code := e.main([]string{"diskbench", "--dev", img, "--seconds", "3600"}); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	checkDiskLine(t, diskFields(t, out.String()), size, false)
}

func TestLatencies(t *testing.T) {
	var h latencies
	if h.quantile(0.5) != 0 {
		t.Error("quantile of nothing")
	}
	// Below 128 ns the buckets are exact.
	for _, v := range []time.Duration{9, 5, 7} {
		h.add(v)
	}
	if q := h.quantile(0.5); q != 7 {
		t.Errorf("median of 5, 7, 9 ns = %v", q)
	}
	if q := h.quantile(1); q != 9 {
		t.Errorf("maximum of 5, 7, 9 ns = %v", q)
	}
	// One sample: every quantile is it (clamped to the samples' range).
	h = latencies{}
	h.add(1234567 * time.Nanosecond)
	if q := h.quantile(0.99); q != 1234567*time.Nanosecond {
		t.Errorf("p99 of one sample = %v", q)
	}
	// 1..1000 µs, shuffled order does not matter: within 1%.
	h = latencies{}
	for i := 1000; i >= 1; i-- {
		h.add(time.Duration(i) * time.Microsecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Microsecond}, {0.99, 990 * time.Microsecond}, {0.001, time.Microsecond}, {1, 1000 * time.Microsecond}} {
		got := h.quantile(c.q)
		if math.Abs(float64(got-c.want)) > 0.01*float64(c.want) {
			t.Errorf("quantile(%v) = %v, want %v within 1%%", c.q, got, c.want)
		}
	}
	if h.count != 1000 {
		t.Errorf("count %d", h.count)
	}
	// Every bucket's middle falls in it, up to the largest duration.
	for i := range latencyBuckets {
		if b := latencyBucket(latencyBucketMid(i)); b != i {
			t.Fatalf("bucket %d: its middle %d falls in bucket %d", i, latencyBucketMid(i), b)
		}
	}
	if b := latencyBucket(math.MaxInt64); b != latencyBuckets-1 {
		t.Errorf("bucket of the largest duration = %d of %d", b, latencyBuckets)
	}
	h.add(-5) // a clock step backwards is a 0
	if h.min != 0 {
		t.Errorf("min %v after a negative sample", h.min)
	}
}

// loopDevice attaches a loop device to a new file of size bytes and
// returns its path; it skips the test without root or losetup.
func loopDevice(t *testing.T, size int, readOnly bool) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop devices need root")
	}
	losetup, err := exec.LookPath("losetup")
	if err != nil {
		t.Skip("no losetup")
	}
	img := scratchFile(t, size, 0)
	args := []string{"--find", "--show"}
	if readOnly {
		args = append(args, "--read-only")
	}
	out, err := exec.Command(losetup, append(args, img)...).Output()
	if err != nil {
		t.Skipf("losetup: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if err := exec.Command(losetup, "--detach", dev).Run(); err != nil {
			t.Errorf("losetup --detach %s: %v", dev, err)
		}
	})
	return dev
}

// On block devices (root only): a read-only device and one held
// exclusively (as a mount holds it) are refused --write; reads work.
func TestDiskbenchBlockDevice(t *testing.T) {
	const size = 4 << 20
	write := []string{"--write", "--i-know-it-is-scratch", "--seconds", "0.01"}
	ro := loopDevice(t, size, true)
	checkFailure(t, runDisk(t, nil, append([]string{"--dev", ro}, write...)...), 1, "is not writable (read-only device)")
	r := runDisk(t, nil, "--dev", ro, "--seconds", "0.01")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("reading %s: %+v", ro, r)
	}
	f := diskFields(t, r.stdout)
	checkDiskLine(t, f, size, false)
	if f["direct"] != 1 {
		t.Errorf("direct=%v on a block device", f["direct"])
	}

	rw := loopDevice(t, size, false)
	if r := runDisk(t, nil, append([]string{"--dev", rw}, write...)...); r.code != 0 {
		t.Fatalf("writing %s: %+v", rw, r)
	}
	held, err := os.OpenFile(rw, os.O_RDONLY|unix.O_EXCL, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	checkFailure(t, runDisk(t, nil, append([]string{"--dev", rw}, write...)...), 1, "is in use (mounted?)")
}
