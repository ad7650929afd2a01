package hotmeasure

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"time"

	"rainforest/bench/hotplug/qmp"
)

// QEMU says how to run a QEMU guest.
type QEMU struct {
	// Argv is the QEMU command line: its serial console on stdout and a
	// QMP server on QMPSocket (-qmp unix:PATH,server=on,wait=off).
	Argv      []string
	QMPSocket string
}

// MeasureQEMU starts QEMU, follows its serial console and QMP, adds the
// hot disk's read-only block node (before the clock starts), times
// device_add of a virtio-blk-pci on it and device_del (to the guest's
// marker and the DEVICE_DELETED event), and quits QEMU.
func MeasureQEMU(ctx context.Context, cfg Config, q QEMU) []Sample {
	cfg.defaults()
	if len(q.Argv) == 0 {
		return failed(cfg, fmt.Errorf("no QEMU command"))
	}
	runCtx, kill := context.WithCancel(ctx)
	defer kill()
	cmd := exec.CommandContext(runCtx, q.Argv[0], q.Argv[1:]...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return failed(cfg, err)
	}
	stderr := &tail{max: 2048}
	cmd.Stderr = stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return failed(cfg, fmt.Errorf("start qemu: %w", err))
	}
	con := WatchConsole(stdout, cfg.Markers.list(), cfg.Echo, cfg.prefix())
	exited := make(chan error, 1)
	go func() { // owner: MeasureQEMU, which waits for it below
		<-con.Closed() // Wait closes stdout: the console first
		exited <- cmd.Wait()
	}()
	var client *qmp.Client
	defer func() {
		if client == nil {
			kill()
		} else {
			quitCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			client.Execute(quitCtx, "quit", nil) // QEMU may close the socket before it answers
			cancel()
			client.Close()
		}
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			kill()
			<-exited
		}
	}()
	bootCtx, cancel := context.WithTimeout(ctx, cfg.Boot)
	client, err = qmp.Dial(bootCtx, q.QMPSocket)
	cancel()
	if err != nil {
		return failed(cfg, qemuError(err, stderr))
	}
	ready := func(ctx context.Context) error {
		_, err := con.Wait(ctx, cfg.Markers.Ready, time.Time{})
		return qemuError(err, stderr)
	}
	isHot := func(data json.RawMessage) bool {
		var d struct {
			Device string `json:"device"`
		}
		return json.Unmarshal(data, &d) == nil && d.Device == HotID
	}
	return measure(ctx, cfg, con, ready, ops{
		prepare: func(ctx context.Context) error {
			_, err := client.Execute(ctx, "blockdev-add", map[string]any{
				"driver": "file", "node-name": HotNode, "filename": cfg.HotDisk, "read-only": true})
			return err
		},
		add: func(ctx context.Context) error {
			_, err := client.Execute(ctx, "device_add", map[string]any{"driver": "virtio-blk-pci", "id": HotID, "drive": HotNode})
			return err
		},
		remove: func(ctx context.Context) error {
			_, err := client.Execute(ctx, "device_del", map[string]any{"id": HotID})
			return err
		},
		removed: func(ctx context.Context) (time.Time, error) {
			e, err := client.WaitEvent(ctx, "DEVICE_DELETED", isHot)
			return e.Received, err
		},
	})
}

// qemuError adds what QEMU printed on stderr to err.
func qemuError(err error, stderr *tail) error {
	if err == nil {
		return nil
	}
	if s := strings.TrimSpace(stderr.String()); s != "" {
		return fmt.Errorf("%w; qemu stderr: %s", err, s)
	}
	return err
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
