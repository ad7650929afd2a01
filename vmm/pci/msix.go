package pci

import (
	"encoding/binary"
	"fmt"
	"sync"
)

// MSIMessage is an MSI message: the address and data the device would write.
type MSIMessage struct {
	Addr uint64
	Data uint32
}

// MSIRouter delivers a function's MSI-X interrupts. The VMM implements one
// per PCI function (vector numbers are per function). Until its first Route
// call a vector is masked with a zero message. Its methods are called with
// the MSI-X state locked: they must not call back into the device.
type MSIRouter interface {
	// Route is called when an entry's message or mask changes, or MSI-X is
	// enabled/disabled (masked=true when not deliverable).
	Route(vector int, msg MSIMessage, masked bool) error
	// Fire delivers vector's message now.
	Fire(vector int) error
}

// MSI-X layout constants.
const (
	MSIXEntrySize   = 16
	MSIXMaxVectors  = 2048
	msixCtrlEnable  = 1 << 15
	msixCtrlFnMask  = 1 << 14
	msixEntryMasked = 1
)

type routed struct {
	msg    MSIMessage
	masked bool
}

// MSIX is an MSI-X capability with its table and pending-bit array (PBA).
// The table and PBA live in a BAR chosen by the device; the device forwards
// accesses to them to ReadTable/WriteTable and ReadPBA/WritePBA, and calls
// ControlWritten after every config-space write. It is safe for concurrent
// use.
type MSIX struct {
	mu      sync.Mutex
	cfg     *ConfigSpace
	capOff  int
	router  MSIRouter
	n       int
	table   []byte
	pba     []uint64
	enabled bool
	fnMask  bool
	last    []routed
}

// NewMSIX adds an MSI-X capability with n vectors to cfg. The table is at
// tableOffset and the PBA at pbaOffset inside BAR bar (offsets 8-byte
// aligned; the caller makes the BAR big enough: TableSize and PBASize).
func NewMSIX(cfg *ConfigSpace, n, bar int, tableOffset, pbaOffset uint32, router MSIRouter) (*MSIX, error) {
	if n < 1 || n > MSIXMaxVectors {
		return nil, fmt.Errorf("%w: %d vectors", ErrBadVector, n)
	}
	if bar < 0 || bar >= NumBARs || tableOffset&7 != 0 || pbaOffset&7 != 0 {
		return nil, fmt.Errorf("%w: MSI-X BIR %d table %#x PBA %#x", ErrBadBAR, bar, tableOffset, pbaOffset)
	}
	body := make([]byte, 10)
	binary.LittleEndian.PutUint16(body[0:], uint16(n-1))
	binary.LittleEndian.PutUint32(body[2:], tableOffset|uint32(bar))
	binary.LittleEndian.PutUint32(body[6:], pbaOffset|uint32(bar))
	wmask := make([]byte, 10)
	binary.LittleEndian.PutUint16(wmask[0:], msixCtrlEnable|msixCtrlFnMask)
	off, err := cfg.AddCapability(CapIDMSIX, body, wmask)
	if err != nil {
		return nil, err
	}
	m := &MSIX{
		cfg:    cfg,
		capOff: off,
		router: router,
		n:      n,
		table:  make([]byte, n*MSIXEntrySize),
		pba:    make([]uint64, (n+63)/64),
		last:   make([]routed, n),
	}
	for v := 0; v < n; v++ {
		m.table[v*MSIXEntrySize+12] = msixEntryMasked
		m.last[v].masked = true
	}
	return m, nil
}

// TableSize returns the table's size in bytes.
func (m *MSIX) TableSize() uint64 { return uint64(m.n * MSIXEntrySize) }

// PBASize returns the PBA's size in bytes.
func (m *MSIX) PBASize() uint64 { return uint64(len(m.pba) * 8) }

// Vectors returns the number of vectors.
func (m *MSIX) Vectors() int { return m.n }

// CapOffset returns the capability's offset in config space.
func (m *MSIX) CapOffset() int { return m.capOff }

func (m *MSIX) entryLocked(v int) (MSIMessage, bool) {
	e := m.table[v*MSIXEntrySize:]
	msg := MSIMessage{
		Addr: uint64(binary.LittleEndian.Uint32(e[0:])) | uint64(binary.LittleEndian.Uint32(e[4:]))<<32,
		Data: binary.LittleEndian.Uint32(e[8:]),
	}
	return msg, e[12]&msixEntryMasked != 0
}

func (m *MSIX) maskedLocked(v int) bool {
	_, em := m.entryLocked(v)
	return !m.enabled || m.fnMask || em
}

