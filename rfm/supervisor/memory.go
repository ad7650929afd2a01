package supervisor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"rainforest/internal/units"
	"rainforest/ledger"
	"rainforest/rfm/vmmctl"
	"rainforest/vmm/config"
	"rainforest/vmm/ram"
)

// Memory resize. A subOS created with max_memory above its memory has a
// hotplug region of the difference above its RAM, which its VMM's
// virtio-mem device plugs into the guest block by block as the
// supervisor asks (vmmctl set_memory); the guest onlines what it gets as
// movable memory, so that it can give it back. The subOS's allocation
// holds its boot memory (Spec.Memory, which never goes) plus what is
// plugged, on hugepages of its node's pool:
//
//   - growing: the ledger takes free pages, the pool is grown if it has
//     too few free, then the guest plugs;
//   - shrinking: the guest unplugs (its VMM punches the pages out of the
//     region's memfd, so they are free in the pool again), the ledger
//     frees them, and pages the supervisor added to the pool for the
//     subOS go back to the host.
//
// A guest that plugs or unplugs only part of it in memoryStepTimeout (it
// could not migrate pages off a block, say) is stopped where it is: its
// VMM's requested size is set to what is plugged and the ledger holds
// exactly that, stated as a PartialError, never a hang. Unplugged blocks
// are inaccessible to the guest, so it cannot take pages the ledger has
// not given it. While a resize runs, the subOS's record carries it as an
// intent; a successor that finds one puts the guest back on the memory
// of its record (settleMemoryChange).

// opMemory is the intent of a memory resize.
const opMemory = "memory"

// memoryChange is the intent of a memory resize: the memory the record's
// allocation has (Before) and that being moved to (After), in bytes.
type memoryChange struct {
	Before uint64 `json:"before"`
	After  uint64 `json:"after"`
}

// memoryStepTimeout bounds how long a guest gets to plug or unplug.
const memoryStepTimeout = 30 * time.Second

// ErrPartial means a guest plugged or unplugged only part of the memory
// asked for (see PartialError).
var ErrPartial = errors.New("the guest resized its memory only in part")

// PartialError is a memory resize the guest completed in part: the subOS
// now holds Memory bytes (its ledger entry and its VMM agree), not the
// Requested ones.
type PartialError struct {
	Name      string
	Requested uint64 // the memory asked for, bytes
	Memory    uint64 // the memory it holds now
	Plugged   uint64 // of which hotplug memory
	Waited    time.Duration
}

func (e *PartialError) Error() string {
	return fmt.Sprintf("subOS %q: asked for %s of memory, the guest reached %s (%s of it hotplugged) in %s; it holds that now, in the ledger and its VMM",
		e.Name, units.FormatSize(e.Requested), units.FormatSize(e.Memory), units.FormatSize(e.Plugged), e.Waited.Round(time.Millisecond))
}

// Unwrap makes errors.Is(err, ErrPartial) hold.
func (e *PartialError) Unwrap() error { return ErrPartial }

// ResizeMemory makes running subOS name hold bytes of memory: its boot
// memory plus a multiple of its hotplug block size, at most its
// max_memory. It returns the subOS's info; a guest that got only part of
// the way returns it too, with a *PartialError.
func (s *Supervisor) ResizeMemory(ctx context.Context, name string, bytes uint64) (Info, error) {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	so, err := s.running(name)
	if err != nil {
		return Info{}, err
	}
	s.mu.Lock()
	info := so.info
	s.mu.Unlock()
	a := info.Allocation
	if err := memoryRoom(info, bytes); err != nil {
		return Info{}, err
	}
	if bytes == a.Memory {
		return info, nil
	}
	for _, ln := range a.Borrowed {
		if ln.Memory > 0 && bytes < a.Memory {
			// The ledger would give borrowed pages back first, which
			// the lender's guest must plug: that is rfm return's work.
			return Info{}, fmt.Errorf("%w: %q holds %s borrowed from %q (loan %d): give it back first (rfm return) to shrink it", ErrInvalid, name, units.FormatSize(ln.Memory), ln.Lender, ln.ID)
		}
	}
	base, top := info.Spec.Memory, info.Spec.MaxMemory
	start := time.Now()
	if err := s.intend(so, intent{Op: opMemory, Memory: &memoryChange{Before: a.Memory, After: bytes}}); err != nil {
		return Info{}, err
	}
	got, added, err := s.moveMemory(ctx, so, a, bytes)
	if err != nil {
		s.unintend(so)
		s.event(s.who(ctx), "resize-failed", name, time.Since(start), err.Error())
		return Info{}, err
	}
	after := s.settleMemory(so, a, bytes, got, added)
	took := time.Since(start)
	detail := fmt.Sprintf("memory %s -> %s (%s of %s hotplug memory plugged)", units.FormatSize(a.Memory), units.FormatSize(after.Memory),
		units.FormatSize(after.Memory-base), units.FormatSize(top-base))
	if got != bytes {
		perr := &PartialError{Name: name, Requested: bytes, Memory: after.Memory, Plugged: after.Memory - base, Waited: took}
		s.event(s.who(ctx), "resize-partial", name, took, perr.Error())
		out, _ := s.Get(name)
		return out, perr
	}
	s.event(s.who(ctx), "resize", name, took, detail)
	return s.Get(name)
}

