package region

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"rainforest/vmm/shmem/abi"
)

// openFDs counts this process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// warmUp creates and closes a region once, so that descriptors the runtime
// opens lazily (the poller) do not count as leaks.
func warmUp(t *testing.T) {
	t.Helper()
	r, err := Create(ficmSpec(t, 2))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}

func ficmSpec(t *testing.T, peers int) Spec {
	t.Helper()
	l, err := FICMLayout(peers)
	if err != nil {
		t.Fatal(err)
	}
	return Spec{Name: "ficm", Protocol: abi.ProtocolFICM, Layout: l, Vectors: 1}
}

func segmentSpec(t *testing.T, grantees int, size uint64, vectors int) Spec {
	t.Helper()
	l, err := SegmentLayout(grantees, size)
	if err != nil {
		t.Fatal(err)
	}
	return Spec{Name: "seg.A_1-x", Protocol: abi.ProtocolSegment, Layout: l, Vectors: vectors}
}

// dupFile duplicates f's descriptor (close-on-exec) into a new file.
func dupFile(t *testing.T, f *os.File) *os.File {
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

func dupAll(t *testing.T, r *Region) (*os.File, []*os.File) {
	t.Helper()
	var bells []*os.File
	for _, b := range r.Bells() {
		bells = append(bells, dupFile(t, b))
	}
	return dupFile(t, r.MemFile()), bells
}

func fdLink(t *testing.T, f *os.File) string {
	t.Helper()
	fd, err := rawFD(f)
	if err != nil {
		t.Fatal(err)
	}
	link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		t.Fatal(err)
	}
	return link
}

func TestLayouts(t *testing.T) {
	l, err := FICMLayout(4)
	if err != nil {
		t.Fatal(err)
	}
	// 4 peers, 64 slots: TxBase 4096, 4 x (64+64*64) = 16640 -> 20736 ->
	// section 20480+4096 = 24576; plus the info page: 28672.
	if l.Peers != 4 || l.RWSize != 0 || l.OutputSize != 28672 {
		t.Fatalf("FICMLayout(4) = %+v", l)
	}
	if _, err := FICMLayout(0); !errors.Is(err, ErrSpec) {
		t.Fatalf("FICMLayout(0) = %v", err)
	}
	if _, err := FICMLayout(257); !errors.Is(err, ErrSpec) {
		t.Fatalf("FICMLayout(257) = %v", err)
	}
	s, err := SegmentLayout(3, 1<<20)
	if err != nil || s.Peers != 3 || s.RWSize != 1<<20 || s.OutputSize != 4096 {
		t.Fatalf("SegmentLayout = %+v, %v", s, err)
	}
	for _, bad := range []struct {
		n    int
		size uint64
	}{{0, 4096}, {1, 0}, {1, 100}, {1, 4097}, {1, 1 << 41}} {
		if _, err := SegmentLayout(bad.n, bad.size); !errors.Is(err, ErrSpec) {
			t.Errorf("SegmentLayout(%d, %d) = %v", bad.n, bad.size, err)
		}
	}
}

func TestCreateClose(t *testing.T) {
	warmUp(t)
	before := openFDs(t)
	spec := segmentSpec(t, 3, 64<<10, 2)
	r, err := Create(spec)
	if err != nil {
		t.Fatal(err)
	}
	if got := openFDs(t); got != before+1+6 {
		t.Errorf("open descriptors %d, want %d", got, before+7)
	}
	if r.Spec() != spec || uint64(len(r.Memory())) != spec.Layout.Size() || len(r.Bells()) != 6 {
		t.Fatalf("region %+v: %d bytes, %d bells", r.Spec(), len(r.Memory()), len(r.Bells()))
	}
	if link := fdLink(t, r.MemFile()); !strings.HasPrefix(link, "/memfd:rf-region-seg.A_1-x") {
		t.Errorf("memfd link %q", link)
	}
	fd, _ := rawFD(r.MemFile())
	sealsGot, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil || sealsGot != seals {
		t.Errorf("seals %#x, %v; want %#x", sealsGot, err, seals)
	}
	if err := unix.Ftruncate(fd, 4096); err == nil {
		t.Error("memfd could be shrunk")
	}
	for _, b := range r.Bells() {
		if link := fdLink(t, b); link != eventfdLink {
			t.Errorf("bell %s is %q", b.Name(), link)
		}
	}
	b, err := r.Bell(2, 1)
	if err != nil || b != r.Bells()[5] {
		t.Fatalf("Bell(2,1) = %v, %v", b, err)
	}
	for _, pv := range [][2]int{{3, 0}, {-1, 0}, {0, 2}, {0, -1}} {
		if _, err := r.Bell(pv[0], pv[1]); !errors.Is(err, ErrRange) {
			t.Errorf("Bell(%d,%d) = %v", pv[0], pv[1], err)
		}
		if err := r.Ring(pv[0], pv[1]); !errors.Is(err, ErrRange) {
			t.Errorf("Ring(%d,%d) = %v", pv[0], pv[1], err)
		}
	}
	out, err := r.Output(1)
	if err != nil || len(out) != 4096 {
		t.Fatalf("Output(1) = %d bytes, %v", len(out), err)
	}
	if _, err := r.Output(3); !errors.Is(err, ErrRange) {
		t.Fatalf("Output(3) = %v", err)
	}
	rw := r.RW()
	if len(rw) != 64<<10 || &rw[0] != &r.Memory()[spec.Layout.RWOffset()] {
		t.Fatalf("RW %d bytes", len(rw))
	}
	// Output sections are where the layout says, and distinct.
	out[0] = 0x5A
	if r.Memory()[spec.Layout.OutputOffset(1)] != 0x5A {
		t.Fatal("Output(1) is not at OutputOffset(1)")
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close = %v", err)
	}
	if err := r.Ring(0, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ring after Close = %v", err)
	}
	if got := openFDs(t); got != before {
		t.Fatalf("open descriptors %d after Close, want %d", got, before)
	}
}

