package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"rainforest/ficm/board"
	"rainforest/ficm/endpoint"
	"rainforest/ledger"
	"rainforest/rfm/region"
	"rainforest/rfm/vmmctl"
	"rainforest/vmm/config"
	"rainforest/vmm/shmem/abi"
)

// Sharing: every subOS is a peer of the machine's FICM group (region
// "ficm", the supervisor is peer 0) and of the segments its spec is granted.
// The supervisor owns the regions (memfds and eventfds), hands them to each
// VMM over its control socket before the guest boots, publishes the board
// (who is which peer, on which cores) in its own output section, and sends
// control messages as peer 0. A restarted supervisor gets the regions back
// from the VMMs it re-adopts (vmmctl export).

// Sharing limits.
const (
	// DefaultFICMPeers is the FICM group size: the supervisor and 15
	// subOSes.
	DefaultFICMPeers = 16
	// SegmentPeers is the number of peer slots (grants) of a segment.
	SegmentPeers = 16
	// MaxSegmentSize bounds a segment.
	MaxSegmentSize = 1 << 30
	// FICMRegion is the FICM group's region name.
	FICMRegion = "ficm"
)

// Sharing errors.
var (
	// ErrNoPeerSlot means the FICM group or a segment has no free slot.
	ErrNoPeerSlot = errors.New("no free peer slot")
	// ErrNotListening means the subOS has no FICM endpoint open (its
	// state table entry is not alive), so it cannot take messages.
	ErrNotListening = errors.New("subOS has no FICM endpoint open")
)

// SegmentGrant grants a subOS a named shared segment; the first grant
// creates the segment with its size, the later ones may leave Size 0.
type SegmentGrant struct {
	Name     string `json:"name"`
	Size     uint64 `json:"size,omitempty"` // bytes, a multiple of 4 KiB
	ReadOnly bool   `json:"readonly,omitempty"`
}

// segment is a shared segment and its grants (subOS name -> peer slot).
type segment struct {
	reg    *region.Region
	grants map[string]int
}

// sharing is the supervisor's regions, guarded by Supervisor.opMu (the
// Host has its own lock for messages).
type sharing struct {
	ficm     *region.Region
	host     *region.Host
	stopHost context.CancelFunc
	hostDone chan struct{}
	segments map[string]*segment
}

func (s *Supervisor) ctlPath(name string) string { return filepath.Join(s.cfg.RunDir, name+".ctl") }

// vmm names so's control socket and the VMM process that must serve it
// (vmmctl.DialVMM checks).
func (s *Supervisor) vmm(so *subOS) vmmctl.VMM {
	return vmmctl.VMM{Path: s.ctlPath(so.info.Name), PID: controlPID(so.proc)}
}

// controlPID is the pid that serves a VMM's control socket: the VMM
// process's own, unless the Process says otherwise with a ControlPID
// method (the tests' fake VMMs serve from the test process).
func controlPID(p Process) int {
	if c, ok := p.(interface{ ControlPID() int }); ok {
		return c.ControlPID()
	}
	return p.PID()
}

