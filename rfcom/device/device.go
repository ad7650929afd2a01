// Package device is the guest-side access, for programs in a subOS, to the
// inter-subOS shared-memory PCI device (vendor 0x110A, device 0x4106),
// whose registers, vendor capability and memory layout are the ABI in
// rainforest/vmm/shmem/abi (the host's device model, vmm/shmem, uses the
// same definitions; this package links nothing else of the VMM).
//
// Find scans sysfs for the device; Open binds it to uio_pci_generic if no
// driver has it, reads the sizes from its vendor capability, maps the
// register BAR (resource0) and the memory BAR (resource2) and enables
// interrupts (INTx through /dev/uioN); with WithoutInterrupts it only maps
// the BARs (enough for a shared segment). The vendor capability also names
// the region (Name) and says whether the read-write section is read-only
// here (RWReadOnly). Layout, StateTable, RW and Output give
// views of the memory BAR; Ring and SetState write the doorbell and state
// registers; Wait blocks until an interrupt. EndpointConfig and NewEndpoint
// run a rainforest/ficm/endpoint over the device, optionally at an offset
// in every output section (EndpointOptions.SectionOffset).
//
// The memory BAR is mapped read-write as a whole, but only this peer's
// output section and the read-write section may be written: the VMM maps
// the state table and the other peers' sections read-only and drops writes
// to them. Every size and count read from the device (capability, MAX_PEERS,
// ID) is validated against the BAR before any slicing.
//
// A Device's views are invalid after Close; Close must not run concurrently
// with other methods but Wait, which it wakes. Wait must be used by one
// goroutine at a time; it sleeps in poll(2) with no timeout.
package device

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"rainforest/vmm/shmem/abi"
)

// PCI config space offsets used here.
const (
	cfgVendor     = 0x00
	cfgDevice     = 0x02
	cfgCommand    = 0x04
	cfgStatus     = 0x06
	cfgCapPtr     = 0x34
	statusCapList = 1 << 4
	cmdINTxOff    = 1 << 10
	capIDVendor   = 0x09
	maxCaps       = 48
)

var (
	// ErrCapability means the vendor capability is missing or malformed.
	ErrCapability = errors.New("device: bad vendor capability")
	// ErrLayout means the sizes, peer count or id do not fit the BARs.
	ErrLayout = errors.New("device: bad shared-memory layout")
	// ErrDriver means the device could not be used through uio_pci_generic.
	ErrDriver = errors.New("device: driver")
	// ErrNoPeer is returned for a peer id out of range.
	ErrNoPeer = errors.New("device: no such peer")
	// ErrVector is returned for a doorbell vector out of range.
	ErrVector = errors.New("device: bad vector")
	// ErrProtocol means the device does not speak the requested protocol.
	ErrProtocol = errors.New("device: wrong protocol")
)

// checkLayout checks l, whose state table the vendor capability sizes as
// stateSize bytes, against a memory BAR of barSize bytes.
func checkLayout(l abi.Layout, stateSize, barSize uint64) error {
	if err := l.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrLayout, err)
	}
	if stateSize != l.StateTableSize() {
		return fmt.Errorf("%w: state table of %d bytes for %d peers, want %d", ErrLayout, stateSize, l.Peers, l.StateTableSize())
	}
	// Validate bounds every term, so Size cannot overflow.
	if l.Size() > barSize {
		return fmt.Errorf("%w: layout needs %d bytes, memory BAR has %d", ErrLayout, l.Size(), barSize)
	}
	return nil
}

// Device is an open shared-memory PCI function.
type Device struct {
	info   Info
	layout abi.Layout
	id     int
	uio    string
	flags  uint32
	name   string
	irq    bool // interrupts enabled through uio

	config *os.File // sysfs config space, read-write
	regs   []byte   // register BAR mapping
	mem    []byte   // memory BAR mapping
	closed atomic.Bool

	// uioDev is /dev/uioN (nil without interrupts or once closed); waitMu
	// is held by WaitStatus, and by Close before it releases anything.
	uioDev *UIO
	waitMu sync.Mutex
}

// capability is the content of the vendor capability.
type capability struct {
	state, rw, out uint64
	flags          uint32
	name           string
}

// validName reports whether a region name read from the device is printable
// ASCII (names are chosen by the supervisor; anything else is corrupt).
func validName(b []byte) bool {
	for _, c := range b {
		if c < 0x21 || c > 0x7E {
			return false
		}
	}
	return true
}

