package endpoint

import (
	"fmt"
	"sync/atomic"

	"rainforest/ficm/queue"
	"rainforest/ficm/ring"
	"rainforest/vmm/shmem/abi"
)

const (
	// MaxPeers is the largest number of peers in one FICM group.
	MaxPeers = 256
	// PageSize is the alignment of the transmit area and the size granule
	// of a section.
	PageSize = 4096
)

// Layout is the layout of every peer's output section for a group of peers
// with rings of a given slot count; see the package documentation for the
// ABI. All peers of a group use the same Layout.
type Layout struct {
	peers int
	slots int
}

// NewLayout returns the layout for peers peers (1..MaxPeers) and rings of
// slots slots (a power of two up to ring.MaxSlots).
func NewLayout(peers, slots int) (Layout, error) {
	if peers < 1 || peers > MaxPeers {
		return Layout{}, fmt.Errorf("%w: %d peers, want 1..%d", ring.ErrLayout, peers, MaxPeers)
	}
	if err := ring.CheckSlots(slots); err != nil {
		return Layout{}, err
	}
	return Layout{peers: peers, slots: slots}, nil
}

// Peers returns the number of peers.
func (l Layout) Peers() int { return l.peers }

// Slots returns the slot count of every ring.
func (l Layout) Slots() int { return l.slots }

// RxOffset returns the offset, in the section of peer `to`, of the receiver
// area (consumer index and armed word) of the queue from peer `from`.
func (l Layout) RxOffset(from int) int { return from * queue.RxSize }

// TxBase returns the offset of the transmit area in a section.
func (l Layout) TxBase() int { return roundUp(l.peers*queue.RxSize, PageSize) }

// TxOffset returns the offset, in the section of peer `from`, of the sender
// area (producer index and slots) of the queue to peer `to`.
func (l Layout) TxOffset(to int) int { return l.TxBase() + to*queue.TxSize(l.slots) }

// SectionSize returns the size of one peer's output section.
func (l Layout) SectionSize() int {
	return roundUp(l.TxBase()+l.peers*queue.TxSize(l.slots), PageSize)
}

// QueueAreas returns the sender area (in the section of `from`) and the
// receiver area (in the section of `to`) of the queue from `from` to `to`.
// sections[i] is the output section of peer i.
func (l Layout) QueueAreas(sections [][]byte, from, to int) (tx, rx []byte, err error) {
	if len(sections) != l.peers {
		return nil, nil, fmt.Errorf("%w: %d sections for %d peers", ring.ErrLayout, len(sections), l.peers)
	}
	if from < 0 || from >= l.peers || to < 0 || to >= l.peers {
		return nil, nil, fmt.Errorf("%w: queue %d->%d", ErrNoPeer, from, to)
	}
	for _, p := range []int{from, to} {
		if len(sections[p]) < l.SectionSize() {
			return nil, nil, fmt.Errorf("%w: section of peer %d is %d bytes, need %d", ring.ErrLayout, p, len(sections[p]), l.SectionSize())
		}
	}
	txOff, rxOff := l.TxOffset(to), l.RxOffset(from)
	return sections[from][txOff : txOff+queue.TxSize(l.slots)], sections[to][rxOff : rxOff+queue.RxSize], nil
}

func roundUp(n, to int) int { return (n + to - 1) / to * to }

// StateTableSize returns the size of the state table of peers peers.
func StateTableSize(peers int) int { return roundUp(peers*abi.StateEntrySize, ring.SlotSize) }

// StateTable is the group's peer state table, in the device's format
// (rainforest/vmm/shmem/abi): for each peer id a uint32 (host byte order,
// little-endian) at abi.StateEntryOffset(id) whose bit 0 (abi.StateAlive)
// says the peer is alive; other bits are reserved and zero. Guests map it
// read-only: a guest's entry changes through its STATE register, the
// supervisor writes its own and clears those of departed peers.
type StateTable struct {
	words []*atomic.Uint32
}

// NewStateTable returns the state table of peers peers stored in buf, which
// must be at least StateTableSize(peers) bytes and 4-byte aligned.
func NewStateTable(buf []byte, peers int) (*StateTable, error) {
	if peers < 1 || peers > MaxPeers {
		return nil, fmt.Errorf("%w: %d peers, want 1..%d", ring.ErrLayout, peers, MaxPeers)
	}
	if len(buf) < StateTableSize(peers) {
		return nil, fmt.Errorf("%w: state table %d bytes, need %d", ring.ErrLayout, len(buf), StateTableSize(peers))
	}
	st := &StateTable{words: make([]*atomic.Uint32, peers)}
	for i := range st.words {
		w, err := ring.Uint32At(buf, abi.StateEntryOffset(i))
		if err != nil {
			return nil, fmt.Errorf("state of peer %d: %w", i, err)
		}
		st.words[i] = w
	}
	return st, nil
}

// Alive reports whether peer is alive; an unknown peer is not.
func (st *StateTable) Alive(peer int) bool {
	if peer < 0 || peer >= len(st.words) {
		return false
	}
	return st.words[peer].Load()&abi.StateAlive != 0
}

// SetAlive records whether peer is alive and reports whether its entry
// changed. Only the supervisor calls it (on its own entry and on those of
// departed peers); it then raises the state-change interrupt on the other
// peers when the entry changed.
func (st *StateTable) SetAlive(peer int, alive bool) (changed bool, err error) {
	if peer < 0 || peer >= len(st.words) {
		return false, fmt.Errorf("%w: peer %d", ErrNoPeer, peer)
	}
	var v uint32
	if alive {
		v = abi.StateAlive
	}
	return st.words[peer].Swap(v) != v, nil
}
