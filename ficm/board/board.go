// Package board is the FICM group's board: the supervisor's published state
// page (which subOSes run, their peer ids, communication cores, MAC
// addresses and names), held in the info page of the supervisor's output
// section and read-only to every subOS.
//
// # Page layout (ABI)
//
// PageSize (4096) bytes, little-endian:
//
//	0x000 u32 magic Magic ("RFBD")
//	0x004 u16 version (Version)
//	0x006 u16 entry count n (<= MaxEntries)
//	0x008 u64 seq: a seqlock, odd while the supervisor writes
//	0x010 u16 supervisor's peer id (0)
//	0x012..0x040 reserved, zero
//	0x040 + 64*i entry i:
//	   +0  u16 peer id
//	   +2  u8  state (StateRunning, StateStopping)
//	   +3  u8  number of communication cores c (<= MaxCommCores)
//	   +4  [8]u16 communication cores (host core numbers, first c valid,
//	       the rest zero)
//	   +20 [6]u8 MAC address (all zero: none)
//	   +26 [6]u8 reserved, zero
//	   +32 [32]u8 subOS name, 1..32 bytes of [A-Za-z0-9._-], NUL-padded
//	       when shorter than the field (so every subOS name fits)
//
// # Consistency
//
// The Writer makes seq odd, writes the body, and makes seq even again
// (seq+2 per publication). Read loads seq (it must be even), copies the
// page, and loads seq again; only a copy taken between two equal even seq
// loads is decoded. Every word of the page is accessed with 64-bit atomics,
// so a reader never races with the writer in the Go memory model; a torn
// copy is detected by the seq re-read and retried a bounded number of times.
//
// # Trust
//
// The page is written by the supervisor, but Read treats it as untrusted
// input: every field is validated and anything out of the rules is
// reported as ErrCorrupt, never a panic.
package board

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"
)

const (
	// PageSize is the size of the board page.
	PageSize = 4096
	// MaxEntries is the largest number of entries on a board.
	MaxEntries = 63
	// MaxCommCores is the largest number of communication cores per entry.
	MaxCommCores = 8
	// Magic is the page's magic number ("RFBD" little-endian).
	Magic = 0x44424652
	// Version is the page layout version.
	Version = 1
	// MaxNameLen is the longest subOS name in bytes.
	MaxNameLen = 32
	// EntrySize is the size of one entry.
	EntrySize = 64
	// EntriesOffset is the offset of entry 0.
	EntriesOffset = 0x40
	// MaxCore is the largest communication core number (a u16).
	MaxCore = 0xFFFF
	// MaxPeer is the largest peer id (a u16).
	MaxPeer = 0xFFFF

	// ReadTries bounds how many times Read retries while the page is being
	// written before it gives up with ErrBusy.
	ReadTries = 10000
)

// Entry states.
const (
	StateRunning  uint8 = 1
	StateStopping uint8 = 2
)

// Field offsets.
const (
	offMagic      = 0x000
	offVersion    = 0x004
	offCount      = 0x006
	offSeq        = 0x008
	offSupervisor = 0x010
	offReserved   = 0x012

	entPeer     = 0
	entState    = 2
	entNCores   = 3
	entCores    = 4
	entMAC      = 20
	entReserved = 26
	entName     = 32
	nameField   = 32

	seqWord = offSeq / 8
)

var (
	// ErrCorrupt means the page does not hold a valid board.
	ErrCorrupt = errors.New("board: corrupt page")
	// ErrBusy means no consistent copy could be taken within ReadTries.
	ErrBusy = errors.New("board: page busy")
	// ErrInvalid means an argument (an entry to publish, a page buffer) is
	// invalid.
	ErrInvalid = errors.New("board: invalid argument")
)

// Entry is one subOS on the board.
type Entry struct {
	// Peer is the subOS's FICM peer id.
	Peer int `json:"peer"`
	// State is StateRunning or StateStopping.
	State uint8 `json:"state"`
	// CommCores are the host core numbers of its communication cores
	// (at most MaxCommCores).
	CommCores []int `json:"comm_cores"`
	// MAC is its MAC address; all zero for none.
	MAC [6]byte `json:"mac"`
	// Name is the subOS's name (1..31 bytes of [A-Za-z0-9._-]).
	Name string `json:"name"`
}

