package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"rainforest/internal/units"
	"rainforest/ledger"
	"rainforest/ledger/store"
	"rainforest/rfm/vmmctl"
	"rainforest/vmm"
)

// Crash consistency. Before the first side effect of a create, a destroy
// or a device change, the subOS's record says what is about to happen (its
// phase and an intent); after the change it says what was done. A
// supervisor killed at any instant thus leaves records from which its
// successor finishes or undoes every change (readopt):
//
//   - running, VMM alive: adopted; an unfinished device change is settled
//     by what the VMM reports (settleDeviceChange);
//   - running, VMM gone: reclaimed;
//   - creating: rolled back (whatever runs in its cgroup is killed, the
//     cgroup removed, the hugepages given back, the record dropped);
//   - destroying: the destroy is finished.
//
// Then every cgroup under the actuator's parent that no record owns is an
// orphan: what runs there is killed and the group removed. A record that
// does not decode, or that the ledger refuses, is quarantined (kept
// verbatim in the store, reported) instead of stopping the supervisor.

// Intent operations.
const (
	opCreate  = "create"
	opDestroy = "destroy"
	opAttach  = "attach"
	opDetach  = "detach"
	opGrant   = "grant"
	opRevoke  = "revoke"
	// opShareAdd and opShareRemove hot-add and remove a share.
	opShareAdd    = "share-add"
	opShareRemove = "share-remove"
)

// intent is a change under way, kept in the record (store.Record.Intent).
type intent struct {
	Op      string        `json:"op"`
	Pool    *poolChange   `json:"pool,omitempty"`    // a hugepage pool change about to be made
	Disk    *Disk         `json:"disk,omitempty"`    // attach, detach
	Segment *SegmentGrant `json:"segment,omitempty"` // grant, revoke
	Cores   *coreChange   `json:"cores,omitempty"`   // cores
	Memory  *memoryChange `json:"memory,omitempty"`  // memory
	Share   *shareChange  `json:"share,omitempty"`   // share-add, share-remove
}

// poolChange is a change of the allocation's hugepage pool about to be
// made: comparing the pool's size with Before tells a successor whether it
// was.
type poolChange struct {
	Before uint64 `json:"before"` // nr_hugepages before the change
	Grow   bool   `json:"grow"`   // adding pages (create); else giving them back
}

// recoveryTimeout bounds each recovery step that waits on a process or a
// VMM's control socket.
const recoveryTimeout = 10 * time.Second

// at marks a step of an operation; tests set crashPoint to stop the
// supervisor there as a crash would.
func (s *Supervisor) at(step string) {
	if s.crashPoint != nil {
		s.crashPoint(step)
	}
}

// writeRecord writes so's record as it is now, in phase, with the change
// under way (nil: none).
func (s *Supervisor) writeRecord(so *subOS, phase string, in *intent) error {
	s.mu.Lock()
	info := so.info
	s.mu.Unlock()
	s.mu.Lock()
	backends := backendRecords(so)
	s.mu.Unlock()
	raw, err := json.Marshal(persisted{Spec: info.Spec, AddedPages: so.added, Cgroup: info.Cgroup, Peer: info.Peer, SegmentPeers: info.SegmentPeers, CID: so.cid, Backends: backends})
	if err != nil {
		return err
	}
	r := store.Record{Allocation: info.Allocation, Spec: raw, Created: info.Created, Phase: phase}
	if so.proc != nil {
		r.PID, r.StartTime = so.proc.PID(), so.proc.StartTime()
	}
	if in != nil {
		if r.Intent, err = json.Marshal(in); err != nil {
			return err
		}
	}
	if err := s.store.Put(r); err != nil {
		return fmt.Errorf("record %s: %w", info.Name, err)
	}
	return nil
}

// intend writes so's record with a change about to be made to a running
// subOS; a failed write refuses the change.
func (s *Supervisor) intend(so *subOS, in intent) error {
	return s.writeRecord(so, store.PhaseRunning, &in)
}

