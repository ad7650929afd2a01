// Package ivshmem is the guest-side access, for programs in a Linux guest,
// to QEMU's inter-VM shared memory PCI device (ivshmem; vendor 0x1af4,
// device 0x1110, revision 1), so that the FICM stack can run over it as a
// baseline for RainForest's own shared-memory device (rainforest/rfcom/device).
//
// The device has three BARs: BAR0 holds four 32-bit registers (IntrMask,
// IntrStatus, IVPosition = this peer's id, Doorbell = peer<<16 | vector),
// BAR1 the MSI-X table (ivshmem-doorbell only) and BAR2 the shared memory.
// Peer ids come from the ivshmem server (0, 1, ... in connection order).
//
// Find scans sysfs for the device; Open binds it to uio_pci_generic if no
// driver has it, maps BAR0 (resource0) and BAR2 (resource2), sets
// IntrMask to all ones and, if the function has a legacy interrupt pin,
// opens /dev/uioN for Wait. Ring writes the Doorbell register. NewEndpoint
// runs a rainforest/ficm/endpoint over the shared memory: [0, 4096) is
// reserved (left zero; usable as an empty board page), then one output
// section per peer.
//
// Interrupts: uio_pci_generic only handles INTx. QEMU's ivshmem-doorbell
// signals doorbells through MSI-X only and reports interrupt pin 0 (only
// the legacy "ivshmem,msi=off" device, removed in QEMU 4.0, raised INTx
// while IntrStatus & IntrMask != 0). On a function without an interrupt
// pin, Open succeeds but Interrupts reports false and Wait returns
// ErrNoInterrupts: such a device can only be polled.
//
// Every size and id read from sysfs or the device is validated before use.
// A Device's views are invalid after Close; Close must not run
// concurrently with other methods. Wait must be used by one goroutine at a
// time.
package ivshmem

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"rainforest/rfcom/device"
)

// PCI identity and BAR0 register offsets (QEMU docs/specs/ivshmem-spec).
const (
	VendorID = 0x1af4
	DeviceID = 0x1110
	// MinRevision is the oldest revision supported (revision 0, QEMU
	// before 2.6, may expose an invalid BAR2 and IVPosition -1).
	MinRevision = 1

	RegIntrMask   = 0x00
	RegIntrStatus = 0x04 // reading clears it
	RegIVPosition = 0x08 // this peer's id, read-only
	RegDoorbell   = 0x0C // write (peer << 16) | vector
	// RegBARSize is the size of BAR0.
	RegBARSize = 0x100
)

// Limits.
const (
	// MaxPeer is the largest peer id (16-bit field of Doorbell).
	MaxPeer = 0xFFFF
	// MaxVector is the largest doorbell vector (16-bit field of Doorbell).
	MaxVector = 0xFFFF
	// PageSize is the granule of the shared memory layout.
	PageSize = 4096
	// ReservedSize is the reserved first part of the shared memory.
	ReservedSize = PageSize
	// maxMemory bounds the shared memory size accepted from sysfs.
	maxMemory = 1 << 46
)

// PCI config space offsets used here.
const (
	cfgVendor   = 0x00
	cfgDevice   = 0x02
	cfgRevision = 0x08
	cfgIntPin   = 0x3D
	cfgMinSize  = 0x40
)

var (
	// ErrDevice means the function is not a usable ivshmem device
	// (identity, revision or config space).
	ErrDevice = errors.New("ivshmem: unsupported device")
	// ErrLayout means a BAR or a requested layout does not fit.
	ErrLayout = errors.New("ivshmem: bad shared-memory layout")
	// ErrNoPeer is returned for a peer id out of range.
	ErrNoPeer = errors.New("ivshmem: no such peer")
	// ErrVector is returned for a doorbell vector out of range.
	ErrVector = errors.New("ivshmem: bad vector")
	// ErrClosed is returned on a closed Device.
	ErrClosed = errors.New("ivshmem: closed")
	// ErrNoInterrupts is returned by Wait when the function cannot
	// interrupt through uio_pci_generic (no INTx pin: ivshmem-doorbell
	// uses MSI-X only) or was opened WithoutInterrupts.
	ErrNoInterrupts = errors.New("ivshmem: no INTx interrupts (poll only)")
)

