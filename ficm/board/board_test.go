package board

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"rainforest/ficm/ring"
)

func newPage() []byte { return ring.AlignedBytes(PageSize) }

func sampleEntries() []Entry {
	return []Entry{
		{Peer: 1, State: StateRunning, CommCores: []int{2, 3}, MAC: [6]byte{0x02, 0, 0, 0, 0, 1}, Name: "web-1"},
		{Peer: 2, State: StateStopping, Name: "db.primary_A"},
		{Peer: 7, State: StateRunning, CommCores: []int{0, 65535, 4, 5, 6, 7, 8, 9}, Name: strings.Repeat("x", MaxNameLen)},
	}
}

func TestRoundTrip(t *testing.T) {
	page := newPage()
	w, err := NewWriter(page)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Read(page)
	if err != nil {
		t.Fatalf("fresh page: %v", err)
	}
	if len(b.Entries) != 0 || b.Seq != 2 || b.Supervisor != 0 {
		t.Fatalf("fresh board = %+v", b)
	}
	want := sampleEntries()
	seq, err := w.Publish(want)
	if err != nil {
		t.Fatal(err)
	}
	if seq != 4 || w.Seq() != 4 {
		t.Fatalf("seq = %d, Seq() = %d, want 4", seq, w.Seq())
	}
	b, err = ReadGroup(page, 8)
	if err != nil {
		t.Fatal(err)
	}
	if b.Seq != seq || !reflect.DeepEqual(b.Entries, want) {
		t.Fatalf("read %+v, want seq %d entries %+v", b, seq, want)
	}
	if e, ok := b.Lookup("web-1"); !ok || e.Peer != 1 {
		t.Fatalf("Lookup(web-1) = %+v, %v", e, ok)
	}
	if e, ok := b.ByPeer(2); !ok || e.Name != "db.primary_A" {
		t.Fatalf("ByPeer(2) = %+v, %v", e, ok)
	}
	if _, ok := b.Lookup("nope"); ok {
		t.Fatal("Lookup(nope) found something")
	}
	if _, ok := b.ByPeer(3); ok {
		t.Fatal("ByPeer(3) found something")
	}
	// Fixed offsets of the ABI.
	le := binary.LittleEndian
	if le.Uint32(page[0:]) != Magic || le.Uint16(page[4:]) != 1 || le.Uint16(page[6:]) != 3 || le.Uint64(page[8:]) != 4 {
		t.Fatalf("header % x", page[:16])
	}
	ent := page[0x40+64*2:]
	if le.Uint16(ent[0:]) != 7 || ent[2] != StateRunning || ent[3] != 8 || le.Uint16(ent[4+2:]) != 65535 || string(ent[32:64]) != strings.Repeat("x", 32) {
		t.Fatalf("entry 2 % x", ent[:64])
	}
	if string(page[0x40+32:0x40+32+5]) != "web-1" || page[0x40+20] != 0x02 || page[0x40+25] != 1 {
		t.Fatalf("entry 0 % x", page[0x40:0x80])
	}
	// A shorter board clears the old entries.
	if _, err := w.Publish(want[:1]); err != nil {
		t.Fatal(err)
	}
	for i := 0x40 + 64; i < PageSize; i++ {
		if page[i] != 0 {
			t.Fatalf("byte %#x not cleared", i)
		}
	}
	// A peer id out of the group's range is corrupt for that group.
	if _, err := ReadGroup(page, 1); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("ReadGroup(peers 1) = %v, want ErrCorrupt", err)
	}
}

func TestNewWriterKeepsValidBoard(t *testing.T) {
	page := newPage()
	w, err := NewWriter(page)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Publish(sampleEntries()); err != nil {
		t.Fatal(err)
	}
	w2, err := NewWriter(page)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Read(page)
	if err != nil || len(b.Entries) != 3 || b.Seq != 4 || w2.Seq() != 4 {
		t.Fatalf("after restart: %+v, %v, Seq %d", b, err, w2.Seq())
	}
	seq, err := w2.Publish(nil)
	if err != nil || seq != 6 {
		t.Fatalf("publish after restart: seq %d, %v", seq, err)
	}

	// A page left mid-write (odd seq) or with garbage is reset to an
	// empty board with a higher even seq.
	binary.LittleEndian.PutUint64(page[8:], 41)
	w3, err := NewWriter(page)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := Read(page); err != nil || len(b.Entries) != 0 || b.Seq != 44 || w3.Seq() != 44 {
		t.Fatalf("after odd seq: %+v, %v", b, err)
	}
	for i := range page {
		page[i] = 0xA5
	}
	binary.LittleEndian.PutUint64(page[8:], 100)
	if _, err := NewWriter(page); err != nil {
		t.Fatal(err)
	}
	if b, err := Read(page); err != nil || len(b.Entries) != 0 || b.Seq != 102 {
		t.Fatalf("after garbage: %+v, %v", b, err)
	}
}

