package vmmctl

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"rainforest/internal/peercred"
	"rainforest/internal/peercred/peercredtest"
	"rainforest/vmm/config"
)

const envVMM = "VMMCTL_TEST_VMM" // the child plays a VMM on fd 3

func TestMain(m *testing.M) {
	peercredtest.Main()
	if os.Getenv(envVMM) != "" {
		if err := playVMM(); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// playVMM takes the control socket over (Listener), says "ready" and
// serves this uid until its standard input closes.
func playVMM() error {
	ln, err := Listener(3)
	if err != nil {
		return err
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { io.Copy(io.Discard, os.Stdin); cancel() }() // ends with the parent's pipe
	os.Stdout.WriteString("ready\n")
	Serve(ctx, ln, uint32(os.Geteuid()), &handler{}, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	return nil
}

// logBuffer is a slog destination safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// The control socket is born 0600 whatever the umask (it followed the
// umask before).
func TestListenMode(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "vm.ctl")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("control socket mode %v, want 0600", fi.Mode())
	}
}

// serveAs serves path with a handler that records calls, answering only
// uid allowed.
func serveAs(t *testing.T, ln *net.UnixListener, allowed uint32, h *handler) *logBuffer {
	t.Helper()
	logs := &logBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		Serve(ctx, ln, allowed, h, slog.New(slog.NewTextHandler(logs, nil)))
	}()
	t.Cleanup(func() { cancel(); <-served })
	return logs
}

// A connection from a uid other than the launch's sender is closed unread
// (before, any process reaching the socket got an export of every region).
func TestServeRefusesOtherUID(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.ctl")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	self := uint32(os.Geteuid())
	logs := serveAs(t, ln, self+1, &handler{devices: []Device{{ID: "disk0"}}})
	devs, err := Devices(context.Background(), VMM{Path: path, PID: os.Getpid()})
	if err == nil || len(devs) != 0 {
		t.Fatalf("Devices from uid %d = %+v, %v; want refused", self, devs, err)
	}
	if _, _, err := Call(context.Background(), VMM{Path: path, PID: os.Getpid()}, Message{Op: OpExport}, nil); err == nil {
		t.Fatal("export answered")
	}
	if got := logs.String(); !strings.Contains(got, "control socket: peer refused") || !strings.Contains(got, "uid="+strconv.Itoa(int(self))) {
		t.Errorf("log: %q", got)
	}
}

// The same with a real process of another uid: it gets nothing back.
func TestServeRefusesOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a child as another user")
	}
	path := filepath.Join(peercredtest.Dir(t), "vm.ctl")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	// Let the stranger reach the socket: this tests the server's check,
	// not the file's mode.
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	logs := serveAs(t, ln, 0, &handler{devices: []Device{{ID: "disk0"}}})
	out, err := peercredtest.Dial(t, "unixpacket", path, peercredtest.Nobody, peercredtest.Nobody, []byte(`{"op":"export"}`))
	if len(out) != 0 {
		t.Errorf("stranger got %q (%v)", out, err)
	}
	if got := logs.String(); !strings.Contains(got, "uid="+strconv.Itoa(peercredtest.Nobody)) {
		t.Errorf("log: %q", got)
	}
	// Root, the launch's sender here, is answered.
	if devs, err := Devices(context.Background(), VMM{Path: path, PID: os.Getpid()}); err != nil || len(devs) != 1 {
		t.Errorf("Devices as root = %+v, %v", devs, err)
	}
}

// The supervisor sends nothing to a control socket served by another
// process than the subOS's VMM.
func TestDialVMMRefusesOtherServer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.ctl")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	h := &handler{}
	serveAs(t, ln, uint32(os.Geteuid()), h)
	for _, pid := range []int{os.Getpid() + 1, 0} {
		if _, err := Devices(context.Background(), VMM{Path: path, PID: pid}); !errors.Is(err, ErrWrongPeer) {
			t.Errorf("VMM pid %d: %v, want ErrWrongPeer", pid, err)
		}
	}
	if _, err := AttachDisk(context.Background(), VMM{Path: path, PID: os.Getpid() + 1}, config.Disk{ID: "d", Path: "/d.img"}, nil); !errors.Is(err, ErrWrongPeer) {
		t.Errorf("AttachDisk: %v", err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.devices) != 0 {
		t.Errorf("the server was asked anyway: %+v", h.devices)
	}
}

// The socket the supervisor creates is served, after Listener, by the VMM
// process: the supervisor's check sees the VMM's pid, not its own.
func TestListenerTakesOverPeer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.ctl")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	lnFile, err := ln.File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer lnFile.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), envVMM+"=1")
	cmd.ExtraFiles = []*os.File{lnFile}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("child: %q, %v", line, err)
	}
	ctx := context.Background()
	if _, err := Devices(ctx, VMM{Path: path, PID: cmd.Process.Pid}); err != nil {
		t.Errorf("Devices of the VMM: %v", err)
	}
	if _, err := Devices(ctx, VMM{Path: path, PID: os.Getpid()}); !errors.Is(err, ErrWrongPeer) {
		t.Errorf("the creator is still seen as the server: %v", err)
	}
	c, err := DialVMM(VMM{Path: path, PID: cmd.Process.Pid})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if cred, err := peercred.Of(c); err != nil || int(cred.PID) != cmd.Process.Pid {
		t.Errorf("server credentials %+v, %v; want pid %d", cred, err, cmd.Process.Pid)
	}
}