// Info describes one ivshmem PCI function found in sysfs.
type Info struct {
	Address       string // PCI address, e.g. "0000:00:05.0"
	Path          string // <sys>/bus/pci/devices/<Address>
	ConfigPath    string // sysfs config space file
	Resource0     string // sysfs file of the register BAR
	Resource2     string // sysfs file of the shared memory BAR
	Resource0Size int64
	Resource2Size int64
	// Doorbell reports whether the function has BAR1 (MSI-X), i.e. is an
	// ivshmem-doorbell connected to a server; ivshmem-plain has no BAR1,
	// no peer ids and no doorbells.
	Doorbell bool
}

// Find lists the ivshmem PCI functions (vendor 0x1af4, device 0x1110)
// under sysRoot (normally "/sys"), sorted by address. No device is not an
// error.
func Find(sysRoot string) ([]Info, error) {
	fns, err := device.FindPCI(sysRoot, VendorID, DeviceID)
	if err != nil {
		return nil, err
	}
	var out []Info
	for _, fn := range fns {
		p := fn.Path
		info := Info{
			Address:    fn.Address,
			Path:       p,
			ConfigPath: filepath.Join(p, "config"),
			Resource0:  filepath.Join(p, "resource0"),
			Resource2:  filepath.Join(p, "resource2"),
		}
		if info.Resource0Size, err = fileSize(info.Resource0); err != nil {
			return nil, fmt.Errorf("ivshmem %s: register BAR: %w", fn.Address, err)
		}
		if info.Resource2Size, err = fileSize(info.Resource2); err != nil {
			return nil, fmt.Errorf("ivshmem %s: memory BAR: %w", fn.Address, err)
		}
		if st, err := os.Stat(filepath.Join(p, "resource1")); err == nil && st.Mode().IsRegular() && st.Size() > 0 {
			info.Doorbell = true
		}
		out = append(out, info)
	}
	return out, nil
}

func fileSize(path string) (int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	if !st.Mode().IsRegular() {
		return 0, fmt.Errorf("%w: %s is not a regular file", ErrLayout, path)
	}
	return st.Size(), nil
}

// Device is an open ivshmem function.
type Device struct {
	info   Info
	id     int
	uio    string
	pin    uint8
	config *os.File
	uioDev *device.UIO // /dev/uioN; nil when not used
	regs   []byte      // BAR0 mapping (RegBARSize bytes)
	mem    []byte      // BAR2 mapping
	closed atomic.Bool
}

// OpenOption changes how Open sets the device up.
type OpenOption func(*openConfig)

type openConfig struct{ noInterrupts bool }

// WithoutInterrupts opens the device without opening /dev/uioN (it is
// still bound to uio_pci_generic, which enables its memory decoding): for
// polling only. Wait then returns ErrNoInterrupts.
func WithoutInterrupts() OpenOption { return func(c *openConfig) { c.noInterrupts = true } }

// checkConfig validates the identity and revision in config space bytes
// and returns the interrupt pin.
func checkConfig(cfg []byte) (pin uint8, err error) {
	if len(cfg) < cfgMinSize {
		return 0, fmt.Errorf("%w: config space of %d bytes", ErrDevice, len(cfg))
	}
	if v, d := binary.LittleEndian.Uint16(cfg[cfgVendor:]), binary.LittleEndian.Uint16(cfg[cfgDevice:]); v != VendorID || d != DeviceID {
		return 0, fmt.Errorf("%w: device %04x:%04x is not %04x:%04x", ErrDevice, v, d, VendorID, DeviceID)
	}
	if r := cfg[cfgRevision]; r < MinRevision {
		return 0, fmt.Errorf("%w: revision %d (QEMU before 2.6), need %d", ErrDevice, r, MinRevision)
	}
	return cfg[cfgIntPin], nil
}

