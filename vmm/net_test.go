package vmm

import (
	"errors"
	"log/slog"
	"os"
	"testing"

	"rainforest/rfm/loopnet"
	"rainforest/vmm/config"
	"rainforest/vmm/virtio/net/loop"
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
	if _, _, err := netDevice(config.Net{ID: "net0", MAC: "01:00:5e:00:00:01"}, NetFiles{Tap: r}, log); err == nil {
		t.Fatal("multicast MAC accepted")
	}
	if err := r.Close(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("descriptor left open: %v", err)
	}
	r, w2, _ := os.Pipe()
	defer w2.Close()
	if _, _, err := netDevice(config.Net{ID: "net0", MAC: "52:54:00:00:00:01"}, NetFiles{Tap: r}, log); !errors.Is(err, tap.ErrNotTap) {
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
	dev, _, err := netDevice(config.Net{ID: "net0", MAC: "52:54:00:00:00:01", Tap: "rfvmmtest0"}, NetFiles{}, log)
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

// TestLoopNetDevice: a loop member's net is made on the loop backend from
// its attachment's descriptors; one whose descriptors do not fit is
// refused, its descriptors closed.
func TestLoopNetDevice(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	n, err := loopnet.Create("lan", []loopnet.Member{{Name: "a", MAC: "02:00:00:00:00:01"}, {Name: "b", MAC: "02:00:00:00:00:02"}}, loop.MinSlots)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	files := func(a loopnet.Attachment) NetFiles {
		var f NetFiles
		for k := range 2 {
			f.Loop.Lanes = append(f.Loop.Lanes, a.Files[config.LoopLaneFile(a.Net.ID, k)])
			f.Loop.Bells = append(f.Loop.Bells, a.Files[config.LoopBellFile(a.Net.ID, k)])
		}
		return f
	}
	a, err := n.Attach("a", "lan")
	if err != nil {
		t.Fatal(err)
	}
	dev, backend, err := netDevice(a.Net, files(a), log)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := backend.(*loop.Backend); !ok || dev.MAC().String() != "02:00:00:00:00:01" {
		t.Fatalf("backend %T, MAC %s", backend, dev.MAC())
	}
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := n.Attach("b", "lan")
	if err != nil {
		t.Fatal(err)
	}
	f := files(b)
	f.Loop.Lanes[0], f.Loop.Lanes[1] = f.Loop.Lanes[1], f.Loop.Lanes[0] // its own lane read-only
	if _, _, err := netDevice(b.Net, f, log); err == nil {
		t.Fatal("lanes swapped: accepted")
	}
	for name, f := range b.Files {
		if err := f.Close(); !errors.Is(err, os.ErrClosed) {
			t.Errorf("%s left open", name)
		}
	}
}

// TestVhostNetDevice: a TAP net given a descriptor that is not vhost-net
// (this host has none) is served by the VMM (state off), and still
// closes cleanly; vhost-net for a net that is not on a TAP is refused,
// its descriptor closed.
func TestVhostNetDevice(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	notVhost := func() *os.File {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	f := notVhost()
	if _, err := vhostNetDevice(config.Net{ID: "net0"}, nil, nil, f, log); err == nil {
		t.Error("vhost-net accepted for a net without a TAP")
	}
	if err := f.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("descriptor left open: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a TAP interface (CI runs as root)")
	}
	if _, err := os.Stat(tap.Device); err != nil {
		t.Skipf("no %s", tap.Device)
	}
	n := config.Net{ID: "net0", MAC: "52:54:00:00:00:02", Tap: "rfvmmtest1"}
	dev, backend, err := netDevice(n, NetFiles{}, log)
	if err != nil {
		t.Fatal(err)
	}
	vd, err := vhostNetDevice(n, dev, backend, notVhost(), log)
	if err != nil {
		t.Fatal(err)
	}
	if s := vd.State(); s != "off" {
		t.Errorf("state %q on /dev/null, want off", s)
	}
	if err := vd.Close(); err != nil {
		t.Fatal(err)
	}
}
