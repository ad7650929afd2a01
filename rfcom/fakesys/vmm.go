package fakesys

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"rainforest/vmm/shmem/abi"
)

// Registers says where a fake VMM finds the registers of the functions it
// serves, as offsets in their register BAR files.
type Registers struct {
	// Doorbell is written by the guest: target peer << 16 | vector.
	Doorbell int
	// Status gets StatusBits(vector) ORed in when a doorbell reaches the
	// function.
	Status     int
	StatusBits func(vector int) uint32
	// Enable's bit 0 must be set for the function to be interrupted.
	Enable int
}

// ShmemRegisters are the registers of RainForest's shared-memory device
// (rainforest/vmm/shmem/abi).
func ShmemRegisters() Registers {
	return Registers{
		Doorbell: abi.RegDoorbell, Status: abi.RegIntStatus, Enable: abi.RegIntControl,
		StatusBits: func(v int) uint32 { return 1 << min(v, abi.IntStatusLastBit) },
	}
}

// Peer is one function a fake VMM serves.
type Peer struct {
	ID        int    // its peer id: doorbells to ID reach it
	Resource0 string // its register BAR file
	UIO       string // its /dev/uioN FIFO ("" for none)
}

// noBell marks an empty doorbell register (peer 0xFFFF, vector 0xFFFF:
// a target no test group has).
const noBell = 0xFFFF_FFFF

// pollInterval is how often the fake VMM looks at the doorbell registers.
const pollInterval = 20 * time.Microsecond

// VMM stands in for the VMMs of a group of fake functions (ioeventfd to
// irqfd, and the interrupt controller): it takes each function's doorbell
// register writes and, for a write to peer p, ORs the vector's bits into
// p's status register and, if p's enable bit is set, interrupts p through
// its uio FIFO (one 4-byte count). It polls the register files: a test
// stand-in, which stops with Stop.
type VMM struct {
	regs   Registers
	peers  []Peer
	maps   [][]byte
	cancel context.CancelFunc
	wg     sync.WaitGroup
	rung   atomic.Int64
}

// StartVMM maps the peers' register BARs and delivers doorbells until Stop.
func StartVMM(regs Registers, peers []Peer) (*VMM, error) {
	v := &VMM{regs: regs, peers: peers}
	size := max(regs.Doorbell, regs.Status, regs.Enable) + 4
	for _, p := range peers {
		f, err := os.OpenFile(p.Resource0, os.O_RDWR, 0)
		if err != nil {
			v.unmap()
			return nil, err
		}
		b, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		f.Close()
		if err != nil {
			v.unmap()
			return nil, fmt.Errorf("map %s: %w", p.Resource0, err)
		}
		v.maps = append(v.maps, b)
		word(b, regs.Doorbell).Store(noBell)
	}
	ctx, cancel := context.WithCancel(context.Background())
	v.cancel = cancel
	v.wg.Go(func() { v.run(ctx) })
	return v, nil
}

// Rung returns the number of doorbells delivered.
func (v *VMM) Rung() int64 { return v.rung.Load() }

// target returns the index of peer id, or -1.
func (v *VMM) target(id int) int {
	for i, p := range v.peers {
		if p.ID == id {
			return i
		}
	}
	return -1
}

func (v *VMM) run(ctx context.Context) {
	uios := make([]int, len(v.peers)) // FIFO writers, -1 until a guest reads
	for i := range uios {
		uios[i] = -1
	}
	defer func() {
		for _, fd := range uios {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	}()
	for ctx.Err() == nil {
		for i := range v.maps {
			bell := word(v.maps[i], v.regs.Doorbell).Swap(noBell)
			if bell == noBell {
				continue
			}
			t := v.target(int(bell >> abi.DoorbellPeerShift))
			if t < 0 {
				continue
			}
			v.rung.Add(1)
			word(v.maps[t], v.regs.Status).Or(v.regs.StatusBits(int(bell & abi.DoorbellVectorMask)))
			if word(v.maps[t], v.regs.Enable).Load()&1 != 0 && v.peers[t].UIO != "" {
				uios[t] = interrupt(v.peers[t].UIO, uios[t])
			}
		}
		time.Sleep(pollInterval)
	}
}

// interrupt writes one count to the uio FIFO at path through writer fd
// (-1: none yet) and returns the writer to use next time.
func interrupt(path string, fd int) int {
	for range 2 {
		if fd < 0 {
			// Fails (ENXIO) while nobody has the uio device open.
			var err error
			if fd, err = unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0); err != nil {
				return -1
			}
		}
		// A full pipe: an interrupt is already pending.
		_, err := unix.Write(fd, []byte{1, 0, 0, 0})
		if err == nil || errors.Is(err, unix.EAGAIN) {
			return fd
		}
		unix.Close(fd) // the reader went away: reopen
		fd = -1
	}
	return fd
}

func (v *VMM) unmap() {
	for _, b := range v.maps {
		_ = unix.Munmap(b)
	}
	v.maps = nil
}

// Stop stops delivering doorbells and unmaps the registers.
func (v *VMM) Stop() {
	v.cancel()
	v.wg.Wait()
	v.unmap()
}