// poolIntent writes so's record in phase with op and the allocation's
// pool size now, before the pool changes (grow or shrink).
func (s *Supervisor) poolIntent(so *subOS, phase, op string, grow bool) error {
	a := so.info.Allocation
	nr, err := s.cfg.Actuator.PoolSize(a.Node, a.PageSize)
	if err != nil {
		return fmt.Errorf("hugepage pool of node %d: %w", a.Node, err)
	}
	return s.writeRecord(so, phase, &intent{Op: op, Pool: &poolChange{Before: nr, Grow: grow}})
}

// pagesAdded is how many pages the supervisor has added to the pool for a
// record whose intent may be an unfinished pool change.
func (s *Supervisor) pagesAdded(a ledger.Allocation, recorded uint64, in *intent) uint64 {
	if in == nil || in.Pool == nil {
		return recorded
	}
	nr, err := s.cfg.Actuator.PoolSize(a.Node, a.PageSize)
	if err != nil {
		s.log.Warn("cannot tell whether a hugepage pool change was made", "subos", a.Name, "err", err)
		return recorded
	}
	if in.Pool.Grow {
		if nr > in.Pool.Before {
			return min(nr-in.Pool.Before, a.Pages)
		}
		return recorded
	}
	if nr < in.Pool.Before {
		return 0 // given back already
	}
	return recorded
}

// readopt rebuilds state from the store after a (re)start: records are
// adopted, reclaimed, rolled back, finished or quarantined.
func (s *Supervisor) readopt() error {
	recs, bad, err := s.store.Load()
	if err != nil {
		return err
	}
	for _, u := range bad {
		s.quarantine(u.Name, u.Err.Error())
	}
	for _, r := range recs {
		s.recoverRecord(r)
	}
	s.steerIRQs()
	return nil
}

// recordedSubOS is the subOS a record describes.
func (s *Supervisor) recordedSubOS(r store.Record, p persisted) *subOS {
	name := r.Allocation.Name
	info := Info{Name: name, State: StateRunning, PID: r.PID, Allocation: r.Allocation, Spec: p.Spec,
		Created: r.Created, ConsoleSocket: s.consolePath(name), Log: s.logPath(name), VMMLog: s.vmmLogPath(name), Cgroup: p.Cgroup, Adopted: true,
		Peer: p.Peer, SegmentPeers: p.SegmentPeers}
	return &subOS{info: info, added: p.AddedPages, stopped: make(chan struct{}), logFrom: fileSize(info.VMMLog), cid: p.CID, backends: recordedBackends(p)}
}

func (s *Supervisor) recoverRecord(r store.Record) {
	name := r.Allocation.Name
	var p persisted
	if err := json.Unmarshal(r.Spec, &p); err != nil {
		s.quarantine(name, "spec does not decode: "+err.Error())
		return
	}
	var in *intent
	if len(r.Intent) > 0 {
		in = new(intent)
		if err := json.Unmarshal(r.Intent, in); err != nil {
			s.quarantine(name, "intent does not decode: "+err.Error())
			return
		}
	}
	so := s.recordedSubOS(r, p)
	switch r.Phase {
	case store.PhaseCreating:
		so.added = s.pagesAdded(r.Allocation, p.AddedPages, in)
		s.teardown(so, s.cfg.Who, "rollback", "create interrupted by a supervisor restart")
		return
	case store.PhaseDestroying:
		so.added = s.pagesAdded(r.Allocation, p.AddedPages, in)
		if proc, err := s.cfg.Launcher.Adopt(r.PID, r.StartTime); err == nil {
			stopProcess(proc, recoveryTimeout)
		}
		s.teardown(so, s.cfg.Who, "destroy", "destroy finished after a supervisor restart")
		return
	case "", store.PhaseRunning:
	default:
		s.quarantine(name, "unknown phase "+strconv.Quote(r.Phase))
		return
	}
	if err := s.ledger.Adopt(r.Allocation); err != nil {
		// Its VMM, if any, is killed as an orphan: a subOS the ledger does
		// not account for would run on resources it may give to others.
		s.quarantine(name, "the ledger refuses it: "+err.Error())
		if so.added > 0 {
			if err := s.cfg.Actuator.ReleaseHugePages(r.Allocation.Node, r.Allocation.PageSize, so.added); err != nil {
				s.log.Warn("release hugepages of a quarantined record", "subos", name, "err", err)
			}
		}
		return
	}
	proc, err := s.cfg.Launcher.Adopt(r.PID, r.StartTime)
	if err != nil {
		s.log.Warn("VMM of a recorded subOS is gone; reclaiming", "subos", name, "err", err)
		s.reclaim(so, s.cfg.Who, fmt.Sprintf("VMM gone at supervisor start: %v", err))
		return
	}
	so.proc = proc
	if in != nil && in.Op != opCreate && in.Op != opDestroy {
		so.pending = in
	}
	s.subos[name] = so
	s.watch(so)
	s.adoptBackends(so, p)
	s.startAgent(so)
	s.event(s.cfg.Who, "adopt", name, 0, fmt.Sprintf("pid %d cores %s", r.PID, units.FormatCPUList(r.Allocation.Cores)))
}