func TestBadSpecs(t *testing.T) {
	warmUp(t)
	before := openFDs(t)
	good := ficmSpec(t, 3)
	mod := func(f func(*Spec)) Spec { s := good; f(&s); return s }
	for name, s := range map[string]Spec{
		"empty name":   mod(func(s *Spec) { s.Name = "" }),
		"long name":    mod(func(s *Spec) { s.Name = strings.Repeat("a", 33) }),
		"slash":        mod(func(s *Spec) { s.Name = "a/b" }),
		"space":        mod(func(s *Spec) { s.Name = "a b" }),
		"protocol 0":   mod(func(s *Spec) { s.Protocol = 0 }),
		"protocol 3":   mod(func(s *Spec) { s.Protocol = 3 }),
		"no peers":     mod(func(s *Spec) { s.Layout.Peers = 0 }),
		"odd output":   mod(func(s *Spec) { s.Layout.OutputSize = 100 }),
		"zero output":  mod(func(s *Spec) { s.Layout.OutputSize = 0 }),
		"odd rw":       mod(func(s *Spec) { s.Layout.RWSize = 5 }),
		"0 vectors":    mod(func(s *Spec) { s.Vectors = 0 }),
		"65 vectors":   mod(func(s *Spec) { s.Vectors = 65 }),
		"too many fds": mod(func(s *Spec) { s.Layout.Peers = 100; s.Vectors = 3 }),
	} {
		if r, err := Create(s); !errors.Is(err, ErrSpec) {
			t.Errorf("%s: Create = %v", name, err)
			if r != nil {
				r.Close()
			}
		}
	}
	if got := openFDs(t); got != before {
		t.Fatalf("open descriptors %d, want %d", got, before)
	}
}

