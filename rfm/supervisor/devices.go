package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"rainforest/ledger"
	"rainforest/ledger/store"
	"rainforest/rfm/vmmctl"
	"rainforest/vmm"
	"rainforest/vmm/virtio/blk"
)

// Changing a running subOS's devices: disks and shared segments are
// hot-added through its VMM's control socket (the guest picks them up by
// ACPI PCI hotplug) and removed cooperatively (the guest is asked to
// release them, and has a bounded time to). The record in the store
// follows every change that took effect, so a restarted supervisor knows
// the subOS as it is.

// DefaultReleaseTimeout is how long a detach or revoke waits for the guest
// to release the device unless told otherwise.
const DefaultReleaseTimeout = 10 * time.Second

// maxReleaseTimeout bounds what a caller may ask for.
const maxReleaseTimeout = 10 * time.Minute

// Errors of device changes, which the API maps to status codes.
var (
	// ErrNoDevice means the subOS has no such disk or segment.
	ErrNoDevice = errors.New("no such device")
	// ErrDeviceExists means the subOS has that disk or segment already.
	ErrDeviceExists = errors.New("device already attached")
	// ErrInUse means the guest did not release a device in time; it
	// stays attached.
	ErrInUse = errors.New("device still in use by the guest")
)

// running returns the running subOS name. Called under opMu.
func (s *Supervisor) running(name string) (*subOS, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	so, ok := s.subos[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	if so.info.State != StateRunning || so.proc == nil {
		return nil, fmt.Errorf("%w: %q is %s", ErrInvalid, name, so.info.State)
	}
	return so, nil
}

// vmmError maps a VMM's classified errors to the supervisor's.
func vmmError(err error) error {
	switch {
	case errors.Is(err, vmmctl.ErrNotFound):
		return fmt.Errorf("%w: %w", ErrNoDevice, err)
	case errors.Is(err, vmmctl.ErrExists):
		return fmt.Errorf("%w: %w", ErrDeviceExists, err)
	case errors.Is(err, vmmctl.ErrNotReleased):
		return fmt.Errorf("%w: %w", ErrInUse, err)
	case errors.Is(err, vmmctl.ErrInvalid):
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return err
}

// persist writes so's record as it is now, with no change under way.
// Called under opMu.
func (s *Supervisor) persist(so *subOS) error { return s.writeRecord(so, store.PhaseRunning, nil) }

// unintend clears an intent written for a change that did not happen.
func (s *Supervisor) unintend(so *subOS) {
	if err := s.persist(so); err != nil {
		s.log.Error("store", "subos", so.info.Name, "err", err)
	}
}

// update changes so's info under mu and persists it; a failed write is
// logged: the change has taken effect in the VMM either way.
func (s *Supervisor) update(so *subOS, change func(*Info)) {
	s.mu.Lock()
	change(&so.info)
	s.mu.Unlock()
	if err := s.persist(so); err != nil {
		s.log.Error("store", "subos", so.info.Name, "err", err)
	}
}

// removeDevice asks so's VMM to remove device id once the guest released
// it, within timeout. A device the VMM no longer has counts as removed (the
// guest let go of it on its own), and the returned detail says so; a
// failure is recorded as the event what+"-failed".
func (s *Supervisor) removeDevice(ctx context.Context, so *subOS, id string, timeout time.Duration, what, detail string, start time.Time) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, timeout+5*time.Second)
	defer cancel()
	err := vmmctl.Detach(cctx, s.vmm(so), id, timeout)
	switch {
	case errors.Is(err, vmmctl.ErrNotFound):
		return detail + " (the guest had removed it already)", nil
	case err != nil:
		s.event(s.who(ctx), what+"-failed", so.info.Name, time.Since(start), detail+": "+err.Error())
		return "", vmmError(err)
	}
	return detail, nil
}

func checkTimeout(d time.Duration) (time.Duration, error) {
	switch {
	case d == 0:
		return DefaultReleaseTimeout, nil
	case d < 0 || d > maxReleaseTimeout:
		return 0, fmt.Errorf("%w: release timeout %v (up to %v)", ErrInvalid, d, maxReleaseTimeout)
	}
	return d, nil
}