// memoryRoom says whether the subOS of info can hold bytes of memory: it
// has hotplug memory, and bytes is its boot memory plus a multiple of its
// hotplug block, at most its max_memory (ErrInvalid otherwise).
func memoryRoom(info Info, bytes uint64) error {
	name, base, top := info.Name, info.Spec.Memory, info.Spec.MaxMemory
	block := config.HotplugBlockSize(ram.PageSize(info.Allocation.PageSize))
	switch {
	case top <= base:
		return fmt.Errorf("%w: %q has no hotplug memory: it was created without a max_memory above its memory (recreate it with --max-memory)", ErrInvalid, name)
	case bytes < base:
		return fmt.Errorf("%w: %s is below %q's boot memory %s: only hotplugged memory can go", ErrInvalid, units.FormatSize(bytes), name, units.FormatSize(base))
	case bytes > top:
		return fmt.Errorf("%w: %s is above %q's max_memory %s (fixed when it was created)", ErrInvalid, units.FormatSize(bytes), name, units.FormatSize(top))
	case (bytes-base)%block != 0:
		return fmt.Errorf("%w: %s is not %q's boot memory %s plus a multiple of its %s hotplug block", ErrInvalid, units.FormatSize(bytes), name, units.FormatSize(base), units.FormatSize(block))
	}
	return nil
}

// lostMemory is how many bytes the move takes away (negative: gives).
func (m move) lostMemory() int64 { return int64(m.before.Memory) - int64(m.after.Memory) }

// describeMemory is the audit detail of m: the memory, and the loan.
func describeMemory(m move, ch ledger.Change) string {
	d := fmt.Sprintf("memory %s -> %s", units.FormatSize(m.before.Memory), units.FormatSize(m.after.Memory))
	if ch.Loan != nil {
		d += fmt.Sprintf("; loan %d of %s from %s to %s", ch.Loan.ID, units.FormatSize(ch.Loan.Memory), ch.Loan.Lender, ch.Loan.Borrower)
	}
	return d
}

// growPool makes sure the pool has the pages a subOS going from before to
// after takes (none when it shrinks), counting what it adds as the
// subOS's.
func (s *Supervisor) growPool(so *subOS, before, after ledger.Allocation) error {
	if after.Memory <= before.Memory {
		return nil
	}
	added, err := s.cfg.Actuator.EnsureHugePages(after.Node, after.PageSize, (after.Memory-before.Memory)/after.PageSize)
	if err != nil {
		return fmt.Errorf("subOS %q: hugepages for %s more memory on node %d: %w", so.info.Name, units.FormatSize(after.Memory-before.Memory), after.Node, err)
	}
	s.mu.Lock()
	so.added += added
	s.mu.Unlock()
	return nil
}

// guestMemory has so's guest plug or unplug until the subOS holds bytes of
// memory, waiting for it; a guest that stops short is a *PartialError.
func (s *Supervisor) guestMemory(ctx context.Context, so *subOS, bytes uint64) error {
	start := time.Now()
	s.mu.Lock()
	name, base := so.info.Name, so.info.Spec.Memory
	s.mu.Unlock()
	st, err := vmmctl.SetMemoryWait(ctx, s.vmm(so), bytes-base, memoryStepTimeout)
	if err != nil {
		return fmt.Errorf("subOS %q: resize memory: %w", name, err)
	}
	if got := base + st.Plugged; got != bytes {
		return &PartialError{Name: name, Requested: bytes, Memory: got, Plugged: st.Plugged, Waited: time.Since(start)}
	}
	return nil
}

