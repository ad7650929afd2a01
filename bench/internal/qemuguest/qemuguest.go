// Package qemuguest runs a QEMU guest for the benchmarks that compare rfm
// with QEMU (bench/hotplug, bench/lifecycle): Start launches QEMU with its
// serial console on stdout, follows the console for markers
// (bench/internal/guestconsole) and connects to its QMP socket
// (bench/hotplug/qmp); Quit ends it through QMP and tells when QEMU
// answered and when its process exited; Close makes sure it is gone.
// FindBIOS finds the firmware of QEMU's pc machine on this host, for the
// nested L1 guest, whose QEMU bundle lacks it.
package qemuguest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"time"

	"rainforest/bench/hotplug/qmp"
	"rainforest/bench/internal/guestconsole"
)

// DefaultConnect bounds the wait for QEMU's QMP socket when
// Config.Connect is zero.
const DefaultConnect = 3 * time.Minute

// closeGrace bounds each of Close's steps: QEMU's answer to quit, and its
// exit after it.
const closeGrace = 30 * time.Second

// ErrNoCommand means Config.Argv is empty.
var ErrNoCommand = errors.New("qemuguest: no QEMU command")

// Config says how to run a QEMU guest.
type Config struct {
	// Argv is the QEMU command line: its serial console on stdout
	// (-serial stdio) and a QMP server on QMPSocket (-qmp
	// unix:PATH,server=on,wait=off).
	Argv      []string
	QMPSocket string
	// Markers are the console lines whose arrival the Console notes.
	Markers []string
	// Echo, when not nil, gets each console line prefixed with Prefix.
	Echo   io.Writer
	Prefix string
	// Connect bounds the wait for the QMP socket (default
	// DefaultConnect); a QEMU that exits ends it at once.
	Connect time.Duration
}

// Guest is a running QEMU. Close it.
type Guest struct {
	// Console follows QEMU's serial console.
	Console *guestconsole.Console
	// QMP is the connection to QEMU's QMP socket, capabilities
	// negotiated.
	QMP *qmp.Client
	// Started is when the process was about to start, Connected when the
	// QMP connection was ready.
	Started, Connected time.Time

	kill   context.CancelFunc
	stderr *tail
	exited chan struct{} // closed once the process has exited
	// exitedAt and waitErr are set before exited closes.
	exitedAt time.Time
	waitErr  error
	close    sync.Once
}

// Start starts QEMU and connects to its QMP socket. ctx bounds the
// guest's life: QEMU is killed when it ends.
func Start(ctx context.Context, cfg Config) (*Guest, error) {
	if len(cfg.Argv) == 0 {
		return nil, ErrNoCommand
	}
	if cfg.Connect <= 0 {
		cfg.Connect = DefaultConnect
	}
	runCtx, kill := context.WithCancel(ctx)
	cmd := exec.CommandContext(runCtx, cfg.Argv[0], cfg.Argv[1:]...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		kill()
		return nil, fmt.Errorf("qemuguest: %w", err)
	}
	g := &Guest{kill: kill, stderr: &tail{max: 2048}, exited: make(chan struct{})}
	cmd.Stderr = g.stderr
	cmd.WaitDelay = 5 * time.Second
	g.Started = time.Now()
	if err := cmd.Start(); err != nil {
		kill()
		return nil, fmt.Errorf("qemuguest: start qemu: %w", err)
	}
	g.Console = guestconsole.Watch(stdout, cfg.Markers, cfg.Echo, cfg.Prefix)
	go func() { // owner: g; Close waits for it
		<-g.Console.Closed() // Wait closes stdout: the console first
		err := cmd.Wait()
		g.exitedAt, g.waitErr = time.Now(), err
		close(g.exited)
	}()
	dialCtx, cancel := context.WithTimeout(ctx, cfg.Connect)
	go func() { // owner: Start; ends when dialCtx does (cancel below)
		select {
		case <-g.exited:
			cancel()
		case <-dialCtx.Done():
		}
	}()
	client, err := qmp.Dial(dialCtx, cfg.QMPSocket)
	cancel()
	if err != nil {
		early := g.exitedEarly()
		g.Close()
		if early {
			return nil, g.Err(fmt.Errorf("qemuguest: qemu exited (%v) before its QMP socket answered", g.waitErr))
		}
		return nil, g.Err(fmt.Errorf("qemuguest: %w", err))
	}
	g.QMP, g.Connected = client, time.Now()
	return g, nil
}

// exitedEarly reports whether the process has exited.
func (g *Guest) exitedEarly() bool {
	select {
	case <-g.exited:
		return true
	default:
		return false
	}
}

// Err adds what QEMU printed on stderr to err (nil stays nil).
func (g *Guest) Err(err error) error {
	if err == nil {
		return nil
	}
	if s := strings.TrimSpace(g.stderr.String()); s != "" {
		return fmt.Errorf("%w; qemu stderr: %s", err, s)
	}
	return err
}

// Exited is closed once the QEMU process has exited.
func (g *Guest) Exited() <-chan struct{} { return g.exited }

// Quit asks QEMU to quit (QMP quit) and waits until its process exited
// or ctx ends. It returns when QEMU answered (or closed the connection,
// which it may do before answering) and when the process exited.
func (g *Guest) Quit(ctx context.Context) (answered, exited time.Time, err error) {
	_, err = g.QMP.Execute(ctx, "quit", nil)
	answered = time.Now()
	if err != nil && !errors.Is(err, qmp.ErrClosed) {
		return answered, time.Time{}, g.Err(fmt.Errorf("qemuguest: %w", err))
	}
	select {
	case <-g.exited:
		return answered, g.exitedAt, nil
	case <-ctx.Done():
		return answered, time.Time{}, fmt.Errorf("qemuguest: waiting for qemu to exit after quit: %w", ctx.Err())
	}
}

// Close ends QEMU unless it has exited: quit through QMP, else (no
// answer or no exit within 30 seconds each) kill; it waits for the
// process and closes the QMP connection. It may be called more than once.
func (g *Guest) Close() {
	g.close.Do(func() {
		if g.QMP != nil && !g.exitedEarly() {
			ctx, cancel := context.WithTimeout(context.Background(), closeGrace)
			g.QMP.Execute(ctx, "quit", nil) // QEMU may close the socket before it answers
			cancel()
		}
		if g.QMP == nil {
			g.kill()
		}
		select {
		case <-g.exited:
		case <-time.After(closeGrace):
			g.kill()
			<-g.exited
		}
		g.kill()
		if g.QMP != nil {
			g.QMP.Close()
		}
	})
}

// tail keeps the last max bytes written to it; exec's copying goroutine
// writes it while the run reads it.
type tail struct {
	max int
	mu  sync.Mutex
	b   []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append([]byte(nil), t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