// quarantine takes name's record out of use, verbatim, and reports it.
func (s *Supervisor) quarantine(name, reason string) {
	if err := s.store.Quarantine(name, reason); err != nil {
		s.log.Error("quarantine record", "record", name, "err", err)
	}
	s.log.Warn("record quarantined", "record", name, "reason", reason)
	shown := name
	if ledger.NameProblem(name) != "" {
		shown = "" // not a subOS name: only quoted in the detail
	}
	s.event(s.cfg.Who, "quarantine", shown, 0, strconv.QuoteToASCII(name)+": "+reason)
}

// Quarantined lists the records taken out of use, oldest first.
func (s *Supervisor) Quarantined() ([]store.Quarantined, error) { return s.store.Quarantined() }

// killGroup kills whatever runs in subOS name's cgroup; the pids killed.
func (s *Supervisor) killGroup(name string) []int {
	ctx, cancel := context.WithTimeout(context.Background(), recoveryTimeout)
	defer cancel()
	pids, err := s.cfg.Actuator.KillGroup(ctx, name)
	if err != nil {
		s.log.Warn("kill processes in cgroup", "group", name, "err", err)
	}
	return pids
}

// killOrphans kills what runs in cgroups no subOS owns and removes them.
func (s *Supervisor) killOrphans() {
	groups, err := s.cfg.Actuator.Groups()
	if err != nil {
		s.log.Warn("list cgroups", "err", err)
		return
	}
	for _, g := range groups {
		s.mu.Lock()
		_, owned := s.subos[g]
		s.mu.Unlock()
		if owned {
			continue
		}
		pids := s.killGroup(g)
		detail := fmt.Sprintf("group %s pids %v killed", g, pids)
		if err := s.cfg.Actuator.RemoveGroup(g); err != nil {
			s.log.Warn("remove orphan cgroup", "group", g, "err", err)
			detail += "; not removed: " + err.Error()
		}
		s.log.Warn("orphan cgroup", "group", g, "pids", pids)
		s.event(s.cfg.Who, "orphan", g, 0, detail)
	}
}

// settleDeviceChanges finishes the device and core changes that were
// under way when the previous supervisor stopped. Called once the regions are recovered.
func (s *Supervisor) settleDeviceChanges() {
	s.mu.Lock()
	var todo []*subOS
	for _, so := range s.subos {
		if so.pending != nil {
			todo = append(todo, so)
		}
	}
	s.mu.Unlock()
	for _, so := range todo {
		if in := so.pending; in.Cores != nil || in.Memory != nil {
			so.pending = nil
			if in.Cores != nil {
				s.settleCoreChange(so, in)
			}
			if in.Memory != nil {
				s.settleMemoryChange(so, in)
			}
			continue
		}
		s.settleDeviceChange(so)
	}
}

