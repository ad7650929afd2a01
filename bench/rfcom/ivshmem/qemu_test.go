package ivshmem

import (
	"bytes"
	"context"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"time"
)

// qemuClient is a paused qemu-system-x86_64 with an ivshmem-doorbell device.
type qemuClient struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // valid after exited is closed

	mu     sync.Mutex
	stderr bytes.Buffer
}

func (q *qemuClient) Write(p []byte) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.stderr.Write(p)
}

func (q *qemuClient) output() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.stderr.String()
}

// startQEMU starts QEMU paused (-S, no guest code runs); the
// ivshmem-doorbell device runs the server protocol while it is realized.
func startQEMU(t *testing.T, qemu, socket string) *qemuClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	q := &qemuClient{exited: make(chan struct{})}
	q.cmd = exec.CommandContext(ctx, qemu,
		"-M", "pc", "-accel", "tcg", "-display", "none", "-nodefaults",
		"-monitor", "none", "-S",
		"-chardev", "socket,path="+socket+",id=ivsh",
		"-device", "ivshmem-doorbell,chardev=ivsh,vectors=1")
	q.cmd.Stderr = q
	if err := q.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start qemu: %v", err)
	}
	go func() {
		q.err = q.cmd.Wait()
		cancel()
		close(q.exited)
	}()
	t.Cleanup(func() {
		q.cmd.Process.Kill()
		<-q.exited
	})
	return q
}

// waitPeersOrExit is waitPeers that fails early if QEMU exits.
func waitPeersOrExit(t *testing.T, s *Server, q *qemuClient, want []int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !slices.Equal(s.Peers(), want) {
		select {
		case <-q.exited:
			t.Fatalf("qemu exited: %v\n%s", q.err, q.output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("Peers() = %v, want %v\nqemu: %s", s.Peers(), want, q.output())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestQEMUDoorbellClient checks the server against real QEMU
// ivshmem-doorbell devices, as the first peer (ID 0) and as a later peer
// that must take connect notifications for existing peers. Root is not
// needed.
func TestQEMUDoorbellClient(t *testing.T) {
	if testing.Short() {
		t.Skip("starts qemu-system-x86_64; skipped in -short mode")
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	s, _, _ := startServer(t, Config{Vectors: 1})

	q0 := startQEMU(t, qemu, s.Addr())
	waitPeersOrExit(t, s, q0, []int{0})

	// A fake client sees QEMU as peer 0 with one vector.
	c := dial(t, s.Addr())
	c.handshake(1)
	c.expectVectors(0, 1)
	c.expectVectors(1, 1)
	waitPeers(t, s, []int{0, 1})

	// A second QEMU gets ID 2 after notifications for peers 0 and 1.
	q2 := startQEMU(t, qemu, s.Addr())
	waitPeersOrExit(t, s, q2, []int{0, 1, 2})
	c.expectVectors(2, 1)

	// Both accepted the setup: they are still running.
	time.Sleep(200 * time.Millisecond)
	for i, q := range []*qemuClient{q0, q2} {
		select {
		case <-q.exited:
			t.Fatalf("qemu %d exited after setup: %v\n%s", i, q.err, q.output())
		default:
		}
	}

	// Killing QEMU is seen as a disconnect of its ID.
	if err := q0.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill qemu: %v", err)
	}
	c.expect(0, false)
	waitPeers(t, s, []int{1, 2})
	if err := q2.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill qemu: %v", err)
	}
	c.expect(2, false)
	waitPeers(t, s, []int{1})
}
