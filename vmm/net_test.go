package vmm

import (
	"errors"
	"log/slog"
	"os"
	"testing"

	"rainforest/vmm/config"
	"rainforest/vmm/virtio/net/tap"
)

// TestNetDevice: a net's device is made on its TAP, opened by name or
// adopted; a refused one leaves its descriptor closed.
func TestNetDevice(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := netDevice(config.Net{ID: "net0", MAC: "01:00:5e:00:00:01"}, r, log); err == nil {
		t.Fatal("multicast MAC accepted")
	}
	if err := r.Close(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("descriptor left open: %v", err)
	}
	r, w2, _ := os.Pipe()
	defer w2.Close()
	if _, err := netDevice(config.Net{ID: "net0", MAC: "52:54:00:00:00:01"}, r, log); !errors.Is(err, tap.ErrNotTap) {
		t.Fatalf("a pipe as TAP: %v", err)
	}
	if err := r.Close(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("descriptor left open: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a TAP interface (CI runs as root)")
	}
	if _, err := os.Stat(tap.Device); err != nil {
		t.Skipf("no %s", tap.Device)
	}
	dev, err := netDevice(config.Net{ID: "net0", MAC: "52:54:00:00:00:01", Tap: "rfvmmtest0"}, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	if dev.MAC().String() != "52:54:00:00:00:01" {
		t.Fatalf("MAC %s", dev.MAC())
	}
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
}