// parseCapability finds the vendor capability in config space bytes and
// returns its sizes, flags and name.
func parseCapability(cfg []byte) (capability, error) {
	if len(cfg) < 0x40 {
		return capability{}, fmt.Errorf("%w: config space of %d bytes", ErrCapability, len(cfg))
	}
	if v, d := binary.LittleEndian.Uint16(cfg[cfgVendor:]), binary.LittleEndian.Uint16(cfg[cfgDevice:]); v != abi.VendorID || d != abi.DeviceID {
		return capability{}, fmt.Errorf("%w: device %04x:%04x is not %04x:%04x", ErrCapability, v, d, abi.VendorID, abi.DeviceID)
	}
	if binary.LittleEndian.Uint16(cfg[cfgStatus:])&statusCapList == 0 {
		return capability{}, fmt.Errorf("%w: no capability list", ErrCapability)
	}
	ptr := int(cfg[cfgCapPtr]) &^ 3
	for range maxCaps {
		if ptr == 0 {
			break
		}
		if ptr < 0x40 || ptr+2 > len(cfg) {
			return capability{}, fmt.Errorf("%w: capability pointer %#x outside %d-byte config space", ErrCapability, ptr, len(cfg))
		}
		if cfg[ptr] == capIDVendor {
			if ptr+abi.CapLength > len(cfg) {
				return capability{}, fmt.Errorf("%w: vendor capability at %#x truncated", ErrCapability, ptr)
			}
			if n := int(cfg[ptr+abi.CapLengthOffset]); n < abi.CapLength {
				return capability{}, fmt.Errorf("%w: vendor capability length %d, want %d", ErrCapability, n, abi.CapLength)
			}
			c := capability{
				state: uint64(binary.LittleEndian.Uint32(cfg[ptr+abi.CapStateTableSize:])),
				rw:    binary.LittleEndian.Uint64(cfg[ptr+abi.CapRWSize:]),
				out:   binary.LittleEndian.Uint64(cfg[ptr+abi.CapOutputSize:]),
				flags: binary.LittleEndian.Uint32(cfg[ptr+abi.CapFlags:]),
			}
			name := cfg[ptr+abi.CapName : ptr+abi.CapName+abi.NameSize]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				if !allZero(name[i:]) {
					return capability{}, fmt.Errorf("%w: region name not NUL-padded", ErrCapability)
				}
				name = name[:i]
			}
			if !validName(name) {
				return capability{}, fmt.Errorf("%w: region name %q not printable", ErrCapability, name)
			}
			c.name = string(name)
			return c, nil
		}
		ptr = int(cfg[ptr+1]) &^ 3
	}
	return capability{}, fmt.Errorf("%w: no vendor capability", ErrCapability)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// OpenOption changes how Open sets the device up.
type OpenOption func(*openConfig)

type openConfig struct {
	noInterrupts bool
}

// WithoutInterrupts opens the device without binding it to uio_pci_generic
// and without enabling its interrupts (INT_CONTROL stays as it is): enough
// for a shared segment, whose memory is all that is used. Wait and
// WaitStatus then fail with ErrNoInterrupts.
func WithoutInterrupts() OpenOption { return func(c *openConfig) { c.noInterrupts = true } }

