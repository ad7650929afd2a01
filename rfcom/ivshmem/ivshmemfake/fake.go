// Package ivshmemfake builds fake QEMU ivshmem PCI functions in a fake
// sysfs and /dev tree (rainforest/rfcom/fakesys), and a fake VMM (a
// fakesys.VMM with ivshmem's registers) that delivers their doorbells, for tests of rainforest/rfcom/ivshmem and the
// tools built on it. Plain files stand in for the BARs and a FIFO for
// /dev/uioN; two functions share one memory file through a symlink.
package ivshmemfake

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"rainforest/rfcom/fakesys"
)

// Device describes one fake ivshmem function.
type Device struct {
	Address string // PCI address, e.g. "0000:00:05.0"
	ID      int    // IVPosition
	MemSize int64  // size of BAR2 (resource2)
	// Revision is the PCI revision (0 means 1; use Revision0 for 0).
	Revision  uint8
	Revision0 bool
	// NoPin leaves the interrupt pin 0, as QEMU's ivshmem-doorbell does
	// (MSI-X only); by default the pin is INTA, as for the legacy
	// "ivshmem,msi=off" device.
	NoPin bool
	// NoBAR1 leaves out resource1 (ivshmem-plain).
	NoBAR1 bool
	// RegSize overrides the size of resource0 (256).
	RegSize int64
	// UIO binds the function to uio_pci_generic with a /dev/uioN FIFO
	// (N = UIONum).
	UIO    bool
	UIONum int
	// Unbound leaves out the driver link (the uio device is there, as if
	// the kernel bound the function as soon as it was asked to).
	Unbound bool
	// SharedMemory, if set, is the resource2 file of another function to
	// share (a symlink).
	SharedMemory string
}

// Config returns the function's 256-byte config space.
func (d Device) Config() []byte {
	cfg := make([]byte, 256)
	binary.LittleEndian.PutUint16(cfg[0x00:], 0x1af4)
	binary.LittleEndian.PutUint16(cfg[0x02:], 0x1110)
	binary.LittleEndian.PutUint16(cfg[0x04:], 0x0002|1<<10) // memory on, INTx masked
	rev := d.Revision
	if rev == 0 && !d.Revision0 {
		rev = 1
	}
	cfg[0x08] = rev
	cfg[0x0A], cfg[0x0B] = 0x00, 0x05 // memory controller, RAM
	if !d.NoPin {
		cfg[0x3D] = 1
	}
	return cfg
}

// Add creates the function d in t and returns the path of its memory BAR
// file.
func Add(t *fakesys.Tree, d Device) (string, error) {
	p := t.Path(d.Address)
	if err := os.MkdirAll(p, 0o755); err != nil {
		return "", err
	}
	regSize := d.RegSize
	if regSize == 0 {
		regSize = 256
	}
	regs := make([]byte, regSize)
	if len(regs) >= 12 {
		binary.LittleEndian.PutUint32(regs[8:], uint32(d.ID))
	}
	files := map[string][]byte{
		"vendor":    []byte("0x1af4\n"),
		"device":    []byte("0x1110\n"),
		"class":     []byte("0x050000\n"),
		"config":    d.Config(),
		"resource0": regs,
	}
	if !d.NoBAR1 {
		files["resource1"] = make([]byte, 4096)
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
	} else if err := os.WriteFile(mem, make([]byte, d.MemSize), 0o644); err != nil {
		return "", err
	}
	if d.UIO {
		drv := filepath.Join(t.Sys, "bus", "pci", "drivers", "uio_pci_generic")
		if !d.Unbound {
			if err := os.Symlink(drv, filepath.Join(p, "driver")); err != nil {
				return "", err
			}
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

// Peer is one function the fake VMM serves: its register BAR file and its
// /dev/uioN FIFO ("" for none).
type Peer struct {
	Resource0, UIO string
}

// ivshmemRegisters are ivshmem's BAR0 registers for the fake VMM: a
// doorbell sets bit 0 of IntrStatus and interrupts while bit 0 of
// IntrMask is set.
func ivshmemRegisters() fakesys.Registers {
	return fakesys.Registers{Doorbell: 12, Status: 4, Enable: 0, StatusBits: func(int) uint32 { return 1 }}
}

// StartVMM starts a fake VMM standing in for QEMU and the ivshmem server
// (see fakesys.VMM): peers[i] is peer i, the IVPosition the server gave
// it. It delivers doorbells until Stop.
func StartVMM(peers []Peer) (*fakesys.VMM, error) {
	fp := make([]fakesys.Peer, len(peers))
	for i, p := range peers {
		fp[i] = fakesys.Peer{ID: i, Resource0: p.Resource0, UIO: p.UIO}
	}
	return fakesys.StartVMM(ivshmemRegisters(), fp)
}
