// Package ivshmemfake builds fake QEMU ivshmem PCI functions in a fake
// sysfs and /dev tree (rainforest/rfcom/fakesys), and a fake VMM that
// delivers their doorbells, for tests of rainforest/rfcom/ivshmem and the
// tools built on it. Plain files stand in for the BARs and a FIFO for
// /dev/uioN; two functions share one memory file through a symlink.
package ivshmemfake

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

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

// noBell marks an empty Doorbell register (peer 0xFFFF, vector 0xFFFF:
// never written by the tests' rings).
const noBell = 0xFFFF_FFFF

// VMM stands in for QEMU and the ivshmem server: it takes each peer's
// Doorbell register writes and, for a write to peer i (the index in the
// peers slice), sets bit 0 of i's IntrStatus and, if i's IntrMask allows
// it, signals i's uio FIFO (INTx).
type VMM struct {
	peers  []Peer
	regs   [][]byte
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	rung   int64
}

// StartVMM maps the peers' register BARs and starts delivering doorbells
// until Stop.
func StartVMM(peers []Peer) (*VMM, error) {
	v := &VMM{peers: peers}
	for _, p := range peers {
		f, err := os.OpenFile(p.Resource0, os.O_RDWR, 0)
		if err != nil {
			v.unmap()
			return nil, err
		}
		b, err := unix.Mmap(int(f.Fd()), 0, 16, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		f.Close()
		if err != nil {
			v.unmap()
			return nil, err
		}
		v.regs = append(v.regs, b)
		store(b, 12, noBell)
	}
	ctx, cancel := context.WithCancel(context.Background())
	v.cancel = cancel
	v.wg.Go(func() { v.run(ctx) })
	return v, nil
}

// Rung returns the number of doorbells delivered.
func (v *VMM) Rung() int64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.rung
}

func (v *VMM) run(ctx context.Context) {
	writers := make([]*os.File, len(v.peers))
	defer func() {
		for _, w := range writers {
			if w != nil {
				w.Close()
			}
		}
	}()
	for ctx.Err() == nil {
		for i := range v.regs {
			bell := swap(v.regs[i], 12, noBell)
			if bell == noBell {
				continue
			}
			target := int(bell >> 16)
			if target >= len(v.regs) {
				continue
			}
			v.mu.Lock()
			v.rung++
			v.mu.Unlock()
			or(v.regs[target], 4, 1)
			if load(v.regs[target], 0)&1 == 0 || v.peers[target].UIO == "" {
				continue
			}
			for try := 0; try < 2; try++ {
				if writers[target] == nil {
					// Fails (ENXIO) while nobody has the uio device open.
					w, err := os.OpenFile(v.peers[target].UIO, os.O_WRONLY|unix.O_NONBLOCK, 0)
					if err != nil {
						break
					}
					writers[target] = w
				}
				// A full pipe: an interrupt is already pending.
				_, err := writers[target].Write([]byte{1, 0, 0, 0})
				if err == nil || errors.Is(err, unix.EAGAIN) {
					break
				}
				writers[target].Close() // the reader went away: reopen
				writers[target] = nil
			}
		}
		time.Sleep(20 * time.Microsecond)
	}
}

func (v *VMM) unmap() {
	for _, b := range v.regs {
		_ = unix.Munmap(b)
	}
	v.regs = nil
}

// Stop stops delivering doorbells and unmaps the registers.
func (v *VMM) Stop() {
	v.cancel()
	v.wg.Wait()
	v.unmap()
}