// AttachDisk hot-adds a disk to a running subOS and returns it with its id
// (the first free "diskN" unless given).
func (s *Supervisor) AttachDisk(ctx context.Context, name string, d Disk) (Disk, error) {
	start := time.Now()
	s.opMu.Lock()
	defer s.opMu.Unlock()
	so, err := s.running(name)
	if err != nil {
		return Disk{}, err
	}
	have := so.info.Spec.Disks
	for _, x := range have {
		switch {
		case d.ID != "" && x.ID == d.ID:
			return Disk{}, fmt.Errorf("%w: %q has a disk %q already (%s)", ErrDeviceExists, name, d.ID, x.Path)
		case x.Path == d.Path:
			return Disk{}, fmt.Errorf("%w: %q has %s already, as disk %q", ErrDeviceExists, name, d.Path, x.ID)
		}
	}
	all := withDiskIDs(append(append([]Disk(nil), have...), d))
	d = all[len(all)-1]
	if err := d.Check(); err != nil {
		return Disk{}, &ProblemsError{Problems: []ledger.Problem{{Field: "disk", Message: err.Error()}}}
	}
	if err := blk.CheckPath(d.Path); err != nil {
		return Disk{}, &ProblemsError{Problems: []ledger.Problem{{Field: "disk.path", Message: err.Error()}}}
	}
	backing, err := os.OpenFile(d.Path, diskFlags(d)|unix.O_CLOEXEC, 0)
	if err != nil {
		return Disk{}, &ProblemsError{Problems: []ledger.Problem{{Field: "disk.path", Message: err.Error()}}}
	}
	defer backing.Close() // the VMM has its own copy
	if err := s.intend(so, intent{Op: opAttach, Disk: &d}); err != nil {
		return Disk{}, err
	}
	s.at("attach:vmm")
	dev, err := vmmctl.AttachDisk(ctx, s.vmm(so), d, backing)
	if err != nil {
		s.unintend(so)
		s.event(s.who(ctx), "attach-failed", name, time.Since(start), fmt.Sprintf("disk %s %s: %v", d.ID, d, err))
		return Disk{}, vmmError(err)
	}
	s.at("attach:record")
	s.update(so, func(i *Info) { i.Spec.Disks = append(append([]Disk(nil), i.Spec.Disks...), d) })
	s.event(s.who(ctx), "attach", name, time.Since(start), fmt.Sprintf("disk %s %s slot %d", d.ID, d, dev.Slot))
	return d, nil
}