// syncLocked calls Route for v when its state changed and delivers a
// pending interrupt that became deliverable.
func (m *MSIX) syncLocked(v int) error {
	msg, _ := m.entryLocked(v)
	r := routed{msg: msg, masked: m.maskedLocked(v)}
	var err error
	if r != m.last[v] {
		m.last[v] = r
		if e := m.router.Route(v, r.msg, r.masked); e != nil {
			err = fmt.Errorf("pci: route MSI-X vector %d: %w", v, e)
		}
	}
	if !r.masked && m.pba[v/64]&(1<<(v%64)) != 0 {
		m.pba[v/64] &^= 1 << (v % 64)
		if e := m.router.Fire(v); e != nil && err == nil {
			err = fmt.Errorf("pci: fire MSI-X vector %d: %w", v, e)
		}
	}
	return err
}

// ControlWritten re-reads the message control register after a config
// write and re-routes all vectors if enable or function mask changed.
func (m *MSIX) ControlWritten() error {
	ctrl := m.cfg.Uint16(m.capOff + 2)
	m.mu.Lock()
	defer m.mu.Unlock()
	en, fm := ctrl&msixCtrlEnable != 0, ctrl&msixCtrlFnMask != 0
	if en == m.enabled && fm == m.fnMask {
		return nil
	}
	m.enabled, m.fnMask = en, fm
	var err error
	for v := 0; v < m.n; v++ {
		if e := m.syncLocked(v); e != nil && err == nil {
			err = e
		}
	}
	return err
}

// Enabled reports whether MSI-X is enabled.
func (m *MSIX) Enabled() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.enabled
}

// ReadTable reads the table at offset (any width; outside reads as 0).
func (m *MSIX) ReadTable(offset uint64, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range data {
		o := offset + uint64(i)
		if o < uint64(len(m.table)) {
			data[i] = m.table[o]
		} else {
			data[i] = 0
		}
	}
}

// WriteTable writes the table at offset and routes the entries touched.
func (m *MSIX) WriteTable(offset uint64, data []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	first, last := -1, -1
	for i, b := range data {
		o := offset + uint64(i)
		if o >= uint64(len(m.table)) {
			break
		}
		switch o % MSIXEntrySize {
		case 12:
			b &= msixEntryMasked
		case 13, 14, 15:
			continue
		}
		m.table[o] = b
		v := int(o / MSIXEntrySize)
		if first < 0 {
			first = v
		}
		last = v
	}
	var err error
	for v := first; v >= 0 && v <= last; v++ {
		if e := m.syncLocked(v); e != nil && err == nil {
			err = e
		}
	}
	return err
}

// ReadPBA reads the pending-bit array at offset.
func (m *MSIX) ReadPBA(offset uint64, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range data {
		o := offset + uint64(i)
		data[i] = 0
		if o < uint64(len(m.pba))*8 {
			data[i] = byte(m.pba[o/8] >> (8 * (o % 8)))
		}
	}
}

// WritePBA ignores the write: the PBA is read-only.
func (m *MSIX) WritePBA(offset uint64, data []byte) {}

// Pending reports vector's pending bit.
func (m *MSIX) Pending(vector int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if vector < 0 || vector >= m.n {
		return false
	}
	return m.pba[vector/64]&(1<<(vector%64)) != 0
}

// Signal raises vector: it fires now if deliverable, otherwise it sets the
// pending bit and fires when the vector becomes deliverable. Errors:
// ErrBadVector for a vector outside the table, ErrMSIXDisabled when MSI-X
// is off (nothing is latched then), or the router's error.
func (m *MSIX) Signal(vector int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if vector < 0 || vector >= m.n {
		return fmt.Errorf("%w: %d of %d", ErrBadVector, vector, m.n)
	}
	if !m.enabled {
		return ErrMSIXDisabled
	}
	if m.maskedLocked(vector) {
		m.pba[vector/64] |= 1 << (vector % 64)
		return nil
	}
	if err := m.router.Fire(vector); err != nil {
		return fmt.Errorf("pci: fire MSI-X vector %d: %w", vector, err)
	}
	return nil
}

// Reset masks every entry, clears messages and pending bits and disables
// MSI-X (function-level reset).
func (m *MSIX) Reset() error {
	ctrl := m.cfg.Uint16(m.capOff + 2)
	m.cfg.PutUint16(m.capOff+2, ctrl&^(msixCtrlEnable|msixCtrlFnMask))
	m.mu.Lock()
	defer m.mu.Unlock()
	m.enabled, m.fnMask = false, false
	clear(m.table)
	clear(m.pba)
	var err error
	for v := 0; v < m.n; v++ {
		m.table[v*MSIXEntrySize+12] = msixEntryMasked
		if e := m.syncLocked(v); e != nil && err == nil {
			err = e
		}
	}
	return err
}
