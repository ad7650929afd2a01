package supervisor

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"rainforest/rfm/vmmctl"
)

func eventsOf(t *testing.T, s *Supervisor) string {
	t.Helper()
	evs, err := s.Events(0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range evs {
		b.WriteString(e.What + " " + e.Name + " " + e.Detail + "\n")
	}
	return b.String()
}

// Disks are hot-added to and removed from a running subOS through its VMM;
// the record follows, so a restarted supervisor knows them; bad requests
// are refused by name and change nothing.
func TestAttachDetachDisk(t *testing.T) {
	dir := t.TempDir()
	act, l := &fakeActuator{}, &fakeLauncher{}
	s := newTestSupervisor(t, dir, act, l)
	ctx := context.Background()
	spec := testSpec(t, "a", 1)
	img := filepath.Join(t.TempDir(), "boot.img")
	os.WriteFile(img, make([]byte, 4096), 0o600)
	spec.Disks = []Disk{{Path: img}}
	info, err := s.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if info.Spec.Disks[0].ID != "disk0" {
		t.Fatalf("boot disk id %q", info.Spec.Disks[0].ID)
	}
	data := filepath.Join(t.TempDir(), "data.img")
	os.WriteFile(data, make([]byte, 4096), 0o600)
	d, err := s.AttachDisk(ctx, "a", Disk{Path: data, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if d.ID != "disk1" || !d.ReadOnly {
		t.Errorf("attached %+v", d)
	}
	if !l.procs[info.PID].has("disk1") {
		t.Error("the VMM did not get the disk")
	}
	for _, c := range []struct {
		disk Disk
		want error
	}{
		{Disk{Path: data}, ErrDeviceExists},
		{Disk{ID: "disk0", Path: img + "2"}, ErrDeviceExists},
		{Disk{Path: filepath.Join(dir, "nope.img")}, ErrInvalid},
		{Disk{Path: dir}, ErrInvalid},
		{Disk{ID: "bad id!", Path: data + "x"}, ErrInvalid},
	} {
		if _, err := s.AttachDisk(ctx, "a", c.disk); !errors.Is(err, c.want) {
			t.Errorf("attach %+v: %v, want %v", c.disk, err, c.want)
		}
	}
	if _, err := s.AttachDisk(ctx, "nobody", Disk{Path: data}); !errors.Is(err, ErrNotFound) {
		t.Errorf("attach to nobody: %v", err)
	}
	got, _ := s.Get("a")
	if len(got.Spec.Disks) != 2 {
		t.Fatalf("disks %+v", got.Spec.Disks)
	}

	// A guest that does not let go: ErrInUse, the disk stays.
	l.procs[info.PID].setRefuse(true)
	if err := s.DetachDisk(ctx, "a", "disk1", 50*time.Millisecond); !errors.Is(err, ErrInUse) {
		t.Errorf("detach the guest refuses: %v", err)
	}
	l.procs[info.PID].setRefuse(false)
	if got, _ := s.Get("a"); len(got.Spec.Disks) != 2 {
		t.Fatal("a refused detach changed the record")
	}
	if err := s.DetachDisk(ctx, "a", "disk9", 0); !errors.Is(err, ErrNoDevice) {
		t.Errorf("detach of an unknown disk: %v", err)
	}
	if err := s.DetachDisk(ctx, "a", "disk1", -time.Second); !errors.Is(err, ErrInvalid) {
		t.Errorf("negative timeout: %v", err)
	}

	// The record survives a restart.
	s.Close()
	s = newTestSupervisor(t, dir, act, l)
	defer s.Close()
	if got, _ := s.Get("a"); len(got.Spec.Disks) != 2 || got.Spec.Disks[1].Path != data {
		t.Fatalf("after restart: %+v", got.Spec.Disks)
	}
	// By path, then the boot disk by id.
	if err := s.DetachDisk(ctx, "a", data, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.DetachDisk(ctx, "a", "disk0", 0); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Get("a"); len(got.Spec.Disks) != 0 {
		t.Errorf("disks left %+v", got.Spec.Disks)
	}
	// A disk the guest released on its own is dropped from the record.
	if _, err := s.AttachDisk(ctx, "a", Disk{Path: data}); err != nil {
		t.Fatal(err)
	}
	l.procs[info.PID].forget("disk0")
	if err := s.DetachDisk(ctx, "a", "disk0", 0); err != nil {
		t.Errorf("detach of a disk the guest removed: %v", err)
	}
	ev := eventsOf(t, s)
	for _, want := range []string{"attach a disk disk1 " + data + ",ro", "detach-failed a disk disk1", "detach a disk disk0", "had removed it already"} {
		if !strings.Contains(ev, want) {
			t.Errorf("audit log lacks %q:\n%s", want, ev)
		}
	}
}

// A segment is granted to running subOSes (created by the first grant)
// and revoked; it is freed with its last grant.
func TestGrantRevoke(t *testing.T) {
	act, l := &fakeActuator{}, &fakeLauncher{}
	s := newTestSupervisor(t, t.TempDir(), act, l)
	defer s.Close()
	ctx := context.Background()
	a, err := s.Create(ctx, testSpec(t, "a", 1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, testSpec(t, "b", 1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Grant(ctx, "a", SegmentGrant{Name: "cache"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("grant of a new segment without a size: %v", err)
	}
	if err := s.Grant(ctx, "a", SegmentGrant{Name: "cache", Size: 8192}); err != nil {
		t.Fatal(err)
	}
	if err := s.Grant(ctx, "b", SegmentGrant{Name: "cache", ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	if err := s.Grant(ctx, "b", SegmentGrant{Name: "cache"}); !errors.Is(err, ErrDeviceExists) {
		t.Errorf("second grant: %v", err)
	}
	if err := s.Grant(ctx, "b", SegmentGrant{Name: "other", Size: 8192}); err != nil {
		t.Fatal(err)
	}
	pa := l.procs[a.PID]
	if !pa.has("region/cache") || pa.lastRegion().RWSize != 8192 {
		t.Errorf("a's VMM did not get the segment: %+v", pa.lastRegion())
	}
	ga, _ := s.Get("a")
	gb, _ := s.Get("b")
	if ga.SegmentPeers["cache"] != 0 || gb.SegmentPeers["cache"] != 1 || len(gb.Spec.Segments) != 2 || !gb.Spec.Segments[0].ReadOnly {
		t.Errorf("a %v, b %v %+v", ga.SegmentPeers, gb.SegmentPeers, gb.Spec.Segments)
	}
	if err := s.Revoke(ctx, "a", "other", 0); !errors.Is(err, ErrNoDevice) {
		t.Errorf("revoke of a segment a does not have: %v", err)
	}
	if err := s.Revoke(ctx, "a", "cache", 0); err != nil {
		t.Fatal(err)
	}
	if s.share.segments["cache"] == nil {
		t.Fatal("segment freed while b holds it")
	}
	if err := s.Revoke(ctx, "b", "cache", 0); err != nil {
		t.Fatal(err)
	}
	if s.share.segments["cache"] != nil {
		t.Error("segment kept after its last grant went")
	}
	// A refused revoke keeps the grant.
	l.procs[s.subos["b"].proc.PID()].setRefuse(true)
	if err := s.Revoke(ctx, "b", "other", 50*time.Millisecond); !errors.Is(err, ErrInUse) {
		t.Errorf("revoke the guest refuses: %v", err)
	}
	if gb, _ := s.Get("b"); gb.SegmentPeers["other"] != 0 || s.share.segments["other"] == nil {
		t.Errorf("a refused revoke changed the grant: %v", gb.SegmentPeers)
	}
	if ev := eventsOf(t, s); !strings.Contains(ev, "grant b segment cache 8192 bytes read-only") || !strings.Contains(ev, "revoke a segment cache") {
		t.Errorf("audit log:\n%s", ev)
	}
}

// The supervisor talks only to the subOS's own VMM: a control socket
// served by another process gets no request.
func TestControlPeerMustBeTheVMM(t *testing.T) {
	dir := t.TempDir()
	l := &fakeLauncher{}
	s := newTestSupervisor(t, dir, &fakeActuator{}, l)
	ctx := context.Background()
	info, err := s.Create(ctx, testSpec(t, "a", 1))
	if err != nil {
		t.Fatal(err)
	}
	l.procs[info.PID].servedBy = 1 // the VMM is pid 1; this process serves
	data := filepath.Join(t.TempDir(), "data.img")
	os.WriteFile(data, make([]byte, 4096), 0o600)
	if _, err := s.AttachDisk(ctx, "a", Disk{Path: data}); !errors.Is(err, vmmctl.ErrWrongPeer) {
		t.Errorf("AttachDisk through another server: %v", err)
	}
	if l.procs[info.PID].has("disk0") {
		t.Error("the impostor got the request")
	}
	if err := s.Grant(ctx, "a", SegmentGrant{Name: "cache", Size: 4096}); !errors.Is(err, vmmctl.ErrWrongPeer) {
		t.Errorf("Grant through another server: %v", err)
	}
}