// Open binds the device described by info to uio_pci_generic if no driver
// has it (waiting, bounded by ctx, for <devRoot>/uioN), reads its vendor
// capability, maps its BARs, validates the layout and enables interrupts
// (unless WithoutInterrupts is given). sysRoot and devRoot are normally
// "/sys" and "/dev".
func Open(ctx context.Context, sysRoot, devRoot string, info Info, opts ...OpenOption) (d *Device, err error) {
	var oc openConfig
	for _, o := range opts {
		o(&oc)
	}
	if info.Path == "" {
		info.Path = filepath.Join(sysRoot, "bus", "pci", "devices", info.Address)
	}
	dev := &Device{info: info}
	defer func() {
		if err != nil {
			_ = dev.release()
			d = nil
		}
	}()
	d = dev
	if d.config, err = os.OpenFile(info.ConfigPath, os.O_RDWR, 0); err != nil {
		return nil, fmt.Errorf("open config space: %w", err)
	}
	cfg, err := io.ReadAll(io.LimitReader(d.config, 4096))
	if err != nil {
		return nil, fmt.Errorf("read config space: %w", err)
	}
	c, err := parseCapability(cfg)
	if err != nil {
		return nil, err
	}
	d.flags, d.name = c.flags, c.name
	d.info.Name, d.info.Flags = c.name, c.flags
	if !oc.noInterrupts {
		if d.uio, err = bindUIO(ctx, sysRoot, devRoot, info.Path, info.Address); err != nil {
			return nil, err
		}
	}
	if d.regs, err = mapPath(info.Resource0, abi.RegBARSize, abi.RegBARSize); err != nil {
		return nil, fmt.Errorf("register BAR: %w", err)
	}
	d.id = int(load32(d.regs, abi.RegID))
	d.layout = abi.Layout{Peers: int(load32(d.regs, abi.RegMaxPeers)), RWSize: c.rw, OutputSize: c.out}
	memSize, err := fileSize(info.Resource2)
	if err != nil {
		return nil, fmt.Errorf("memory BAR: %w", err)
	}
	if err := checkLayout(d.layout, c.state, uint64(memSize)); err != nil {
		return nil, err
	}
	if d.id < 0 || d.id >= d.layout.Peers {
		return nil, fmt.Errorf("%w: ID %d of %d peers", ErrLayout, d.id, d.layout.Peers)
	}
	if d.mem, err = mapPath(info.Resource2, memSize, int64(d.layout.Size())); err != nil {
		return nil, fmt.Errorf("memory BAR: %w", err)
	}
	if oc.noInterrupts {
		return d, nil
	}
	if d.uioDev, err = OpenUIO(devRoot, d.uio); err != nil {
		return nil, err
	}
	if err := d.unmaskINTx(); err != nil {
		return nil, err
	}
	store32(d.regs, abi.RegIntControl, abi.IntControlEnabled)
	d.irq = true
	return d, nil
}