// DetachDisk asks a running subOS to release a disk (by id or path) and
// removes it; the guest has timeout (DefaultReleaseTimeout when 0) to let
// go, else ErrInUse and the disk stays.
func (s *Supervisor) DetachDisk(ctx context.Context, name, disk string, timeout time.Duration) error {
	start := time.Now()
	timeout, err := checkTimeout(timeout)
	if err != nil {
		return err
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	so, err := s.running(name)
	if err != nil {
		return err
	}
	k := slices.IndexFunc(so.info.Spec.Disks, func(x Disk) bool { return x.ID == disk || x.Path == disk })
	if k < 0 {
		return fmt.Errorf("%w: %q has no disk %q", ErrNoDevice, name, disk)
	}
	d := so.info.Spec.Disks[k]
	if err := s.intend(so, intent{Op: opDetach, Disk: &d}); err != nil {
		return err
	}
	s.at("detach:vmm")
	detail, err := s.removeDevice(ctx, so, d.ID, timeout, "detach", fmt.Sprintf("disk %s %s", d.ID, d.Path), start)
	if err != nil {
		s.unintend(so)
		return err
	}
	s.at("detach:record")
	s.update(so, func(i *Info) {
		i.Spec.Disks = slices.DeleteFunc(slices.Clone(i.Spec.Disks), func(x Disk) bool { return x.ID == d.ID })
	})
	s.event(s.who(ctx), "detach", name, time.Since(start), detail)
	return nil
}

// Grant grants a running subOS a shared segment: its slot is taken (the
// segment is created with g.Size if it does not exist) and the segment's
// device hot-added to the guest.
func (s *Supervisor) Grant(ctx context.Context, name string, g SegmentGrant) (err error) {
	start := time.Now()
	s.opMu.Lock()
	defer s.opMu.Unlock()
	so, err := s.running(name)
	if err != nil {
		return err
	}
	if _, ok := so.info.SegmentPeers[g.Name]; ok {
		return fmt.Errorf("%w: %q is granted segment %q already", ErrDeviceExists, name, g.Name)
	}
	if err := s.checkSegments([]SegmentGrant{g}); err != nil {
		return err
	}
	sg, slot, err := s.takeSegmentSlot(name, g)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			s.dropSegmentSlot(name, g.Name)
			s.event(s.who(ctx), "grant-failed", name, time.Since(start), fmt.Sprintf("segment %s: %v", g.Name, err))
		}
	}()
	r := regionOf(sg.reg, slot, g.ReadOnly)
	if g.Size == 0 {
		g.Size = sg.reg.Spec().Layout.RWSize
	}
	if err := s.intend(so, intent{Op: opGrant, Segment: &g}); err != nil {
		return err
	}
	s.at("grant:vmm")
	dev, err := vmmctl.Grant(ctx, s.vmm(so), r, append([]*os.File{sg.reg.MemFile()}, sg.reg.Bells()...))
	if err != nil {
		s.unintend(so)
		return vmmError(err)
	}
	s.at("grant:record")
	s.update(so, func(i *Info) {
		i.Spec.Segments = append(append([]SegmentGrant(nil), i.Spec.Segments...), g)
		peers := map[string]int{g.Name: slot}
		for k, v := range i.SegmentPeers {
			peers[k] = v
		}
		i.SegmentPeers = peers
	})
	mode := "read-write"
	if g.ReadOnly {
		mode = "read-only"
	}
	s.event(s.who(ctx), "grant", name, time.Since(start), fmt.Sprintf("segment %s %d bytes %s slot %d", g.Name, g.Size, mode, dev.Slot))
	return nil
}

// Revoke takes a shared segment back from a running subOS: the guest is
// asked to release its device and has timeout (DefaultReleaseTimeout when
// 0) to let go, else ErrInUse and the grant stays. The segment is freed
// with its last grant.
func (s *Supervisor) Revoke(ctx context.Context, name, segment string, timeout time.Duration) error {
	start := time.Now()
	timeout, err := checkTimeout(timeout)
	if err != nil {
		return err
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	so, err := s.running(name)
	if err != nil {
		return err
	}
	if _, ok := so.info.SegmentPeers[segment]; !ok {
		return fmt.Errorf("%w: %q is not granted segment %q", ErrNoDevice, name, segment)
	}
	g := SegmentGrant{Name: segment}
	for _, x := range so.info.Spec.Segments {
		if x.Name == segment {
			g = x
		}
	}
	if err := s.intend(so, intent{Op: opRevoke, Segment: &g}); err != nil {
		return err
	}
	s.at("revoke:vmm")
	detail, err := s.removeDevice(ctx, so, vmm.RegionDeviceID(segment), timeout, "revoke", "segment "+segment, start)
	if err != nil {
		s.unintend(so)
		return err
	}
	s.at("revoke:record")
	s.dropSegmentSlot(name, segment)
	s.update(so, func(i *Info) {
		var keep []SegmentGrant
		for _, g := range i.Spec.Segments {
			if g.Name != segment {
				keep = append(keep, g)
			}
		}
		i.Spec.Segments = keep
		peers := map[string]int{}
		for k, v := range i.SegmentPeers {
			if k != segment {
				peers[k] = v
			}
		}
		i.SegmentPeers = peers
	})
	s.event(s.who(ctx), "revoke", name, time.Since(start), detail)
	return nil
}