func TestRestoreSeesSameMemory(t *testing.T) {
	warmUp(t)
	before := openFDs(t)
	spec := segmentSpec(t, 2, 8192, 2)
	r, err := Create(spec)
	if err != nil {
		t.Fatal(err)
	}
	copy(r.RW(), "hello, restored supervisor")
	mem, bells := dupAll(t, r)
	r2, err := Restore(spec, mem, bells)
	if err != nil {
		t.Fatal(err)
	}
	if string(r2.RW()[:26]) != "hello, restored supervisor" {
		t.Fatalf("restored memory %q", r2.RW()[:26])
	}
	r2.Memory()[len(r2.Memory())-1] = 0x77
	if r.Memory()[len(r.Memory())-1] != 0x77 {
		t.Fatal("write through the restored mapping not seen")
	}
	// A ring through the restored region wakes a waiter on the original.
	if err := r2.Ring(1, 1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.Wait(ctx, 1, 1); err != nil {
		t.Fatalf("Wait after ring: %v", err)
	}
	// The signal was consumed: a second wait times out.
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if err := r.Wait(short, 1, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Wait = %v", err)
	}
	if err := r2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if got := openFDs(t); got != before {
		t.Fatalf("open descriptors %d, want %d", got, before)
	}
}

func TestRestoreBadInputs(t *testing.T) {
	warmUp(t)
	before := openFDs(t)
	spec := segmentSpec(t, 2, 8192, 1)
	r, err := Create(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	newMemfd := func(size int64, sealed bool) *os.File {
		fd, err := unix.MemfdCreate("test", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Ftruncate(fd, size); err != nil {
			t.Fatal(err)
		}
		if sealed {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
				t.Fatal(err)
			}
		}
		return os.NewFile(uintptr(fd), "test")
	}
	size := int64(spec.Layout.Size())
	cases := map[string]func() (Spec, *os.File, []*os.File, error){
		"not an eventfd": func() (Spec, *os.File, []*os.File, error) {
			mem, bells := dupAll(t, r)
			bells[1].Close()
			bells[1] = newMemfd(8, false)
			return spec, mem, bells, ErrFile
		},
		"pipe as bell": func() (Spec, *os.File, []*os.File, error) {
			mem, bells := dupAll(t, r)
			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			pw.Close()
			bells[0].Close()
			bells[0] = pr
			return spec, mem, bells, ErrFile
		},
		"too few bells": func() (Spec, *os.File, []*os.File, error) {
			mem, bells := dupAll(t, r)
			bells[1].Close()
			return spec, mem, bells[:1], ErrFile
		},
		"too many bells": func() (Spec, *os.File, []*os.File, error) {
			mem, bells := dupAll(t, r)
			return spec, mem, append(bells, dupFile(t, bells[0])), ErrFile
		},
		"nil bell": func() (Spec, *os.File, []*os.File, error) {
			mem, bells := dupAll(t, r)
			bells[1].Close()
			bells[1] = nil
			return spec, mem, bells, ErrFile
		},
		"short memfd": func() (Spec, *os.File, []*os.File, error) {
			mem, bells := dupAll(t, r)
			mem.Close()
			return spec, newMemfd(size-4096, true), bells, ErrFile
		},
		"unsealed memfd": func() (Spec, *os.File, []*os.File, error) {
			mem, bells := dupAll(t, r)
			mem.Close()
			return spec, newMemfd(size, false), bells, ErrFile
		},
		"eventfd as memory": func() (Spec, *os.File, []*os.File, error) {
			mem, bells := dupAll(t, r)
			mem.Close()
			return spec, dupFile(t, bells[0]), bells, ErrFile
		},
		"nil memory": func() (Spec, *os.File, []*os.File, error) {
			mem, bells := dupAll(t, r)
			mem.Close()
			return spec, nil, bells, ErrFile
		},
		"bad spec": func() (Spec, *os.File, []*os.File, error) {
			mem, bells := dupAll(t, r)
			s := spec
			s.Vectors = 0
			return s, mem, bells, ErrSpec
		},
	}
	for name, mk := range cases {
		s, mem, bells, want := mk()
		r2, err := Restore(s, mem, bells)
		if !errors.Is(err, want) {
			t.Errorf("%s: Restore = %v, want %v", name, err, want)
			if r2 != nil {
				r2.Close()
			}
			continue
		}
		t.Logf("%s: %v", name, err)
	}
	// Restore closed every file it was given.
	if got := openFDs(t); got != before+1+2 {
		t.Fatalf("open descriptors %d, want %d", got, before+3)
	}
}

func TestRingOverflowIsPending(t *testing.T) {
	r, err := Create(ficmSpec(t, 2))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	fd := r.bellFDs[1]
	var near [8]byte
	binary.NativeEndian.PutUint64(near[:], 1<<64-2) // the counter's maximum
	if _, err := unix.Write(fd, near[:]); err != nil {
		t.Fatal(err)
	}
	if err := r.Ring(1, 0); err != nil {
		t.Fatalf("Ring on a full counter = %v, want nil", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.Wait(ctx, 1, 0); err != nil {
		t.Fatal(err)
	}
	if err := r.Ring(1, 0); err != nil {
		t.Fatal(err)
	}
}

func TestWaitEnds(t *testing.T) {
	r, err := Create(ficmSpec(t, 2))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- r.Wait(ctx, 0, 0) }()
	// An idle Wait sleeps in one poll(2) call: no periodic wake-ups.
	polls := func() uint64 {
		r.waitMu.Lock()
		defer r.waitMu.Unlock()
		if w := r.waiters[0]; w != nil {
			return w.Polls()
		}
		return 0
	}
	for deadline := time.Now().Add(5 * time.Second); polls() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("Wait did not start polling")
		}
	}
	time.Sleep(300 * time.Millisecond)
	if n := polls(); n != 1 {
		t.Errorf("%d poll calls in 300 ms of an idle Wait, want 1", n)
	}
	start := time.Now()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) || time.Since(start) > time.Second {
		t.Fatalf("Wait after cancel = %v after %v", err, time.Since(start))
	}
	go func() { errc <- r.Wait(context.Background(), 0, 0) }()
	for deadline := time.Now().Add(5 * time.Second); polls() < 2; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("second Wait did not start polling")
		}
	}
	start = time.Now()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrClosed) || time.Since(start) > time.Second {
		t.Fatalf("Wait after Close = %v after %v", err, time.Since(start))
	}
	if err := r.Wait(context.Background(), 0, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("Wait on a closed region = %v", err)
	}
}