func TestBadPageBuffer(t *testing.T) {
	if _, err := NewWriter(make([]byte, PageSize-1)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("short page: %v", err)
	}
	buf := ring.AlignedBytes(PageSize + 8)
	if _, err := Read(buf[1 : 1+PageSize]); !errors.Is(err, ErrInvalid) {
		t.Fatalf("misaligned page: %v", err)
	}
	if _, err := Read(nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("nil page: %v", err)
	}
}

func TestPublishLimits(t *testing.T) {
	page := newPage()
	w, err := NewWriter(page)
	if err != nil {
		t.Fatal(err)
	}
	full := make([]Entry, MaxEntries)
	for i := range full {
		full[i] = Entry{Peer: i + 1, State: StateRunning, CommCores: []int{i, i + 1, i + 2, i + 3, i + 4, i + 5, i + 6, i + 7},
			MAC: [6]byte{2, byte(i)}, Name: fmt.Sprintf("subos-%02d", i)}
	}
	if _, err := w.Publish(full); err != nil {
		t.Fatalf("63 entries: %v", err)
	}
	b, err := Read(page)
	if err != nil || !reflect.DeepEqual(b.Entries, full) {
		t.Fatalf("63 entries read back: %v", err)
	}
	seqBefore := w.Seq()
	good := Entry{Peer: 1, State: StateRunning, Name: "ok"}
	bad := map[string][]Entry{
		"64 entries":     append(append([]Entry(nil), full...), Entry{Peer: 100, State: StateRunning, Name: "extra"}),
		"9 cores":        {{Peer: 1, State: StateRunning, CommCores: make([]int, 9), Name: "a"}},
		"core 65536":     {{Peer: 1, State: StateRunning, CommCores: []int{65536}, Name: "a"}},
		"core -1":        {{Peer: 1, State: StateRunning, CommCores: []int{-1}, Name: "a"}},
		"empty name":     {{Peer: 1, State: StateRunning}},
		"33-byte name":   {{Peer: 1, State: StateRunning, Name: strings.Repeat("n", 33)}},
		"space in name":  {{Peer: 1, State: StateRunning, Name: "a b"}},
		"slash in name":  {{Peer: 1, State: StateRunning, Name: "a/b"}},
		"NUL in name":    {{Peer: 1, State: StateRunning, Name: "a\x00b"}},
		"UTF-8 name":     {{Peer: 1, State: StateRunning, Name: "café"}},
		"state 0":        {{Peer: 1, Name: "a"}},
		"state 3":        {{Peer: 1, State: 3, Name: "a"}},
		"peer -1":        {{Peer: -1, State: StateRunning, Name: "a"}},
		"peer 65536":     {{Peer: 65536, State: StateRunning, Name: "a"}},
		"duplicate peer": {good, {Peer: 1, State: StateRunning, Name: "other"}},
		"duplicate name": {good, {Peer: 2, State: StateRunning, Name: "ok"}},
	}
	for name, entries := range bad {
		if _, err := w.Publish(entries); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Publish = %v, want ErrInvalid", name, err)
		}
	}
	if w.Seq() != seqBefore {
		t.Fatalf("rejected publications changed seq %d -> %d", seqBefore, w.Seq())
	}
	if b2, err := Read(page); err != nil || b2.Seq != b.Seq {
		t.Fatalf("page changed by rejected publications: %v", err)
	}
}

