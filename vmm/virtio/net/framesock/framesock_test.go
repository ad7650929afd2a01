package framesock

import (
	"bytes"
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	vnet "rainforest/vmm/virtio/net"
)

// port is a guest that always has room and keeps what it receives.
type port struct {
	mu     sync.Mutex
	frames [][]byte
	got    chan struct{}
}

func (p *port) Receive(frame []byte) error {
	p.mu.Lock()
	p.frames = append(p.frames, bytes.Clone(frame))
	p.mu.Unlock()
	p.got <- struct{}{}
	return nil
}

func (p *port) WaitRx(ctx context.Context) error { return ctx.Err() }

func pair(t *testing.T) (*Socket, *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Adopt(os.NewFile(uintptr(fds[0]), "vmm"))
	if err != nil {
		t.Fatal(err)
	}
	peer := os.NewFile(uintptr(fds[1]), "uplink")
	t.Cleanup(func() { peer.Close() })
	return s, peer
}

func TestFrames(t *testing.T) {
	s, peer := pair(t)
	if s.Offloads() != 0 {
		t.Errorf("offloads %#x, want none", s.Offloads())
	}
	// The guest's frame reaches the peer without its header, as one
	// message, however it was scattered.
	hdr := make([]byte, vnet.HeaderLen)
	frame := bytes.Repeat([]byte{0xab}, 60)
	if err := s.Send([][]byte{append(hdr, frame[:14]...), frame[14:30], frame[30:]}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	n, err := peer.Read(buf)
	if err != nil || !bytes.Equal(buf[:n], frame) {
		t.Fatalf("peer read %d bytes %x, %v; want the frame alone", n, buf[:n], err)
	}
	// The peer's frames reach the guest with an empty header.
	p := &port{got: make(chan struct{}, 4)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, p) }()
	in := bytes.Repeat([]byte{0xcd}, 42)
	if _, err := peer.Write(in); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.got:
	case err := <-done:
		t.Fatalf("Run ended: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no frame reached the guest")
	}
	p.mu.Lock()
	got := p.frames
	p.mu.Unlock()
	if len(got) != 1 || !bytes.Equal(got[0], append(make([]byte, vnet.HeaderLen), in...)) {
		t.Errorf("guest got %x", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run after ctx ended: %v", err)
	}
	s.Close()
}

// A full socket drops instead of waiting; a closed peer ends Run.
func TestFullAndClosed(t *testing.T) {
	s, peer := pair(t)
	frame := [][]byte{append(make([]byte, vnet.HeaderLen), bytes.Repeat([]byte{1}, 1500)...)}
	dropped := false
	for range 10000 {
		if err := s.Send(frame); err != nil {
			dropped = true
			break
		}
	}
	if !dropped {
		t.Fatal("a socket nobody reads never filled")
	}
	peer.Close()
	p := &port{got: make(chan struct{}, 1)}
	if err := s.Run(context.Background(), p); err == nil {
		t.Error("Run went on after the peer closed the socket")
	}
	s.Close()
}

func TestAdoptRefusesStreams(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	if _, err := Adopt(os.NewFile(uintptr(fds[0]), "stream")); err == nil {
		t.Error("Adopt took a stream socket")
	}
}
