package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// rfcom diskbench measures a disk as fio would with direct I/O at queue
// depth 1: sequential 1 MiB transfers (MB/s) and random 4 KiB transfers
// (IOPS, median and 99th percentile latency), reads, and with --write
// writes. Buffers are anonymous mappings (page-aligned, as O_DIRECT needs)
// and every transfer is aligned to its size.

const (
	seqBlock  = 1 << 20
	randBlock = 4096
	// maxDiskSeconds bounds --seconds.
	maxDiskSeconds = 3600
	// scratchFlag is the flag that --write needs.
	scratchFlag = "i-know-it-is-scratch"
)

var (
	// errNotWritable means --write was asked of a read-only device.
	errNotWritable = errors.New("not writable")
	// errDiskTooSmall means the target cannot hold one sequential block.
	errDiskTooSmall = errors.New("too small")
)

func (e *env) diskbench(args []string) error {
	fs := newFlags("diskbench")
	path := fs.String("dev", "", "block device (or file) to measure, e.g. /dev/vda")
	seconds := fs.Float64("seconds", 5, "seconds per measurement")
	write := fs.Bool("write", false, "measure writes too: overwrites the device (needs --"+scratchFlag+")")
	scratch := fs.Bool(scratchFlag, false, "confirm that --write may destroy what the device holds")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if err := noArgs(pos); err != nil {
		return err
	}
	switch {
	case *path == "":
		return usagef("--dev PATH is required")
	case !(*seconds > 0 && *seconds <= maxDiskSeconds):
		return usagef("--seconds %v outside (0, %d]", *seconds, maxDiskSeconds)
	case *write && !*scratch:
		return usagef("--write overwrites %s: add --%s if it is a scratch disk", *path, scratchFlag)
	}
	d, err := openDisk(*path, *write, e.openFile)
	if err != nil {
		return err
	}
	defer d.f.Close()
	if !d.direct {
		fmt.Fprintf(e.stderr, "rfcom: diskbench: note: %s refuses O_DIRECT: measuring through the page cache, not the disk\n", *path)
	}
	ctx, cancel := e.signalContext()
	defer cancel()
	r, err := d.run(ctx, time.Duration(*seconds*float64(time.Second)), *write)
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, r.line())
	return nil
}

// disk is an open benchmark target.
type disk struct {
	f      *os.File
	size   int64 // bytes
	direct bool  // opened with O_DIRECT
}

// openDisk opens path for the benchmark: with O_DIRECT, falling back to
// the page cache for a regular file on a file system that refuses
// O_DIRECT (tmpfs); read-write and, for a block device, exclusively (a
// mounted device is refused) when write is set. open is os.OpenFile but
// in tests.
func openDisk(path string, write bool, open func(string, int, os.FileMode) (*os.File, error)) (*disk, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	mode := st.Mode()
	block := mode&os.ModeDevice != 0 && mode&os.ModeCharDevice == 0
	if !block && !mode.IsRegular() {
		return nil, fmt.Errorf("%s is not a block device or a regular file", path)
	}
	flags := os.O_RDONLY
	if write {
		flags = os.O_RDWR
		if block {
			flags |= unix.O_EXCL
		}
	}
	d := &disk{direct: true}
	d.f, err = open(path, flags|unix.O_DIRECT, 0)
	if errors.Is(err, unix.EINVAL) && !block {
		d.direct = false
		d.f, err = open(path, flags, 0)
	}
	switch {
	case write && (errors.Is(err, unix.EROFS) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM)):
		return nil, fmt.Errorf("%s is %w (%w): refusing --write", path, errNotWritable, err)
	case write && errors.Is(err, unix.EBUSY):
		return nil, fmt.Errorf("%s is in use (mounted?): refusing --write: %w", path, err)
	case err != nil:
		return nil, err
	}
	// Linux opens a read-only block device for writing and fails the
	// writes: ask it.
	if write && block {
		ro, err := unix.IoctlGetInt(int(d.f.Fd()), unix.BLKROGET)
		if err != nil || ro != 0 {
			d.f.Close()
			if err != nil {
				return nil, fmt.Errorf("%s: BLKROGET: %w", path, err)
			}
			return nil, fmt.Errorf("%s is %w (read-only device): refusing --write", path, errNotWritable)
		}
	}
	if d.size, err = d.f.Seek(0, io.SeekEnd); err != nil {
		d.f.Close()
		return nil, fmt.Errorf("size of %s: %w", path, err)
	}
	if d.size < seqBlock {
		d.f.Close()
		return nil, fmt.Errorf("%s is %w: %d bytes, need at least %d", path, errDiskTooSmall, d.size, seqBlock)
	}
	return d, nil
}

// diskResult is what diskbench measured; the write figures are zero
// without --write.
type diskResult struct {
	direct              bool
	size                int64
	seconds             float64
	seqRead, seqWrite   float64 // MB/s (10^6 bytes)
	randRead, randWrite randStats
}

// randStats are the figures of a random 4 KiB phase.
type randStats struct {
	iops     float64
	p50, p99 time.Duration
}

