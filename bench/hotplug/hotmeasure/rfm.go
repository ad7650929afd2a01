package hotmeasure

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"rainforest/bench/internal/guestconsole"
	"strings"
	"time"
)

// RFM says how to run an rfm subOS: the supervisor (rfm serve) is
// already running.
type RFM struct {
	// Binary is the rfm command; Name the subOS's name.
	Binary, Name string
	// CreateArgs follow `rfm create NAME` (cores, memory, kernel,
	// initrd, boot disk, --append with the guest's command).
	CreateArgs []string
	// RunDir is the supervisor's directory of subOS logs and console
	// sockets (rfm serve --run-dir).
	RunDir string
}

// MeasureRFM creates the subOS, follows its console socket, times `rfm
// attach NAME --disk HOT,ro --id hot` and `rfm detach NAME hot` (each
// after timing an `rfm inspect NAME`, Sample.CLI), and destroys the subOS.
func MeasureRFM(ctx context.Context, cfg Config, r RFM) []Sample {
	cfg.defaults()
	rfm := func(ctx context.Context, args ...string) error {
		out, err := exec.CommandContext(ctx, r.Binary, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("rfm %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
		}
		return nil
	}
	if err := rfm(ctx, append([]string{"create", r.Name}, r.CreateArgs...)...); err != nil {
		return failed(cfg, err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		rfm(ctx, "destroy", r.Name) // best effort: a later run uses another name
	}()
	bootCtx, cancel := context.WithTimeout(ctx, cfg.Boot)
	conn, err := dialConsole(bootCtx, filepath.Join(r.RunDir, r.Name+".sock"))
	cancel()
	if err != nil {
		return failed(cfg, err)
	}
	con := guestconsole.Watch(conn, cfg.Markers.list(), cfg.Echo, cfg.prefix())
	defer func() { conn.Close(); <-con.Closed() }()
	logPath := filepath.Join(r.RunDir, r.Name+".log")
	// The guest may have printed Ready before the console was attached:
	// the subOS's log has everything.
	ready := func(ctx context.Context) error {
		for !con.Seen(cfg.Markers.Ready) && !fileHas(logPath, cfg.Markers.Ready) {
			if err := pause(ctx, 50*time.Millisecond); err != nil {
				return fmt.Errorf("%s not in %s: %w", cfg.Markers.Ready, logPath, err)
			}
		}
		return nil
	}
	return measure(ctx, cfg, con, ready, ops{
		baseline: func(ctx context.Context) (time.Duration, error) {
			t0 := time.Now()
			err := rfm(ctx, "inspect", r.Name)
			return time.Since(t0), err
		},
		add: func(ctx context.Context) error {
			return rfm(ctx, "attach", r.Name, "--disk", cfg.HotDisk+",ro", "--id", HotID)
		},
		remove: func(ctx context.Context) error { return rfm(ctx, "detach", r.Name, HotID) },
	})
}

// dialConsole connects to a console socket, retrying until the VMM has
// created it or ctx ends.
func dialConsole(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return conn, nil
		}
		if perr := pause(ctx, 20*time.Millisecond); perr != nil {
			return nil, fmt.Errorf("console %s: %w (last: %v)", path, perr, err)
		}
	}
}

// fileHas reports whether the file at path contains text.
func fileHas(path, text string) bool {
	b, err := os.ReadFile(path)
	return err == nil && bytes.Contains(b, []byte(text))
}