// moveMemory takes the ledger and the guest of so from allocation a to
// want bytes of memory. It returns the memory the guest reached (want, or
// a partial result between a.Memory and want) and the hugepages added to
// the pool for it; on error nothing has changed.
func (s *Supervisor) moveMemory(ctx context.Context, so *subOS, a ledger.Allocation, want uint64) (got, added uint64, err error) {
	name, base := so.info.Name, so.info.Spec.Memory
	if _, err := s.ledger.ResizeMemory(name, want, a.PageSize); err != nil {
		return 0, 0, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	undo := func() {
		if rerr := s.ledger.Restore([]ledger.Allocation{a}); rerr != nil {
			s.log.Error("ledger restore after a failed memory resize", "subos", name, "err", rerr)
		}
		if added > 0 {
			if rerr := s.cfg.Actuator.ReleaseHugePages(a.Node, a.PageSize, added); rerr != nil {
				s.log.Warn("give back hugepages after a failed memory resize", "subos", name, "err", rerr)
			}
		}
	}
	if want > a.Memory {
		added, err = s.cfg.Actuator.EnsureHugePages(a.Node, a.PageSize, (want-a.Memory)/a.PageSize)
		if err != nil {
			undo()
			return 0, 0, fmt.Errorf("subOS %q: hugepages for %s more memory on node %d: %w", name, units.FormatSize(want-a.Memory), a.Node, err)
		}
	}
	s.at("memory:" + name)
	st, err := vmmctl.SetMemoryWait(ctx, s.vmm(so), want-base, memoryStepTimeout)
	if err != nil {
		// The VMM refused or did not answer: ask where the guest is, and
		// take it back to where it was.
		back, berr := s.restoreGuestMemory(so, a.Memory-base)
		if berr != nil || back != a.Memory-base {
			s.log.Error("guest memory after a failed resize", "subos", name, "want", a.Memory-base, "plugged", back, "err", berr)
		}
		undo()
		return 0, 0, fmt.Errorf("subOS %q: resize memory: %w", name, err)
	}
	got = base + st.Plugged
	if got != want {
		// Stop the guest where it is: it plugs or unplugs nothing more.
		if _, err := vmmctl.SetMemory(context.WithoutCancel(ctx), s.vmm(so), st.Plugged); err != nil {
			s.log.Warn("hold a partial memory resize", "subos", name, "err", err)
		}
	}
	return got, added, nil
}

// restoreGuestMemory asks so's VMM for plugged bytes of hotplug memory
// and returns what the guest reached.
func (s *Supervisor) restoreGuestMemory(so *subOS, plugged uint64) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), memoryStepTimeout+recoveryTimeout)
	defer cancel()
	st, err := vmmctl.SetMemoryWait(ctx, s.vmm(so), plugged, memoryStepTimeout)
	if err != nil {
		return 0, err
	}
	return st.Plugged, nil
}

// settleMemory records that so holds got bytes of memory after a resize
// from allocation a toward want bytes that added hugepages to the pool:
// the ledger follows a partial result, pages the guest did not take or
// gave up go back to the host (as far as the supervisor added them for
// the subOS), and the record is written without its intent. It returns
// the new allocation.
func (s *Supervisor) settleMemory(so *subOS, a ledger.Allocation, want, got, added uint64) ledger.Allocation {
	name := so.info.Name
	cur, _ := s.ledger.Get(name)
	if cur.Memory != got {
		if rerr := s.ledger.Restore([]ledger.Allocation{a}); rerr != nil {
			s.log.Error("ledger restore for a partial memory resize", "subos", name, "err", rerr)
		}
		if got != a.Memory {
			if _, err := s.ledger.ResizeMemory(name, got, a.PageSize); err != nil {
				s.log.Error("ledger after a partial memory resize", "subos", name, "memory", got, "err", err)
			}
		}
		cur, _ = s.ledger.Get(name)
	}
	s.mu.Lock()
	total := so.added + added
	s.mu.Unlock()
	// Pages added to the pool for the subOS that it gave up, or did not
	// take, go back to the host.
	var spare uint64
	switch {
	case got < a.Memory:
		spare = min(total, (a.Memory-got)/a.PageSize)
	case got < want:
		spare = min(added, (want-got)/a.PageSize)
	}
	if spare > 0 {
		if err := s.cfg.Actuator.ReleaseHugePages(a.Node, a.PageSize, spare); err != nil {
			s.log.Warn("give hugepages back to the host", "subos", name, "pages", spare, "err", err)
			spare = 0
		}
	}
	s.mu.Lock()
	so.added = total - spare
	so.info.Allocation = cur
	s.mu.Unlock()
	if err := s.persist(so); err != nil {
		s.log.Error("store", "subos", name, "err", err)
	}
	s.publish()
	return cur
}

// settleMemoryChange puts a subOS whose memory resize a previous
// supervisor left unfinished back on the memory of its record: its guest
// plugs or unplugs to it; if it cannot in time, the ledger and the record
// take what it reached.
func (s *Supervisor) settleMemoryChange(so *subOS, in *intent) {
	name := so.info.Name
	a := so.info.Allocation
	base := so.info.Spec.Memory
	plugged, err := s.restoreGuestMemory(so, a.Memory-base)
	detail := fmt.Sprintf("memory resize %s -> %s interrupted; back on %s", units.FormatSize(in.Memory.Before), units.FormatSize(in.Memory.After), units.FormatSize(a.Memory))
	switch {
	case err != nil:
		detail += " in the ledger (the VMM: " + err.Error() + ")"
	case base+plugged != a.Memory:
		s.settleMemory(so, a, a.Memory, base+plugged, 0)
		detail += fmt.Sprintf(" asked; the guest reached %s, which the ledger now holds", units.FormatSize(base+plugged))
	}
	s.event(s.cfg.Who, "recover", name, 0, detail)
	if err := s.persist(so); err != nil {
		s.log.Error("store", "subos", name, "err", err)
	}
}