// Board is a consistent snapshot of the page.
type Board struct {
	// Seq is the seqlock value the snapshot was taken at (even).
	Seq uint64 `json:"seq"`
	// Supervisor is the supervisor's peer id.
	Supervisor int `json:"supervisor"`
	// Entries are the board's entries in page order.
	Entries []Entry `json:"entries"`
}

// Lookup returns the entry named name.
func (b Board) Lookup(name string) (Entry, bool) {
	for _, e := range b.Entries {
		if e.Name == name {
			return e, true
		}
	}
	return Entry{}, false
}

// ByPeer returns the entry of peer id peer.
func (b Board) ByPeer(peer int) (Entry, bool) {
	for _, e := range b.Entries {
		if e.Peer == peer {
			return e, true
		}
	}
	return Entry{}, false
}

// ValidName reports whether s is a valid subOS name: 1..MaxNameLen bytes of
// [A-Za-z0-9._-].
func ValidName(s string) bool {
	if len(s) < 1 || len(s) > MaxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !nameByte(s[i]) {
			return false
		}
	}
	return true
}

func nameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
}

// validState reports whether s is a state an entry may have.
func validState(s uint8) bool { return s == StateRunning || s == StateStopping }

// checkEntries validates entries to publish; errors wrap ErrInvalid.
func checkEntries(entries []Entry) error {
	if len(entries) > MaxEntries {
		return fmt.Errorf("%w: %d entries, at most %d", ErrInvalid, len(entries), MaxEntries)
	}
	names := make(map[string]bool, len(entries))
	peers := make(map[int]bool, len(entries))
	for i, e := range entries {
		switch {
		case e.Peer < 0 || e.Peer > MaxPeer:
			return fmt.Errorf("%w: entry %d: peer id %d (0..%d)", ErrInvalid, i, e.Peer, MaxPeer)
		case peers[e.Peer]:
			return fmt.Errorf("%w: entry %d: duplicate peer id %d", ErrInvalid, i, e.Peer)
		case !validState(e.State):
			return fmt.Errorf("%w: entry %d: state %d", ErrInvalid, i, e.State)
		case len(e.CommCores) > MaxCommCores:
			return fmt.Errorf("%w: entry %d: %d communication cores, at most %d", ErrInvalid, i, len(e.CommCores), MaxCommCores)
		case !ValidName(e.Name):
			return fmt.Errorf("%w: entry %d: name %q (1..%d bytes of [A-Za-z0-9._-])", ErrInvalid, i, e.Name, MaxNameLen)
		case names[e.Name]:
			return fmt.Errorf("%w: entry %d: duplicate name %q", ErrInvalid, i, e.Name)
		}
		for _, c := range e.CommCores {
			if c < 0 || c > MaxCore {
				return fmt.Errorf("%w: entry %d: communication core %d (0..%d)", ErrInvalid, i, c, MaxCore)
			}
		}
		peers[e.Peer] = true
		names[e.Name] = true
	}
	return nil
}

// encode writes a board with the given entries (already validated) into
// buf, leaving the seq field zero.
func encode(buf *[PageSize]byte, supervisor int, entries []Entry) {
	clear(buf[:])
	le := binary.LittleEndian
	le.PutUint32(buf[offMagic:], Magic)
	le.PutUint16(buf[offVersion:], Version)
	le.PutUint16(buf[offCount:], uint16(len(entries)))
	le.PutUint16(buf[offSupervisor:], uint16(supervisor))
	for i, e := range entries {
		ent := buf[EntriesOffset+i*EntrySize : EntriesOffset+(i+1)*EntrySize]
		le.PutUint16(ent[entPeer:], uint16(e.Peer))
		ent[entState] = e.State
		ent[entNCores] = uint8(len(e.CommCores))
		for j, c := range e.CommCores {
			le.PutUint16(ent[entCores+2*j:], uint16(c))
		}
		copy(ent[entMAC:entMAC+6], e.MAC[:])
		copy(ent[entName:entName+nameField], e.Name)
	}
}