// Open binds the function described by info to uio_pci_generic if no
// driver has it (waiting, bounded by ctx, for <devRoot>/uioN), maps BAR0
// and BAR2, validates their sizes and IVPosition, sets IntrMask to
// 0xFFFFFFFF and, if the function has an interrupt pin, opens /dev/uioN
// and enables INTx. sysRoot and devRoot are normally "/sys" and "/dev".
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
		return nil, fmt.Errorf("ivshmem %s: open config space: %w", info.Address, err)
	}
	cfg, err := io.ReadAll(io.LimitReader(d.config, 256))
	if err != nil {
		return nil, fmt.Errorf("ivshmem %s: read config space: %w", info.Address, err)
	}
	if d.pin, err = checkConfig(cfg); err != nil {
		return nil, err
	}
	if d.uio, err = device.BindUIO(ctx, sysRoot, devRoot, info.Path, info.Address, VendorID, DeviceID); err != nil {
		return nil, err
	}
	if d.regs, err = device.MapResource(info.Resource0, RegBARSize, RegBARSize); err != nil {
		return nil, mapError("register BAR", err)
	}
	id := device.LoadReg32(d.regs, RegIVPosition)
	if id > MaxPeer {
		return nil, fmt.Errorf("%w: IVPosition %#x", ErrLayout, id)
	}
	d.id = int(id)
	memSize, err := fileSize(info.Resource2)
	if err != nil {
		return nil, fmt.Errorf("memory BAR: %w", err)
	}
	if memSize < 2*PageSize || memSize%PageSize != 0 || memSize > maxMemory {
		return nil, fmt.Errorf("%w: memory BAR of %d bytes (a page multiple, %d..%d)", ErrLayout, memSize, 2*PageSize, int64(maxMemory))
	}
	if d.mem, err = device.MapResource(info.Resource2, memSize, memSize); err != nil {
		return nil, mapError("memory BAR", err)
	}
	d.info.Resource2Size = memSize
	device.StoreReg32(d.regs, RegIntrMask, 0xFFFF_FFFF)
	if oc.noInterrupts || d.pin == 0 {
		return d, nil
	}
	if d.uioDev, err = device.OpenUIO(devRoot, d.uio); err != nil {
		return nil, err
	}
	if err := device.UnmaskINTx(d.config); err != nil {
		return nil, err
	}
	return d, nil
}

// mapError names the BAR of a failed mapping, as this package's ErrLayout
// when the file does not fit.
func mapError(bar string, err error) error {
	if errors.Is(err, device.ErrLayout) {
		return fmt.Errorf("%w: %s: %w", ErrLayout, bar, err)
	}
	return fmt.Errorf("%s: %w", bar, err)
}

// Info returns what Find reported for the device (Resource2Size as
// mapped).
func (d *Device) Info() Info { return d.info }

// ID returns this peer's id (IVPosition).
func (d *Device) ID() int { return d.id }

// UIO returns the name of the uio device ("uio0").
func (d *Device) UIO() string { return d.uio }

// Interrupts reports whether Wait can take interrupts (an INTx pin and
// /dev/uioN open).
func (d *Device) Interrupts() bool { return d.uioDev != nil && !d.closed.Load() }

// Memory returns the whole shared memory (BAR2); nil after Close.
func (d *Device) Memory() []byte { return d.mem }

// Ring rings vector of peer through the Doorbell register. The device
// ignores doorbells for peers that are not connected.
func (d *Device) Ring(peer, vector int) error {
	if d.regs == nil {
		return ErrClosed
	}
	if peer < 0 || peer > MaxPeer {
		return fmt.Errorf("%w: %d", ErrNoPeer, peer)
	}
	if vector < 0 || vector > MaxVector {
		return fmt.Errorf("%w: %d", ErrVector, vector)
	}
	device.StoreReg32(d.regs, RegDoorbell, uint32(peer)<<16|uint32(vector))
	return nil
}

// Wait blocks until the device interrupts (spurious returns are possible)
// or ctx is done, in which case it returns ctx's error. After the
// interrupt it reads IntrStatus, which clears it and lowers INTx, and
// clears the INTx-disable bit that uio_pci_generic set. It implements
// ficm/endpoint.Waiter.
func (d *Device) Wait(ctx context.Context) error {
	if d.closed.Load() {
		return ErrClosed
	}
	if d.uioDev == nil {
		return ErrNoInterrupts
	}
	if err := d.uioDev.Wait(ctx); err != nil {
		if errors.Is(err, device.ErrClosed) {
			return ErrClosed
		}
		return err
	}
	_ = device.LoadReg32(d.regs, RegIntrStatus)
	return device.UnmaskINTx(d.config)
}

func (d *Device) release() error {
	var errs []error
	for _, m := range []*[]byte{&d.regs, &d.mem} {
		if *m != nil {
			errs = append(errs, unix.Munmap(*m))
			*m = nil
		}
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

// Close masks the device's interrupts (IntrMask 0), unmaps the BARs and
// closes the files. The views returned by the Device are invalid
// afterwards.
func (d *Device) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	if d.regs != nil {
		device.StoreReg32(d.regs, RegIntrMask, 0)
	}
	return d.release()
}
