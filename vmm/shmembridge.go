package vmm

import (
	"errors"

	"golang.org/x/sys/unix"
)

// The INTx bridge. Peers' doorbells reach this guest as signals on its
// vectors' eventfds, which KVM injects as MSI-X messages while the guest has
// MSI-X on (no VMM thread on the path). A guest driving the device through
// INTx instead, as Linux's uio_pci_generic does (Debian's kernel has no
// VFIO no-IOMMU mode to give user space MSI-X), needs the device model's
// INT_STATUS register and the PCI Interrupt Status bit kept right, which a
// kernel-injected line cannot do. So while MSI-X is off, INT_CONTROL is on
// and a vector is not bound as an irqfd, the bridge goroutine waits on that vector's eventfd and
// raises the vector through the model (INT_STATUS bit, INTA# asserted).
// Otherwise (vectors masked under MSI-X, interrupts off) signals accumulate
// in the eventfd counter: KVM injects them on unmask, the bridge on
// INT_CONTROL on.

// startBridge starts the bridge goroutine; close stops it.
func (s *SharedMemory) startBridge() error {
	wake, err := NewEventFD()
	if err != nil {
		return err
	}
	s.router.mu.Lock()
	s.router.wake = wake
	s.router.mu.Unlock()
	s.bridgeWake = wake
	s.bridgeDone = make(chan struct{})
	go s.bridge() // owner: this SharedMemory; stopBridge ends it
	return nil
}

// stopBridge ends the bridge goroutine and waits for it.
func (s *SharedMemory) stopBridge() {
	if s.bridgeWake == nil {
		return
	}
	s.bridgeStop.Store(true)
	_ = s.bridgeWake.Signal()
	<-s.bridgeDone
	s.router.mu.Lock()
	s.router.wake = nil
	s.router.mu.Unlock()
	_ = s.bridgeWake.Close()
	s.bridgeWake = nil
}

// bridgedVectors returns the vectors the bridge delivers now: all unbound
// ones while the device signals through INTx, none otherwise (the INTx
// check takes the MSI-X lock, so it comes before the router's).
func (s *SharedMemory) bridgedVectors() []int {
	if !s.dev.INTxActive() || !s.dev.InterruptsEnabled() {
		return nil
	}
	s.router.mu.Lock()
	defer s.router.mu.Unlock()
	var out []int
	for i, v := range s.router.vectors {
		if !v.bound {
			out = append(out, i)
		}
	}
	return out
}

func (s *SharedMemory) bridge() {
	defer close(s.bridgeDone)
	var fds []unix.PollFd
	for !s.bridgeStop.Load() {
		vecs := s.bridgedVectors()
		fds = append(fds[:0], unix.PollFd{Fd: int32(s.bridgeWake.Fd()), Events: unix.POLLIN})
		for _, v := range vecs {
			fds = append(fds, unix.PollFd{Fd: int32(s.router.vectors[v].ev.Fd()), Events: unix.POLLIN})
		}
		// Mode changes wake the bridge (Route, and the model on writes to
		// INT_CONTROL and config space), so it sleeps until something
		// happens: no periodic wake-ups on the subOS's cores.
		_, err := unix.Poll(fds, -1)
		if err != nil && !errors.Is(err, unix.EINTR) {
			s.m.log.Warn("shared memory INTx bridge", "slot", s.slot, "err", err)
			return
		}
		if fds[0].Revents != 0 {
			s.bridgeWake.Drain()
		}
		for i, v := range vecs {
			if fds[i+1].Revents == 0 {
				continue
			}
			s.deliverBridged(v)
		}
	}
}

// deliverBridged moves vector v's pending signals into the model, unless
// the vector became an irqfd meanwhile (then KVM owns the counter). The
// INTx check comes before the router lock: MSI-X takes its own lock and then
// the router's. Should the guest enable MSI-X between the two, Signal sends
// the message or latches it in the PBA, so nothing is lost.
func (s *SharedMemory) deliverBridged(v int) {
	if !s.dev.INTxActive() || !s.dev.InterruptsEnabled() {
		return
	}
	s.router.mu.Lock()
	vec := s.router.vectors[v]
	if vec.bound {
		s.router.mu.Unlock()
		return
	}
	n := vec.ev.Drain()
	s.router.mu.Unlock()
	if n > 0 {
		_ = s.dev.Signal(v) // out of range cannot happen: v is a device vector
	}
}
