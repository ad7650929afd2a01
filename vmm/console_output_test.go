package vmm

import (
	"bytes"
	"context"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"rainforest/vmm/serial"
	"rainforest/vmm/virtio"
	virtioconsole "rainforest/vmm/virtio/console"
	vt "rainforest/vmm/virtio/virtiotest"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestConsoleOutputReachesSocket wires the consoles as setupLinux does:
// what the guest writes to the virtio console (hvc0), on fake guest
// memory, and to the serial console reaches both the console log and a
// console socket client; what the client types goes to the serial
// console's input.
func TestConsoleOutputReachesSocket(t *testing.T) {
	var log lockedBuffer
	cfg := &LinuxConfig{Console: &log, ConsoleSocket: filepath.Join(t.TempDir(), "c.sock")}
	typed := make(chan []byte, 4)
	out, sock, err := consoleOutput(context.Background(), cfg, func(b []byte) { typed <- b })
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()

	// The virtio console on fake guest memory, writing where setupLinux
	// points it.
	mem := vt.NewMemory(1 << 20)
	dev := virtioconsole.New(out, virtioconsole.Options{})
	rx, tx := vt.NewDriver(mem, 8, 0x1000), vt.NewDriver(mem, 8, 0x4000)
	var qs []*virtio.Queue
	for _, d := range []*vt.Driver{rx, tx} {
		q, err := virtio.NewQueue(mem, d.Config(), 0)
		if err != nil {
			t.Fatal(err)
		}
		qs = append(qs, q)
	}
	if err := dev.Activate(virtio.Activation{Mem: mem, Queues: qs, IRQ: &vt.IRQ{}}); err != nil {
		t.Fatal(err)
	}
	uart := serial.New(out, nil, 0)

	c, err := net.Dial("unix", cfg.ConsoleSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The server hands a client's input on only once the client is
	// attached: after this, output reaches it.
	if _, err := c.Write([]byte("root\n")); err != nil {
		t.Fatal(err)
	}
	if got := string(<-typed); got != "root\n" {
		t.Fatalf("console input %q, want what the client typed", got)
	}

	const hvc = "RF-HVC-6\n"
	_ = mem.WriteAt([]byte(hvc), 0x40000)
	tx.AddChain(vt.Buf{Addr: 0x40000, Len: uint32(len(hvc))})
	dev.QueueNotify(virtioconsole.TransmitQueue)
	uart.Write(serial.RegTHR, []byte{'S'})

	want := hvc + "S"
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("socket client read %q: %v", got, err)
	}
	if string(got) != want {
		t.Errorf("socket client got %q, want the virtio console's then the UART's output %q", got, want)
	}
	if !strings.Contains(log.String(), want) {
		t.Errorf("console log %q, want %q", log.String(), want)
	}
	if err := dev.OutputError(); err != nil {
		t.Errorf("virtio console output error: %v", err)
	}
}