// corruptions applies one rule violation each to a valid page.
var corruptions = map[string]func(p []byte){
	"magic":            func(p []byte) { p[0] ^= 1 },
	"version":          func(p []byte) { p[4] = 2 },
	"count 64":         func(p []byte) { binary.LittleEndian.PutUint16(p[6:], 64) },
	"reserved header":  func(p []byte) { p[0x3F] = 1 },
	"state 0":          func(p []byte) { p[0x40+2] = 0 },
	"state 9":          func(p []byte) { p[0x40+2] = 9 },
	"9 cores":          func(p []byte) { p[0x40+3] = 9 },
	"unused core set":  func(p []byte) { p[0x40+4+2*7] = 1 },
	"reserved entry":   func(p []byte) { p[0x40+27] = 1 },
	"empty name":       func(p []byte) { p[0x40+32] = 0 },
	"NUL inside name":  func(p []byte) { copy(p[0x40+32:0x40+64], "ab\x00c") },
	"bad name byte":    func(p []byte) { p[0x40+32] = '/' },
	"high name byte":   func(p []byte) { p[0x40+32] = 0xC3 },
	"garbage past NUL": func(p []byte) { p[0x40+32+20] = 'q' },
	"duplicate peer":   func(p []byte) { binary.LittleEndian.PutUint16(p[0x40+64:], 1) },
	"duplicate name":   func(p []byte) { copy(p[0x40+64+32:0x40+128], make([]byte, 32)); copy(p[0x40+64+32:], "web-1") },
}

func TestReadCorrupt(t *testing.T) {
	for name, corrupt := range corruptions {
		page := newPage()
		w, err := NewWriter(page)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Publish(sampleEntries()); err != nil {
			t.Fatal(err)
		}
		corrupt(page)
		b, err := Read(page)
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: Read = %+v, %v; want ErrCorrupt", name, b, err)
		}
	}
	if _, err := Read(newPage()); !errors.Is(err, ErrCorrupt) {
		t.Errorf("zero page: %v, want ErrCorrupt", err)
	}
}

func TestReadBusy(t *testing.T) {
	page := newPage()
	w, err := NewWriter(page)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Publish(sampleEntries()); err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint64(page[8:], 5) // writer died mid-write
	start := time.Now()
	if _, err := Read(page); !errors.Is(err, ErrBusy) {
		t.Fatalf("odd seq: %v, want ErrBusy", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("ErrBusy took %v", d)
	}
}

// entriesFor builds a board whose every field derives from k, so that a
// snapshot mixing two publications is recognisable.
func entriesFor(k uint64) []Entry {
	n := int(k % (MaxEntries + 1))
	es := make([]Entry, n)
	for i := range es {
		v := int((k + uint64(i)) & 0xFFFF)
		c := int(k % (MaxCommCores + 1))
		cores := make([]int, c)
		for j := range cores {
			cores[j] = v
		}
		if c == 0 {
			cores = nil
		}
		es[i] = Entry{Peer: i + 1, State: StateRunning + uint8(k%2), CommCores: cores,
			MAC: [6]byte{byte(k), byte(k >> 8), byte(k >> 16), byte(k >> 24), byte(i), 0}, Name: fmt.Sprintf("s%d-%d", k, i)}
	}
	return es
}

func TestConcurrentNoTornRead(t *testing.T) {
	page := newPage()
	w, err := NewWriter(page)
	if err != nil {
		t.Fatal(err)
	}
	base := w.Seq()
	dur := 500 * time.Millisecond
	if testing.Short() {
		dur = 100 * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	var published uint64
	go func() {
		defer wg.Done()
		for k := uint64(1); ctx.Err() == nil; k++ {
			seq, err := w.Publish(entriesFor(k))
			if err != nil {
				t.Errorf("publish %d: %v", k, err)
				return
			}
			if seq != base+2*k {
				t.Errorf("publish %d: seq %d, want %d", k, seq, base+2*k)
				return
			}
			published = k
		}
	}()
	const readers = 3
	reads := make([]int, readers)
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var last uint64
			for ctx.Err() == nil {
				b, err := Read(page)
				if errors.Is(err, ErrBusy) {
					continue
				}
				if err != nil {
					t.Errorf("reader %d: %v", r, err)
					return
				}
				if b.Seq < last || b.Seq%2 != 0 {
					t.Errorf("reader %d: seq %d after %d", r, b.Seq, last)
					return
				}
				last = b.Seq
				k := (b.Seq - base) / 2
				var want []Entry
				if k > 0 {
					want = entriesFor(k)
				}
				if !reflect.DeepEqual(b.Entries, want) && !(len(want) == 0 && len(b.Entries) == 0) {
					t.Errorf("reader %d: torn read accepted at seq %d:\n got %+v\nwant %+v", r, b.Seq, b.Entries, want)
					return
				}
				reads[r]++
			}
		}()
	}
	wg.Wait()
	t.Logf("published %d boards; consistent reads %v", published, reads)
	for r, n := range reads {
		if n == 0 {
			t.Errorf("reader %d never got a consistent copy", r)
		}
	}
}