// decode validates a consistent copy of the page; maxPeers bounds the peer
// ids (0: unknown). Errors wrap ErrCorrupt.
func decode(buf *[PageSize]byte, maxPeers int) (Board, error) {
	le := binary.LittleEndian
	if m := le.Uint32(buf[offMagic:]); m != Magic {
		return Board{}, fmt.Errorf("%w: magic %#x", ErrCorrupt, m)
	}
	if v := le.Uint16(buf[offVersion:]); v != Version {
		return Board{}, fmt.Errorf("%w: version %d", ErrCorrupt, v)
	}
	n := int(le.Uint16(buf[offCount:]))
	if n > MaxEntries {
		return Board{}, fmt.Errorf("%w: %d entries", ErrCorrupt, n)
	}
	for i := offReserved; i < EntriesOffset; i++ {
		if buf[i] != 0 {
			return Board{}, fmt.Errorf("%w: reserved header byte %#x is %#x", ErrCorrupt, i, buf[i])
		}
	}
	b := Board{
		Seq:        le.Uint64(buf[offSeq:]),
		Supervisor: int(le.Uint16(buf[offSupervisor:])),
	}
	if maxPeers > 0 && b.Supervisor >= maxPeers {
		return Board{}, fmt.Errorf("%w: supervisor peer id %d of %d peers", ErrCorrupt, b.Supervisor, maxPeers)
	}
	if n > 0 {
		b.Entries = make([]Entry, 0, n)
	}
	for i := range n {
		e, err := decodeEntry((*[EntrySize]byte)(buf[EntriesOffset+i*EntrySize:]), maxPeers)
		if err != nil {
			return Board{}, fmt.Errorf("entry %d: %w", i, err)
		}
		for _, prev := range b.Entries {
			if prev.Peer == e.Peer {
				return Board{}, fmt.Errorf("%w: entry %d: duplicate peer id %d", ErrCorrupt, i, e.Peer)
			}
			if prev.Name == e.Name {
				return Board{}, fmt.Errorf("%w: entry %d: duplicate name %q", ErrCorrupt, i, e.Name)
			}
		}
		b.Entries = append(b.Entries, e)
	}
	return b, nil
}

func decodeEntry(ent *[EntrySize]byte, maxPeers int) (Entry, error) {
	le := binary.LittleEndian
	e := Entry{Peer: int(le.Uint16(ent[entPeer:])), State: ent[entState]}
	if maxPeers > 0 && e.Peer >= maxPeers {
		return Entry{}, fmt.Errorf("%w: peer id %d of %d peers", ErrCorrupt, e.Peer, maxPeers)
	}
	if !validState(e.State) {
		return Entry{}, fmt.Errorf("%w: state %d", ErrCorrupt, e.State)
	}
	c := int(ent[entNCores])
	if c > MaxCommCores {
		return Entry{}, fmt.Errorf("%w: %d communication cores", ErrCorrupt, c)
	}
	if c > 0 {
		e.CommCores = make([]int, c)
	}
	for j := range MaxCommCores {
		v := le.Uint16(ent[entCores+2*j:])
		if j < c {
			e.CommCores[j] = int(v)
		} else if v != 0 {
			return Entry{}, fmt.Errorf("%w: unused communication core slot %d is %d", ErrCorrupt, j, v)
		}
	}
	copy(e.MAC[:], ent[entMAC:entMAC+6])
	for _, r := range ent[entReserved:entName] {
		if r != 0 {
			return Entry{}, fmt.Errorf("%w: reserved entry byte is %#x", ErrCorrupt, r)
		}
	}
	name := ent[entName : entName+nameField]
	l := 0
	for l < len(name) && name[l] != 0 {
		l++
	}
	if l == 0 || l > MaxNameLen {
		return Entry{}, fmt.Errorf("%w: name of %d bytes", ErrCorrupt, l)
	}
	for _, r := range name[l:] {
		if r != 0 {
			return Entry{}, fmt.Errorf("%w: name not NUL-padded", ErrCorrupt)
		}
	}
	e.Name = string(name[:l])
	if !ValidName(e.Name) {
		return Entry{}, fmt.Errorf("%w: name %q", ErrCorrupt, e.Name)
	}
	return e, nil
}