// startSharing makes (or, from re-adopted VMMs, recovers) the FICM group and
// the segments, and starts the supervisor's FICM peer.
func (s *Supervisor) startSharing() error {
	s.share.segments = map[string]*segment{}
	for _, so := range s.subos {
		s.recoverRegions(so)
	}
	if s.share.ficm == nil {
		l, err := region.FICMLayout(s.cfg.FICMPeers)
		if err != nil {
			return err
		}
		if s.share.ficm, err = region.Create(region.Spec{Name: FICMRegion, Protocol: abi.ProtocolFICM, Layout: l, Vectors: 1}); err != nil {
			return err
		}
	}
	host, err := region.NewHost(s.share.ficm, s.log.With("ficm", "host"))
	if err != nil {
		s.share.ficm.Close()
		s.share.ficm = nil
		return err
	}
	s.share.host = host
	// Entries of peers no live subOS holds are stale (a VMM that died
	// while no supervisor watched).
	held := map[int]bool{0: true}
	for _, so := range s.subos {
		held[so.info.Peer] = true
	}
	for p := 1; p < s.share.ficm.Spec().Layout.Peers; p++ {
		if !held[p] {
			_ = host.SetAlive(p, false)
			_, _ = host.Forget(p)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.share.stopHost, s.share.hostDone = cancel, make(chan struct{})
	go func() { // owner: the supervisor; Close stops it
		defer close(s.share.hostDone)
		if err := host.Run(ctx); err != nil {
			s.log.Error("FICM host peer stopped", "err", err)
		}
	}()
	s.publish()
	return nil
}

// stopSharing stops the FICM peer and releases the supervisor's hold on
// the regions (VMMs keep theirs).
func (s *Supervisor) stopSharing() {
	if s.share.stopHost != nil {
		s.share.stopHost()
		<-s.share.hostDone
		s.share.stopHost = nil
	}
	for _, sg := range s.share.segments {
		sg.reg.Close()
	}
	s.share.segments = nil
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.share.ficm != nil {
		s.share.ficm.Close()
		s.share.ficm = nil
	}
}

// recoverRegions asks a re-adopted VMM for its regions and keeps the ones
// the supervisor does not hold yet.
func (s *Supervisor) recoverRegions(so *subOS) {
	regions, files, err := exportRegions(s.vmm(so))
	if err != nil {
		s.log.Warn("cannot recover shared memory from subOS", "subos", so.info.Name, "err", err)
		return
	}
	mems, bells, err := vmmctl.SplitFiles(regions, files)
	if err != nil {
		s.log.Warn("cannot recover shared memory from subOS", "subos", so.info.Name, "err", err)
		return
	}
	for i, r := range regions {
		spec := region.Spec{Name: r.Name, Protocol: r.Protocol, Layout: abi.Layout{Peers: r.Peers, RWSize: r.RWSize, OutputSize: r.OutputSize}, Vectors: r.Vectors}
		have := false
		switch {
		case r.Protocol == abi.ProtocolFICM && r.Name == FICMRegion:
			have = s.share.ficm != nil
		case r.Protocol == abi.ProtocolSegment:
			if sg := s.share.segments[r.Name]; sg != nil {
				sg.grants[so.info.Name] = r.Self
				have = true
			}
		default:
			have = true // not ours
		}
		if have {
			closeFiles(append(bells[i], mems[i]))
			continue
		}
		reg, err := region.Restore(spec, mems[i], bells[i])
		if err != nil {
			s.log.Warn("cannot recover region", "subos", so.info.Name, "region", r.Name, "err", err)
			continue
		}
		if r.Protocol == abi.ProtocolFICM {
			s.share.ficm = reg
		} else {
			s.share.segments[r.Name] = &segment{reg: reg, grants: map[string]int{so.info.Name: r.Self}}
		}
	}
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

func exportRegions(v vmmctl.VMM) ([]config.Region, []*os.File, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return vmmctl.Export(ctx, v)
}

// segmentProblems lists what is wrong with grants on their own.
func segmentProblems(grants []SegmentGrant) []ledger.Problem {
	var probs []ledger.Problem
	seen := map[string]bool{}
	for i, g := range grants {
		field := "segments[" + strconv.Itoa(i) + "]"
		switch {
		case ledger.NameProblem(g.Name) != "":
			probs = append(probs, ledger.Problem{Field: field + ".name", Message: "segment " + ledger.NameProblem(g.Name)})
		case seen[g.Name]:
			probs = append(probs, ledger.Problem{Field: field + ".name", Message: fmt.Sprintf("segment %q granted twice", g.Name)})
		}
		if g.Size%4096 != 0 || g.Size > MaxSegmentSize {
			probs = append(probs, ledger.Problem{Field: field + ".size", Message: fmt.Sprintf("%d is not a multiple of 4 KiB up to 1 GiB", g.Size)})
		}
		seen[g.Name] = true
	}
	return probs
}

// checkSegments validates grants against each other and existing segments.
func (s *Supervisor) checkSegments(grants []SegmentGrant) error {
	if probs := segmentProblems(grants); len(probs) > 0 {
		return &ProblemsError{Problems: probs}
	}
	for _, g := range grants {
		sg := s.share.segments[g.Name]
		switch {
		case sg == nil && g.Size == 0:
			return fmt.Errorf("%w: segment %q does not exist yet: give its size", ErrInvalid, g.Name)
		case sg != nil && g.Size != 0 && g.Size != sg.reg.Spec().Layout.RWSize:
			return fmt.Errorf("%w: segment %q is %d bytes, not %d", ErrInvalid, g.Name, sg.reg.Spec().Layout.RWSize, g.Size)
		case sg != nil && len(sg.grants) >= SegmentPeers:
			return fmt.Errorf("%w: segment %q is granted to %d subOSes already", ErrNoPeerSlot, g.Name, SegmentPeers)
		}
	}
	return nil
}

// freeSlot is the lowest slot in [from, n) not in used.
func freeSlot(from, n int, used map[int]bool) (int, bool) {
	for p := from; p < n; p++ {
		if !used[p] {
			return p, true
		}
	}
	return 0, false
}

// membership is what a new subOS gets: its FICM peer, its segment slots,
// and its regions with their files. undo releases what join took.
type membership struct {
	peer     int
	segPeers map[string]int
	regions  []config.Region
	files    []*os.File
	undo     func()
}

// join reserves a FICM peer slot and segment slots for name and builds the
// attach message. Called under opMu.
func (s *Supervisor) join(name string, grants []SegmentGrant) (*membership, error) {
	if err := s.checkSegments(grants); err != nil {
		return nil, err
	}
	used := map[int]bool{0: true}
	s.mu.Lock()
	for _, so := range s.subos {
		if so.info.Peer > 0 {
			used[so.info.Peer] = true
		}
	}
	s.mu.Unlock()
	fl := s.share.ficm.Spec()
	peer, ok := freeSlot(1, fl.Layout.Peers, used)
	if !ok {
		return nil, fmt.Errorf("%w: the FICM group has %d subOS slots, all taken", ErrNoPeerSlot, fl.Layout.Peers-1)
	}
	m := &membership{peer: peer, segPeers: map[string]int{}}
	m.undo = func() { // after the VMM, if any, was stopped
		if s.share.host != nil {
			_ = s.share.host.SetAlive(peer, false)
			_, _ = s.share.host.Forget(peer)
		}
		for sname := range m.segPeers {
			s.dropSegmentSlot(name, sname)
		}
	}
	add := func(r *region.Region, self int, ro bool) {
		m.regions = append(m.regions, regionOf(r, self, ro))
		m.files = append(append(m.files, r.MemFile()), r.Bells()...)
	}
	add(s.share.ficm, peer, false)
	for _, g := range grants {
		sg, p, err := s.takeSegmentSlot(name, g)
		if err != nil {
			m.undo()
			return nil, err
		}
		m.segPeers[g.Name] = p
		add(sg.reg, p, g.ReadOnly)
	}
	if _, err := vmmctl.FileCount(m.regions); err != nil {
		m.undo()
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return m, nil
}

// takeSegmentSlot gives subOS name a slot in segment g.Name, creating the
// segment with g.Size when it does not exist yet (checkSegments has
// checked g). Called under opMu.
func (s *Supervisor) takeSegmentSlot(name string, g SegmentGrant) (*segment, int, error) {
	sg := s.share.segments[g.Name]
	if sg == nil {
		l, err := region.SegmentLayout(SegmentPeers, g.Size)
		if err != nil {
			return nil, 0, fmt.Errorf("%w: segment %q: %w", ErrInvalid, g.Name, err)
		}
		reg, err := region.Create(region.Spec{Name: g.Name, Protocol: abi.ProtocolSegment, Layout: l, Vectors: 1})
		if err != nil {
			return nil, 0, fmt.Errorf("segment %q: %w", g.Name, err)
		}
		sg = &segment{reg: reg, grants: map[string]int{}}
		s.share.segments[g.Name] = sg
	}
	slots := map[int]bool{}
	for _, p := range sg.grants {
		slots[p] = true
	}
	p, ok := freeSlot(0, SegmentPeers, slots)
	if !ok {
		return nil, 0, fmt.Errorf("%w: segment %q is granted to %d subOSes already", ErrNoPeerSlot, g.Name, SegmentPeers)
	}
	sg.grants[name] = p
	return sg, p, nil
}

// dropSegmentSlot takes subOS name's slot in segment sname back and frees
// the segment when nobody holds it any more. Called under opMu.
func (s *Supervisor) dropSegmentSlot(name, sname string) {
	sg := s.share.segments[sname]
	if sg == nil {
		return
	}
	delete(sg.grants, name)
	if len(sg.grants) == 0 {
		sg.reg.Close()
		delete(s.share.segments, sname)
	}
}

// regionOf is region r as peer self of it sees it.
func regionOf(r *region.Region, self int, readOnly bool) config.Region {
	sp := r.Spec()
	return config.Region{Name: sp.Name, Protocol: sp.Protocol, Peers: sp.Layout.Peers,
		RWSize: sp.Layout.RWSize, OutputSize: sp.Layout.OutputSize, Vectors: sp.Vectors, Self: self, RWReadOnly: readOnly}
}

// leave releases a departed subOS's slots (its VMM has exited): its FICM
// state entry is cleared (which raises the state-change interrupt on the
// other subOSes, so that their channels to it fail at once), the messages
// still queued to it are dropped, and segments nobody holds any more are
// freed. Called under opMu.
func (s *Supervisor) leave(info Info) {
	if s.share.host != nil && info.Peer > 0 {
		if err := s.share.host.SetAlive(info.Peer, false); err != nil {
			s.log.Warn("clear FICM state", "subos", info.Name, "err", err)
		} else if n, err := s.share.host.Forget(info.Peer); err != nil {
			s.log.Warn("drop messages to a departed subOS", "subos", info.Name, "err", err)
		} else if n > 0 {
			s.log.Info("dropped messages queued to a departed subOS", "subos", info.Name, "messages", n)
		}
	}
	for sname, sg := range s.share.segments {
		if _, ok := sg.grants[info.Name]; ok {
			s.dropSegmentSlot(info.Name, sname)
		}
	}
	os.Remove(s.ctlPath(info.Name))
}

// publish writes the board: every listed subOS, its peer and cores.
func (s *Supervisor) publish() {
	if s.share.host == nil {
		return
	}
	s.mu.Lock()
	var entries []board.Entry
	for _, so := range s.subos {
		if so.info.Peer <= 0 || so.info.State == StateStarting {
			continue
		}
		st := board.StateRunning
		if so.info.State == StateStopping {
			st = board.StateStopping
		}
		cores := so.info.Allocation.Cores
		if len(cores) > board.MaxCommCores {
			cores = cores[:board.MaxCommCores]
		}
		entries = append(entries, board.Entry{Peer: so.info.Peer, State: st, CommCores: append([]int(nil), cores...), Name: so.info.Name, MAC: firstMAC(so.info.Spec)})
	}
	s.mu.Unlock()
	sort.Slice(entries, func(i, j int) bool { return entries[i].Peer < entries[j].Peer })
	if _, err := s.share.host.Publish(entries); err != nil {
		s.log.Warn("publish board", "err", err)
	}
}

// Message sends a control text message to a subOS over FICM (a program
// there reads it with `rfcom control`).
func (s *Supervisor) Message(ctx context.Context, name, text string) error {
	info, err := s.Get(name)
	if err != nil {
		return err
	}
	s.mu.Lock() // stopSharing unmaps the region under mu
	defer s.mu.Unlock()
	if info.Peer <= 0 || s.share.ficm == nil {
		return fmt.Errorf("%w: %q is not in the FICM group", ErrNotListening, name)
	}
	if err := s.share.host.SendText(info.Peer, text); err != nil {
		if errors.Is(err, endpoint.ErrPeerDown) {
			return fmt.Errorf("%w: %q (FICM peer %d; start `rfcom control` there)", ErrNotListening, name, info.Peer)
		}
		return fmt.Errorf("message to %q: %w", name, err)
	}
	s.event(s.who(ctx), "message", name, 0, text)
	return nil
}

// Board returns the published board.
func (s *Supervisor) Board() (board.Board, error) {
	s.mu.Lock() // stopSharing unmaps the region under mu
	defer s.mu.Unlock()
	if s.share.ficm == nil {
		return board.Board{}, fmt.Errorf("%w: the supervisor is shutting down", ErrNotListening)
	}
	out, err := s.share.ficm.Output(0)
	if err != nil {
		return board.Board{}, err
	}
	return board.Read(out[:board.PageSize])
}
