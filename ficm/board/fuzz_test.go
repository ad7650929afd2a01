package board

import (
	"encoding/binary"
	"errors"
	"reflect"
	"testing"
)

// FuzzRead puts arbitrary bytes into a page (optionally on top of a valid
// board). Read must not panic; it either fails with ErrCorrupt or ErrBusy,
// or returns a board that obeys every rule, which a Writer can publish
// again and read back unchanged.
func FuzzRead(f *testing.F) {
	valid := newPage()
	w, err := NewWriter(valid)
	if err != nil {
		f.Fatal(err)
	}
	if _, err := w.Publish(sampleEntries()); err != nil {
		f.Fatal(err)
	}
	f.Add(false, append([]byte(nil), valid...))
	f.Add(true, []byte{0x40, 0, 0x43})
	f.Add(true, []byte{0x06, 0x3F})
	f.Add(false, []byte{0x52, 0x46, 0x42, 0x44, 1, 0, 1, 0})
	f.Add(false, []byte{})
	f.Fuzz(func(t *testing.T, overlay bool, data []byte) {
		page := newPage()
		if overlay {
			// data is (offset, value) byte pairs patched into a
			// valid board; offsets land in the header and entry 0..3.
			copy(page, valid)
			for i := 0; i+1 < len(data); i += 2 {
				off := int(data[i])
				if data[i]&1 != 0 {
					off += 0x100
				}
				page[off] = data[i+1]
			}
		} else {
			copy(page, data)
		}
		if binary.LittleEndian.Uint64(page[8:])%2 != 0 {
			page[8]++ // keep the fuzzer fast: an odd seq is only ErrBusy
		}
		b, err := Read(page)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrBusy) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		if len(b.Entries) > MaxEntries || b.Seq%2 != 0 {
			t.Fatalf("board breaks rules: %+v", b)
		}
		seen := map[string]bool{}
		peers := map[int]bool{}
		for _, e := range b.Entries {
			if !ValidName(e.Name) || seen[e.Name] || peers[e.Peer] || e.Peer < 0 || e.Peer > MaxPeer ||
				!validState(e.State) || len(e.CommCores) > MaxCommCores {
				t.Fatalf("entry breaks rules: %+v", e)
			}
			for _, c := range e.CommCores {
				if c < 0 || c > MaxCore {
					t.Fatalf("entry breaks rules: %+v", e)
				}
			}
			seen[e.Name], peers[e.Peer] = true, true
		}
		again := newPage()
		w, err := NewWriter(again)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Publish(b.Entries); err != nil {
			t.Fatalf("accepted board does not publish: %v", err)
		}
		b2, err := Read(again)
		if err != nil || !reflect.DeepEqual(b2.Entries, b.Entries) {
			t.Fatalf("republished board differs: %+v, %v", b2, err)
		}
		// The accepted header and entries are canonical: re-encoding
		// reproduces them (bytes past the last entry are not part of the
		// board).
		if b.Supervisor == 0 {
			copy(again[8:16], page[8:16])
			n := EntriesOffset + EntrySize*len(b.Entries)
			if !reflect.DeepEqual(again[:n], page[:n]) {
				t.Fatalf("accepted page is not canonical")
			}
		}
	})
}