// line formats r as one RF-DISK line of key=value pairs.
func (r diskResult) line() string {
	var b strings.Builder
	direct := 0
	if r.direct {
		direct = 1
	}
	fmt.Fprintf(&b, "RF-DISK direct=%d size_bytes=%d seconds=%g", direct, r.size, r.seconds)
	fmt.Fprintf(&b, " seq_read_mbps=%.1f rand_read_iops=%.0f rand_read_p50_us=%.1f rand_read_p99_us=%.1f",
		r.seqRead, r.randRead.iops, micros(r.randRead.p50), micros(r.randRead.p99))
	if r.seqWrite > 0 {
		fmt.Fprintf(&b, " seq_write_mbps=%.1f rand_write_iops=%.0f rand_write_p50_us=%.1f rand_write_p99_us=%.1f",
			r.seqWrite, r.randWrite.iops, micros(r.randWrite.p50), micros(r.randWrite.p99))
	}
	return b.String()
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// run measures d: each phase for dur (at least one transfer), reads
// first, then writes if write is set.
func (d *disk) run(ctx context.Context, dur time.Duration, write bool) (diskResult, error) {
	buf, err := unix.Mmap(-1, 0, seqBlock, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return diskResult{}, fmt.Errorf("buffer: %w", err)
	}
	defer unix.Munmap(buf)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(d.size)))
	r := diskResult{direct: d.direct, size: d.size, seconds: dur.Seconds()}
	if r.seqRead, err = d.sequential(ctx, dur, buf, false); err != nil {
		return r, fmt.Errorf("sequential read: %w", err)
	}
	if r.randRead, err = d.random(ctx, dur, buf[:randBlock], rng, false); err != nil {
		return r, fmt.Errorf("random read: %w", err)
	}
	if !write {
		return r, nil
	}
	// Data that neither compresses nor deduplicates to nothing.
	for i := 0; i+8 <= len(buf); i += 8 {
		v := rng.Uint64()
		for k := range 8 {
			buf[i+k] = byte(v >> (8 * k))
		}
	}
	if r.seqWrite, err = d.sequential(ctx, dur, buf, true); err != nil {
		return r, fmt.Errorf("sequential write: %w", err)
	}
	if r.randWrite, err = d.random(ctx, dur, buf[:randBlock], rng, true); err != nil {
		return r, fmt.Errorf("random write: %w", err)
	}
	if err := d.f.Sync(); err != nil {
		return r, fmt.Errorf("sync: %w", err)
	}
	return r, nil
}

// transfer reads or writes all of buf at off.
func (d *disk) transfer(buf []byte, off int64, write bool) error {
	var err error
	if write {
		_, err = d.f.WriteAt(buf, off)
	} else {
		_, err = d.f.ReadAt(buf, off)
	}
	if err != nil {
		return fmt.Errorf("%d bytes at %d: %w", len(buf), off, err)
	}
	return nil
}

// sequential transfers len(buf)-byte blocks front to back (wrapping at the
// end) for dur and returns MB/s.
func (d *disk) sequential(ctx context.Context, dur time.Duration, buf []byte, write bool) (float64, error) {
	block := int64(len(buf))
	start := time.Now()
	var off, total int64
	for {
		if err := d.transfer(buf, off, write); err != nil {
			return 0, err
		}
		total += block
		if off += block; off+block > d.size {
			off = 0
		}
		if time.Since(start) >= dur || ctx.Err() != nil {
			break
		}
	}
	return float64(total) / 1e6 / time.Since(start).Seconds(), nil
}

// random transfers len(buf)-byte blocks at random aligned offsets, one at
// a time, for dur, and returns the rate and latencies.
func (d *disk) random(ctx context.Context, dur time.Duration, buf []byte, rng *rand.Rand, write bool) (randStats, error) {
	block := int64(len(buf))
	blocks := d.size / block
	var h latencies
	start := time.Now()
	for {
		off := rng.Int64N(blocks) * block
		t := time.Now()
		if err := d.transfer(buf, off, write); err != nil {
			return randStats{}, err
		}
		end := time.Now()
		h.add(end.Sub(t))
		if end.Sub(start) >= dur || ctx.Err() != nil {
			break
		}
	}
	return randStats{
		iops: float64(h.count) / time.Since(start).Seconds(),
		p50:  h.quantile(0.50),
		p99:  h.quantile(0.99),
	}, nil
}

// latencies is a histogram of durations in fixed memory, whatever the
// number of samples: exact below 128 ns, then 128 buckets per power of
// two (under 0.8% error).
type latencies struct {
	buckets  [latencyBuckets]uint64
	count    uint64
	min, max time.Duration
}

const (
	latencySubBits = 7
	latencySub     = 1 << latencySubBits
	latencyBuckets = latencySub + (64-latencySubBits-1)*latencySub
)

// latencyBucket returns the bucket of a duration of ns nanoseconds.
func latencyBucket(ns uint64) int {
	if ns < latencySub {
		return int(ns)
	}
	shift := bits.Len64(ns) - latencySubBits - 1
	return latencySub + shift*latencySub + int(ns>>shift) - latencySub
}

// latencyBucketMid returns the middle of bucket i in nanoseconds.
func latencyBucketMid(i int) uint64 {
	if i < latencySub {
		return uint64(i)
	}
	shift := (i - latencySub) / latencySub
	m := uint64((i-latencySub)%latencySub + latencySub)
	return m<<shift + (uint64(1)<<shift)/2
}

func (h *latencies) add(d time.Duration) {
	d = max(d, 0)
	if h.count == 0 || d < h.min {
		h.min = d
	}
	h.max = max(h.max, d)
	h.buckets[latencyBucket(uint64(d))]++
	h.count++
}

// quantile returns the q-quantile (nearest rank) within the bucket error,
// clamped to the samples' range; 0 without samples.
func (h *latencies) quantile(q float64) time.Duration {
	if h.count == 0 {
		return 0
	}
	rank := max(1, uint64(math.Ceil(q*float64(h.count))))
	var seen uint64
	for i, n := range h.buckets {
		if seen += n; seen >= rank {
			mid := time.Duration(min(latencyBucketMid(i), math.MaxInt64))
			return min(max(mid, h.min), h.max)
		}
	}
	return h.max
}
