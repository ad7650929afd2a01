// Package fakesys builds fake sysfs and /dev trees holding shared-memory PCI
// functions, with the config space of the real device model (vmm/shmem),
// for tests of rfcom and its tools. Plain files stand in for the BARs and
// a FIFO for /dev/uioN.
package fakesys

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"rainforest/vmm/pci"
	"rainforest/vmm/shmem"
	"rainforest/vmm/shmem/abi"
)

// Device describes one fake function.
type Device struct {
	Address    string // PCI address, e.g. "0000:00:04.0"
	Protocol   uint8  // abi.ProtocolFICM or abi.ProtocolSegment
	Name       string // region name
	ReadOnly   bool   // RW section read-only for this peer
	ID, Peers  int
	RWSize     uint64
	OutputSize uint64
	// UIO binds the function to uio_pci_generic with a /dev/uioN FIFO
	// (N = UIONum).
	UIO    bool
	UIONum int
	// SharedMemory, if set, is the resource2 file of another tree's
	// function to share (a symlink), so that two trees form one group.
	SharedMemory string
}

// Tree is a fake /sys and /dev.
type Tree struct {
	Sys, Dev string
}

type nopRouter struct{}

func (nopRouter) Route(int, pci.MSIMessage, bool) error { return nil }
func (nopRouter) Fire(int) error                        { return nil }

type nopBell struct{}

func (nopBell) Ring(int, int) error   { return nil }
func (nopBell) StateChanged(uint32)   {}
func (nopBell) InterruptModeChanged() {}
func (nopBell) INTxPending() bool     { return false }

// New makes an empty tree under dir.
func New(dir string) (*Tree, error) {
	t := &Tree{Sys: filepath.Join(dir, "sys"), Dev: filepath.Join(dir, "dev")}
	for _, d := range []string{filepath.Join(t.Sys, "bus", "pci", "devices"), filepath.Join(t.Sys, "bus", "pci", "drivers", "uio_pci_generic"), t.Dev} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// Path returns the sysfs directory of the function at addr.
func (t *Tree) Path(addr string) string {
	return filepath.Join(t.Sys, "bus", "pci", "devices", addr)
}

// Layout returns the device model's layout for d.
func (d Device) Layout() abi.Layout {
	return abi.Layout{Peers: d.Peers, RWSize: d.RWSize, OutputSize: d.OutputSize}
}

// Add creates the function d and returns the path of its memory BAR file.
func (t *Tree) Add(d Device) (string, error) {
	l := d.Layout()
	model, err := shmem.NewWithIdentity(d.ID, l, 1, make([]byte, l.StateTableSize()), nopRouter{}, nopBell{},
		shmem.Identity{Protocol: d.Protocol, Name: d.Name, RWReadOnly: d.ReadOnly})
	if err != nil {
		return "", err
	}
	cfg := make([]byte, 256)
	model.ReadConfig(0, cfg)
	p := t.Path(d.Address)
	if err := os.MkdirAll(p, 0o755); err != nil {
		return "", err
	}
	class := uint32(abi.ClassOther) | uint32(d.Protocol)
	regs := make([]byte, abi.RegBARSize)
	binary.LittleEndian.PutUint32(regs[abi.RegID:], uint32(d.ID))
	binary.LittleEndian.PutUint32(regs[abi.RegMaxPeers:], uint32(d.Peers))
	files := map[string][]byte{
		"vendor":    []byte(fmt.Sprintf("0x%04x\n", abi.VendorID)),
		"device":    []byte(fmt.Sprintf("0x%04x\n", abi.DeviceID)),
		"class":     []byte(fmt.Sprintf("0x%06x\n", class)),
		"config":    cfg,
		"resource0": regs,
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(p, name), data, 0o644); err != nil {
			return "", err
		}
	}
	mem := filepath.Join(p, "resource2")
	if d.SharedMemory != "" {
		if err := os.Symlink(d.SharedMemory, mem); err != nil {
			return "", err
		}
	} else if err := os.WriteFile(mem, make([]byte, l.BARSize()), 0o644); err != nil {
		return "", err
	}
	if d.UIO {
		drv := filepath.Join(t.Sys, "bus", "pci", "drivers", "uio_pci_generic")
		if err := os.Symlink(drv, filepath.Join(p, "driver")); err != nil {
			return "", err
		}
		uio := fmt.Sprintf("uio%d", d.UIONum)
		if err := os.MkdirAll(filepath.Join(p, "uio", uio), 0o755); err != nil {
			return "", err
		}
		if err := unix.Mkfifo(filepath.Join(t.Dev, uio), 0o600); err != nil {
			return "", err
		}
	}
	return mem, nil
}

// WriteMemory writes data at off of the function's memory BAR file.
func (t *Tree) WriteMemory(addr string, off int64, data []byte) error {
	f, err := os.OpenFile(filepath.Join(t.Path(addr), "resource2"), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteAt(data, off)
	return err
}

// ReadMemory reads n bytes at off of the function's memory BAR file.
func (t *Tree) ReadMemory(addr string, off int64, n int) ([]byte, error) {
	f, err := os.Open(filepath.Join(t.Path(addr), "resource2"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, n)
	_, err = f.ReadAt(b, off)
	return b, err
}