// settleDeviceChange adopts what the VMM reports: a device it has is
// recorded, one it does not have is dropped from the record, whichever way
// the change was going. Rolling back instead would need the guest to
// release a device it may already use, which it may refuse; the VMM's view
// is what the guest sees.
func (s *Supervisor) settleDeviceChange(so *subOS) {
	in := so.pending
	so.pending = nil
	name := so.info.Name
	ctx, cancel := context.WithTimeout(context.Background(), recoveryTimeout)
	defer cancel()
	devs, err := vmmctl.Devices(ctx, s.vmm(so))
	if err != nil {
		s.log.Warn("cannot ask VMM for its devices; record kept as it was", "subos", name, "err", err)
		s.event(s.cfg.Who, "recover", name, 0, fmt.Sprintf("%s interrupted; VMM did not list its devices (%v): record kept as it was", in.Op, err))
		if err := s.writeRecord(so, store.PhaseRunning, nil); err != nil {
			s.log.Error("store", "subos", name, "err", err)
		}
		return
	}
	has := map[string]bool{}
	for _, d := range devs {
		has[d.ID] = true
	}
	var detail string
	switch {
	case in.Disk != nil:
		d := *in.Disk
		present := has[d.ID]
		s.mu.Lock()
		var keep []Disk
		for _, x := range so.info.Spec.Disks {
			if x.ID != d.ID {
				keep = append(keep, x)
			}
		}
		if present {
			keep = append(keep, d)
		}
		so.info.Spec.Disks = keep
		s.mu.Unlock()
		detail = fmt.Sprintf("%s of disk %s interrupted: %s", in.Op, d.ID, presence(present))
	case in.Segment != nil:
		g := *in.Segment
		present := has[vmm.RegionDeviceID(g.Name)]
		slot, slotted := 0, false
		if sg := s.share.segments[g.Name]; sg != nil {
			slot, slotted = sg.grants[name]
		}
		if present && !slotted {
			present = false // the VMM lists it but did not export it
		}
		if !present && slotted {
			s.dropSegmentSlot(name, g.Name)
		}
		s.mu.Lock()
		segs := slices.DeleteFunc(slices.Clone(so.info.Spec.Segments), func(x SegmentGrant) bool { return x.Name == g.Name })
		peers := map[string]int{}
		for k, v := range so.info.SegmentPeers {
			if k != g.Name {
				peers[k] = v
			}
		}
		if present {
			segs = append(segs, g)
			peers[g.Name] = slot
		}
		so.info.Spec.Segments, so.info.SegmentPeers = segs, peers
		s.mu.Unlock()
		detail = fmt.Sprintf("%s of segment %s interrupted: %s", in.Op, g.Name, presence(present))
	case in.Share != nil:
		detail = s.settleShareChange(so, in, has[in.Share.Spec.ID])
	default:
		detail = "unknown change " + strconv.Quote(in.Op) + " interrupted: record kept as it was"
	}
	if err := s.writeRecord(so, store.PhaseRunning, nil); err != nil {
		s.log.Error("store", "subos", name, "err", err)
	}
	s.log.Info("settled an interrupted device change", "subos", name, "detail", detail)
	s.event(s.cfg.Who, "recover", name, 0, detail)
}

func presence(present bool) string {
	if present {
		return "the VMM has it, kept"
	}
	return "the VMM does not have it, dropped"
}

// verifyRunning checks, after recovery, that the ledger accounts for
// exactly the subOSes managed.
func (s *Supervisor) verifyRunning() error {
	if err := s.ledger.Verify(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.ledger.Allocations() {
		if _, ok := s.subos[a.Name]; !ok {
			return fmt.Errorf("ledger holds %s, which is not running", a.Name)
		}
	}
	if n := len(s.ledger.Allocations()); n != len(s.subos) {
		return errors.New("ledger and running subOSes differ")
	}
	return nil
}