func fileSize(path string) (int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

func mapPath(path string, size, need int64) ([]byte, error) { return MapResource(path, size, need) }

// MapResource maps size bytes of a sysfs BAR file (resourceN) read-write
// and shared; the file must be a regular file of at least need bytes.
func MapResource(path string, size, need int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() || st.Size() < need || size < need || size <= 0 || int64(int(size)) != size {
		return nil, fmt.Errorf("%w: %s is %d bytes, need %d", ErrLayout, path, st.Size(), need)
	}
	return mapFile(f, int(size))
}

// unmaskINTx clears the INTx-disable bit of the command register, which
// uio_pci_generic sets on every interrupt.
func (d *Device) unmaskINTx() error { return UnmaskINTx(d.config) }

// ConfigSpace is a PCI function's sysfs config file, open read-write.
type ConfigSpace interface {
	io.ReaderAt
	io.WriterAt
}

// UnmaskINTx clears the INTx-disable bit of the command register in a
// function's config space (uio_pci_generic sets it on every interrupt, so
// that the next interrupt can only be delivered after this). It writes
// nothing when the bit is already clear.
func UnmaskINTx(config ConfigSpace) error {
	var b [2]byte
	if _, err := config.ReadAt(b[:], cfgCommand); err != nil {
		return fmt.Errorf("read command register: %w", err)
	}
	cmd := binary.LittleEndian.Uint16(b[:])
	if cmd&cmdINTxOff == 0 {
		return nil
	}
	binary.LittleEndian.PutUint16(b[:], cmd&^cmdINTxOff)
	if _, err := config.WriteAt(b[:], cfgCommand); err != nil {
		return fmt.Errorf("write command register: %w", err)
	}
	return nil
}

// Info returns what Find reported for the device.
func (d *Device) Info() Info { return d.info }

// Name returns the region's name from the vendor capability ("ficm" for
// the FICM group, the segment's name for a segment).
func (d *Device) Name() string { return d.name }

// Flags returns the vendor capability's flags (abi.CapFlag*).
func (d *Device) Flags() uint32 { return d.flags }

// RWReadOnly reports whether the read-write section is mapped read-only
// for this peer (abi.CapFlagRWReadOnly): writing to RW() then faults.
func (d *Device) RWReadOnly() bool { return d.flags&abi.CapFlagRWReadOnly != 0 }

// UIO returns the name of the uio device ("uio0"; "" when opened
// WithoutInterrupts).
func (d *Device) UIO() string { return d.uio }

// ID returns this peer's id.
func (d *Device) ID() int { return d.id }

// Peers returns the number of peers.
func (d *Device) Peers() int { return d.layout.Peers }

// Layout returns the memory BAR layout.
func (d *Device) Layout() abi.Layout { return d.layout }

// Memory returns the used part of the memory BAR (Layout().Size() bytes).
// Only the read-write section and this peer's output section may be
// written.
func (d *Device) Memory() []byte { return d.section(0, d.layout.Size()) }

// section returns mem[off:off+size]; nil on a closed Device. Open checked
// that the layout lies inside the mapping.
func (d *Device) section(off, size uint64) []byte {
	if d.mem == nil {
		return nil
	}
	return d.mem[off : off+size : off+size]
}

// StateTable returns the state table (read-only: the VMM writes it).
func (d *Device) StateTable() []byte { return d.section(0, d.layout.StateTableSize()) }

// RW returns the shared read-write section (possibly empty).
func (d *Device) RW() []byte { return d.section(d.layout.RWOffset(), d.layout.RWSize) }

// Output returns peer's output section; only Output(ID()) may be written.
func (d *Device) Output(peer int) ([]byte, error) {
	if peer < 0 || peer >= d.layout.Peers {
		return nil, fmt.Errorf("%w: %d of %d", ErrNoPeer, peer, d.layout.Peers)
	}
	return d.section(d.layout.OutputOffset(peer), d.layout.OutputSize), nil
}

// Outputs returns every peer's output section, indexed by peer id.
func (d *Device) Outputs() [][]byte {
	s := make([][]byte, d.layout.Peers)
	for p := range s {
		s[p] = d.section(d.layout.OutputOffset(p), d.layout.OutputSize)
	}
	return s
}

// Ring rings vector of peer through the DOORBELL register.
func (d *Device) Ring(peer, vector int) error {
	if d.regs == nil {
		return ErrClosed
	}
	if peer < 0 || peer >= d.layout.Peers {
		return fmt.Errorf("%w: %d of %d", ErrNoPeer, peer, d.layout.Peers)
	}
	if vector < 0 || vector > abi.MaxVector {
		return fmt.Errorf("%w: %d", ErrVector, vector)
	}
	store32(d.regs, abi.RegDoorbell, abi.Doorbell(peer, vector))
	return nil
}

// SetState writes this peer's STATE register (the VMM mirrors it into the
// state table and tells the other peers).
// It does nothing on a closed Device.
func (d *Device) SetState(state uint32) {
	if d.regs != nil {
		store32(d.regs, abi.RegState, state)
	}
}

// State returns peer's entry of the state table.
func (d *Device) State(peer int) (uint32, error) {
	if d.mem == nil {
		return 0, ErrClosed
	}
	if peer < 0 || peer >= d.layout.Peers {
		return 0, fmt.Errorf("%w: %d of %d", ErrNoPeer, peer, d.layout.Peers)
	}
	return load32(d.mem, abi.StateEntryOffset(peer)), nil
}

// SetInterrupts enables or disables the device's interrupts (INT_CONTROL).
// It does nothing on a closed Device.
func (d *Device) SetInterrupts(on bool) {
	if d.regs == nil {
		return
	}
	var v uint32
	if on {
		v = abi.IntControlEnabled
	}
	store32(d.regs, abi.RegIntControl, v)
}

func (d *Device) release() error {
	var errs []error
	if d.regs != nil {
		errs = append(errs, unmap(d.regs))
		d.regs = nil
	}
	if d.mem != nil {
		errs = append(errs, unmap(d.mem))
		d.mem = nil
	}
	if d.uioDev != nil {
		errs = append(errs, d.uioDev.Close())
		d.uioDev = nil
	}
	if d.config != nil {
		errs = append(errs, d.config.Close())
		d.config = nil
	}
	return errors.Join(errs...)
}

// Close disables interrupts, unmaps the BARs and closes the files. A Wait
// blocked meanwhile returns ErrClosed; the other methods must not run
// concurrently with Close. The views returned by the Device are invalid
// afterwards.
func (d *Device) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	var uerr error
	if d.uioDev != nil {
		uerr = d.uioDev.Close() // wakes a blocked Wait
	}
	d.waitMu.Lock()
	defer d.waitMu.Unlock()
	if d.regs != nil && d.irq {
		store32(d.regs, abi.RegIntControl, 0)
	}
	return errors.Join(uerr, d.release())
}