// toLE converts a word loaded from the page (host byte order) to the value
// of the little-endian field it holds, and back (the conversion is its own
// inverse).
func toLE(w uint64) uint64 {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], w)
	return binary.LittleEndian.Uint64(b[:])
}

// snapshot copies the page into buf between two seq loads and returns them
// (as values).
func snapshot(words *pageWords, buf *[PageSize]byte) (seq1, seq2 uint64) {
	seq1 = toLE(words[seqWord].Load())
	for i := range words {
		binary.NativeEndian.PutUint64(buf[i*8:], words[i].Load())
	}
	seq2 = toLE(words[seqWord].Load())
	return seq1, seq2
}

// Read takes a consistent snapshot of the board in page (at least PageSize
// bytes, 8-byte aligned, usually shared memory) and validates it. Errors
// wrap ErrCorrupt (not a valid board), ErrBusy (the page kept changing or
// stayed mid-write for ReadTries attempts) or ErrInvalid (bad page buffer).
func Read(page []byte) (Board, error) { return ReadGroup(page, 0) }

// ReadGroup is Read for a group of peers peers: every peer id on the board
// must also be below peers. peers <= 0 means unknown (as Read).
func ReadGroup(page []byte, peers int) (Board, error) {
	words, err := wordsOf(page)
	if err != nil {
		return Board{}, err
	}
	var buf [PageSize]byte
	for try := range ReadTries {
		s1, s2 := snapshot(words, &buf)
		if s1 == s2 && s1%2 == 0 {
			return decode(&buf, peers)
		}
		if try%16 == 15 {
			runtime.Gosched()
		}
	}
	return Board{}, fmt.Errorf("%w: no consistent copy in %d tries", ErrBusy, ReadTries)
}

// Writer publishes boards into a page. Publish may be called from several
// goroutines; it is the page's only writer.
type Writer struct {
	mu    sync.Mutex
	words *pageWords
	seq   uint64 // last published seq (even)
	buf   [PageSize]byte
}

// NewWriter returns the writer of page (at least PageSize bytes, 8-byte
// aligned). If page already holds a valid board (a restarted supervisor's
// shared memory), it is kept and the seq continues from it; otherwise an
// empty board is published at once, so readers always find a valid page.
func NewWriter(page []byte) (*Writer, error) {
	words, err := wordsOf(page)
	if err != nil {
		return nil, err
	}
	w := &Writer{words: words}
	s1, s2 := snapshot(words, &w.buf)
	if s1 == s2 && s1%2 == 0 {
		if _, err := decode(&w.buf, 0); err == nil {
			w.seq = s1
			return w, nil
		}
	}
	// Continue above whatever seq is there so that readers comparing seqs
	// see a change, keeping it even.
	w.seq = (s2 + 1) &^ 1
	if _, err := w.Publish(nil); err != nil {
		return nil, err
	}
	return w, nil
}

// Seq returns the seq of the last published board.
func (w *Writer) Seq() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seq
}

// Publish validates entries and writes them as the new board under the
// seqlock, returning the new (even) seq. Errors wrap ErrInvalid: more than
// MaxEntries entries, more than MaxCommCores cores or a core outside
// 0..MaxCore, a bad or duplicate name, a duplicate or out-of-range peer id,
// an invalid state.
func (w *Writer) Publish(entries []Entry) (seq uint64, err error) {
	if err := checkEntries(entries); err != nil {
		return 0, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	encode(&w.buf, 0, entries)
	odd, even := w.seq+1, w.seq+2
	w.words[seqWord].Store(toLE(odd))
	for i := range w.words {
		if i == seqWord {
			continue
		}
		w.words[i].Store(binary.NativeEndian.Uint64(w.buf[i*8:]))
	}
	w.words[seqWord].Store(toLE(even))
	w.seq = even
	return even, nil
}
