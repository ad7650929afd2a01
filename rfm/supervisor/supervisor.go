// Package supervisor is RainForest's supervisor: it owns the machine's
// resource ledger, creates and destroys subOSes (one `rfm vmm` process each,
// in its own cgroup with exclusive cores and hugepages reserved before it
// starts), records every adjustment in an append-only audit log, and
// re-adopts running subOSes after a restart. Every change is written as an
// intent to the subOS's record before it is made, so that a supervisor
// killed at any instant loses no subOS (see lifecycle.go). The ledger
// decides; the Actuator applies; the Launcher runs VMM processes.
package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"rainforest/internal/units"
	"rainforest/ledger"
	"rainforest/ledger/store"
	"rainforest/partitioner"
	"rainforest/rfm/share"
	"rainforest/rfm/vmmctl"
	"rainforest/vmm/config"
	"rainforest/vmm/consolelog"
	"rainforest/vmm/ram"
	"rainforest/vmm/virtio/blk"
)

// Sentinel errors the API maps to status codes.
var (
	ErrInvalid  = errors.New("invalid request")
	ErrExists   = errors.New("subOS already exists")
	ErrNotFound = errors.New("no such subOS")
)

// Group is a subOS's cgroup.
type Group interface {
	Path() string
	AddProcess(pid int) error
	// Limit sets the group's memory.max and pids.max (0: unchanged).
	Limit(memoryMax uint64, pidsMax int) error
}

// Actuator applies allocations to the host (rfm/actuator in production).
type Actuator interface {
	CreateGroup(name string, cores []int, memNodes []int) (Group, error)
	RemoveGroup(name string) error
	EnsureHugePages(node int, pageSize uint64, pages uint64) (added uint64, err error)
	ReleaseHugePages(node int, pageSize uint64, pages uint64) error
	// PoolSize is the size (nr_hugepages) of node's pool of pageSize pages.
	PoolSize(node int, pageSize uint64) (uint64, error)
	// Groups lists the subOS cgroups that exist (by name), and KillGroup
	// kills every process in one and waits until it is empty, returning
	// their pids: a restarted supervisor's way to orphans.
	Groups() ([]string, error)
	KillGroup(ctx context.Context, name string) ([]int, error)
	// SetCores changes the cores of a group whose processes run.
	SetCores(name string, cores []int) error
}

// Config configures a Supervisor.
type Config struct {
	StateDir     string // holds ledger.db
	RunDir       string // holds subOS logs and console sockets
	Housekeeping []int  // cores kept for the host (default: the first online core)
	Inventory    *partitioner.Inventory
	Actuator     Actuator
	Launcher     Launcher
	// Network makes the host side of NICs (TAPs, bridges); nil: subOSes
	// with NICs on them are refused.
	Network Network
	// Uplinks starts the user-mode network processes of NICs on the
	// uplink; nil: subOSes with such NICs are refused.
	Uplinks UplinkStarter
	Logger  *slog.Logger
	Who     string // recorded as the actor of audit events
	// SteerIRQs, when set, keeps host interrupts off subOS cores: it is
	// called with every core subOSes own after each change, and returns a
	// function undoing its previous call (rfm/actuator's SteerIRQs).
	SteerIRQs func(avoid []int) (restore func() error, err error)
	// FICMPeers is the FICM group's size, the supervisor included
	// (DefaultFICMPeers when 0).
	FICMPeers int
	// SocketGroup, when > 0, is the gid of the group that may use the API
	// and the subOS consoles, whose sockets live in RunDir: a RunDir New
	// creates is then 0750 with that group (else 0700). StateDir is 0700.
	SocketGroup int
	// Jail confines the VMMs (see JailConfig).
	Jail JailConfig
	// Now is the clock of latency samples and of the autoscaler (nil:
	// time.Now); tests set it.
	Now func() time.Time
	// AutoscaleTicks, when set, steps the autoscaler at each value
	// received (instead of every AutoscaleInterval); tests set it.
	AutoscaleTicks <-chan time.Time
	// Virtiofsd lists where to look for virtiofsd, which serves shares
	// (nil: share.DefaultBinaries), and ShareSandbox is its sandbox
	// ("": share.DefaultSandbox).
	Virtiofsd    []string
	ShareSandbox share.Sandbox
}

// Supervisor manages subOSes.
type Supervisor struct {
	cfg    Config
	log    *slog.Logger
	ledger *ledger.Ledger
	store  *store.Store

	// opMu serializes lifecycle operations (create, destroy, reclaim);
	// mu guards subos only and is held briefly, so listing never waits for
	// a VMM to start.
	opMu       sync.Mutex
	mu         sync.Mutex
	subos      map[string]*subOS
	restoreIRQ func() error   // undoes the last IRQ steering; under opMu
	wg         sync.WaitGroup // watchers
	share      sharing        // regions; under opMu
	// loops are the loop networks the supervisor holds, by name (under
	// mu; made and closed under opMu; see loops.go).
	loops map[string]*loopNet

	// crashPoint, set by tests only, is called at each step of an
	// operation (see at).
	crashPoint func(step string)
	// exits says how the VMMs of subOSes gone on their own ended; under mu.
	exits map[string]Exit
	// feed hands the audit events to their subscribers (SubscribeEvents).
	feed EventFeed
	// counts are the running totals Counters returns.
	counts counts
	// auto is the latency-driven autoscaler (autoscale.go).
	auto autoscaler
	// vfsBinary is the virtiofsd found (under vfsMu); makeView and
	// removeView make and remove read-only views of shared directories
	// (share.ReadOnlyView and share.RemoveView; tests replace them).
	vfsMu      sync.Mutex
	vfsBinary  *share.Binary
	makeView   func(src, dst string) error
	removeView func(dst string) error
	// backendGrace is how long a virtiofsd's end waits for its VMM's
	// before it fails the share (backendExitGrace; tests shorten it).
	backendGrace time.Duration
}

type subOS struct {
	info    Info
	proc    Process
	added   uint64 // hugepages the actuator added for this subOS
	stopped chan struct{}
	pending *intent // a device change a previous supervisor left unfinished
	// logFrom is where this VMM's part of its (appended) log begins.
	logFrom int64
	// uplinks are the user-mode network processes of its NICs this
	// supervisor started (a successor knows them only as processes of
	// the subOS's cgroup, which go with it). Under mu.
	uplinks []UplinkProcess
	// cid is the guest's vsock CID (0: no vsock device, a subOS created
	// before agents); agent follows its agent (nil without). Under mu.
	cid   uint32
	agent *agentSession
	// backends are its shares' virtiofsd, by share id; under mu.
	backends map[string]*backend
}

// persisted is what the store keeps beside the allocation.
type persisted struct {
	Spec         Spec           `json:"spec"`
	AddedPages   uint64         `json:"added_pages"`
	Cgroup       string         `json:"cgroup"`
	Peer         int            `json:"ficm_peer,omitempty"`
	SegmentPeers map[string]int `json:"segment_peers,omitempty"`
	// CID is the guest's vsock CID (0: none).
	CID uint32 `json:"vsock_cid,omitempty"`
	// Backends are its shares' virtiofsd processes.
	Backends []backendRecord `json:"backends,omitempty"`
}

// New opens the ledger store, rebuilds the ledger from it and re-adopts the
// subOSes whose VMM still runs; the others are reclaimed (resources freed,
// event logged).
func New(cfg Config) (*Supervisor, error) {
	if cfg.Inventory == nil || cfg.Actuator == nil || cfg.Launcher == nil {
		return nil, fmt.Errorf("%w: supervisor needs an inventory, an actuator and a launcher", ErrInvalid)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Who == "" {
		cfg.Who = "supervisor"
	}
	if cfg.FICMPeers == 0 {
		cfg.FICMPeers = DefaultFICMPeers
	}
	// Both directories must be the supervisor's alone: whoever can write
	// there can swap the ledger or plant a socket.
	if err := prepareDir("state directory", cfg.StateDir, 0o700, 0); err != nil {
		return nil, err
	}
	runMode := os.FileMode(0o700)
	if cfg.SocketGroup > 0 {
		runMode = 0o750
	}
	if err := prepareDir("run directory", cfg.RunDir, runMode, cfg.SocketGroup); err != nil {
		return nil, err
	}
	if cfg.SocketGroup > 0 {
		if p := groupReachProblem(cfg.RunDir, cfg.SocketGroup); p != "" {
			cfg.Logger.Warn("run directory", "problem", p)
		}
	}
	l, err := ledger.New(cfg.Inventory, cfg.Housekeeping)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(filepath.Join(cfg.StateDir, "ledger.db"))
	if err != nil {
		return nil, err
	}
	s := &Supervisor{cfg: cfg, log: cfg.Logger, ledger: l, store: st, subos: map[string]*subOS{}, loops: map[string]*loopNet{},
		makeView: share.ReadOnlyView, removeView: share.RemoveView, backendGrace: backendExitGrace}
	if err := s.readopt(); err != nil {
		st.Close()
		return nil, err
	}
	s.killOrphans()
	s.sweepShareDirs()
	if err := s.startSharing(); err != nil {
		s.Close()
		return nil, fmt.Errorf("FICM group: %w", err)
	}
	s.opMu.Lock() // watchers may reclaim meanwhile
	s.settleDeviceChanges()
	err = s.verifyRunning()
	s.opMu.Unlock()
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("after recovery: %w", err)
	}
	s.startAutoscaler()
	return s, nil
}

// Close stops watching subOSes (they keep running) and closes the store.
func (s *Supervisor) Close() error {
	s.stopAutoscaler()
	s.mu.Lock()
	running := make([]*subOS, 0, len(s.subos))
	for _, so := range s.subos {
		running = append(running, so)
	}
	s.mu.Unlock()
	for _, so := range running {
		s.stopAgent(so)
	}
	s.mu.Lock()
	for _, so := range s.subos {
		close(so.stopped)
		if so.proc != nil {
			so.proc.Release()
		}
		for _, b := range so.backends {
			if b.proc != nil {
				b.proc.Release()
			}
		}
	}
	s.subos = map[string]*subOS{}
	s.mu.Unlock()
	s.wg.Wait()
	s.opMu.Lock()
	s.stopSharing()
	s.opMu.Unlock()
	s.feed.Close()
	return s.store.Close()
}

// Ledger exposes the ledger (read-only use).
func (s *Supervisor) Ledger() *ledger.Ledger { return s.ledger }

// Inventory returns the discovered machine.
func (s *Supervisor) Inventory() *partitioner.Inventory { return s.cfg.Inventory }

func (s *Supervisor) consolePath(name string) string {
	return filepath.Join(s.cfg.RunDir, name+".sock")
}

func (s *Supervisor) logPath(name string) string { return filepath.Join(s.cfg.RunDir, name+".log") }

type actorKey struct{}

// WithActor records in ctx who asks for an operation (the API puts the
// client's credentials there); the audit log names them.
func WithActor(ctx context.Context, who string) context.Context {
	return context.WithValue(ctx, actorKey{}, who)
}

// Actor returns who ctx says is asking, or "" when it does not say.
func Actor(ctx context.Context) string {
	who, _ := ctx.Value(actorKey{}).(string)
	return who
}

// who is the actor recorded for an operation made with ctx.
func (s *Supervisor) who(ctx context.Context) string {
	if w := Actor(ctx); w != "" {
		return w
	}
	return s.cfg.Who
}

// event appends to the audit log; a failing log write is reported, never
// fatal to the operation already done.
// Appending and publishing happen under the feed's lock, so that
// subscribers get the events in sequence order.
func (s *Supervisor) event(who, what, name string, d time.Duration, detail string) {
	s.feed.mu.Lock()
	defer s.feed.mu.Unlock()
	e := store.Event{Time: time.Now().UTC(), Who: who, What: what, Name: name, Duration: d, Detail: detail}
	seq, err := s.store.Append(e)
	if err != nil {
		s.log.Error("audit log", "err", err)
		return
	}
	e.Seq = seq
	s.counts.event(what)
	s.feed.publishLocked(e)
}

// watch reclaims a subOS's resources when its VMM exits on its own.
func (s *Supervisor) watch(so *subOS) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		select {
		case <-so.proc.Done():
		case <-so.stopped:
			return
		}
		s.opMu.Lock()
		defer s.opMu.Unlock()
		s.mu.Lock()
		cur, ok := s.subos[so.info.Name]
		mine := ok && cur == so && so.info.State != StateStopping
		if mine {
			so.info.State = StateStopping
		}
		s.mu.Unlock()
		if !mine {
			return
		}
		// Listed (as stopping) until its resources are free.
		e := vmmExit(so.info.VMMLog, so.logFrom)
		s.counts.vmmExit()
		s.recordExit(so.info.Name, e)
		s.reclaim(so, s.cfg.Who, exitDetail(so.proc, so.info.Log))
		s.mu.Lock()
		delete(s.subos, so.info.Name)
		s.mu.Unlock()
		s.publish()
	}()
}

// reclaim frees everything a subOS held and removes its record.
func (s *Supervisor) reclaim(so *subOS, who, why string) { s.teardown(so, who, "reclaim", why) }

// teardown frees everything a subOS held (killing what still runs in its
// cgroup) and removes its record, then logs the event what. The record
// says destroying until it is gone, and says so before the hugepage pool
// shrinks, so that a successor finishes the work after a crash.
func (s *Supervisor) teardown(so *subOS, who, what, why string) {
	start := time.Now()
	a := so.info.Allocation
	s.stopAgent(so)
	if err := s.writeRecord(so, store.PhaseDestroying, &intent{Op: opDestroy}); err != nil {
		s.log.Error("store", "subos", a.Name, "err", err)
	}
	s.stopUplinks(so)  // their VMM is gone: they go too
	s.stopBackends(so) // after the VMM, before what else runs in the cgroup
	s.at("reclaim:group")
	if pids := s.killGroup(a.Name); len(pids) > 0 {
		why += fmt.Sprintf(" (killed pids %v left in its cgroup)", pids)
	}
	if err := s.cfg.Actuator.RemoveGroup(a.Name); err != nil {
		s.log.Warn("remove cgroup", "subos", a.Name, "err", err)
	}
	// The read-only views, once no virtiofsd serves them.
	s.removeShareDir(a.Name)
	s.releaseNICs(so) // its VMM is gone, and its TAPs with it
	if so.added > 0 {
		if err := s.poolIntent(so, store.PhaseDestroying, opDestroy, false); err != nil {
			s.log.Error("store", "subos", a.Name, "err", err)
		}
		s.at("reclaim:pages")
		if err := s.cfg.Actuator.ReleaseHugePages(a.Node, a.PageSize, so.added); err != nil {
			s.log.Warn("release hugepages", "subos", a.Name, "err", err)
		}
		s.at("reclaim:pages-released")
		so.added = 0
		if err := s.writeRecord(so, store.PhaseDestroying, &intent{Op: opDestroy}); err != nil {
			s.log.Error("store", "subos", a.Name, "err", err)
		}
	}
	s.at("reclaim:record")
	s.unwindLoans(a.Name)
	if _, err := s.ledger.Release(a.Name); err != nil && !errors.Is(err, ledger.ErrNotFound) {
		s.log.Warn("ledger release", "subos", a.Name, "err", err)
	}
	if err := s.store.Delete(a.Name); err != nil {
		s.log.Error("store delete", "subos", a.Name, "err", err)
	}
	os.Remove(s.consolePath(a.Name))
	os.Remove(s.vsockPath(a.Name))
	if so.info.Spec.Image != "" {
		os.Remove(s.imageCopyPath(a.Name))
	}
	os.Remove(s.jailDir(a.Name))
	// The logs are on tmpfs and guest-written: they go with the subOS
	// (the reclaim event keeps the last line).
	os.Remove(s.logPath(a.Name))
	os.Remove(s.vmmLogPath(a.Name))
	s.leave(so.info)
	s.steerIRQs()
	s.event(who, what, a.Name, time.Since(start), why)
}

// steerIRQs moves host interrupts off the cores subOSes own now (when
// configured). Failures are logged: steering is an optimisation.
func (s *Supervisor) steerIRQs() {
	if s.cfg.SteerIRQs == nil {
		return
	}
	if s.restoreIRQ != nil {
		if err := s.restoreIRQ(); err != nil {
			s.log.Warn("restore IRQ affinity", "err", err)
		}
		s.restoreIRQ = nil
	}
	var avoid []int
	for _, a := range s.ledger.Allocations() {
		avoid = append(avoid, a.Cores...)
	}
	if len(avoid) == 0 {
		return
	}
	restore, err := s.cfg.SteerIRQs(avoid)
	if err != nil {
		s.log.Warn("steer IRQs off subOS cores", "err", err)
		return
	}
	s.restoreIRQ = restore
}

// maxCPUsProblems says what is wrong with spec's max_cpus: below its
// size, or more vCPUs than a VMM makes.
func maxCPUsProblems(spec Spec) []ledger.Problem {
	size := max(spec.CPUs, len(spec.Cores))
	if n := spec.MaxCPUs; n != 0 && (n < size || n > config.MaxCores) {
		return []ledger.Problem{{Field: "max_cpus", Message: fmt.Sprintf("%d: want from the subOS's %d cpus to %d", n, size, config.MaxCores)}}
	}
	return nil
}

// consoleProblems are spec's console log settings outside the bounds the
// VMM accepts.
func consoleProblems(spec Spec) []ledger.Problem {
	var probs []ledger.Problem
	if n := spec.ConsoleLogSize; n != 0 && (n < consolelog.MinMaxSize || n > config.MaxConsoleLog) {
		probs = append(probs, ledger.Problem{Field: "console_log_size",
			Message: fmt.Sprintf("%d bytes is outside %d..%d", n, consolelog.MinMaxSize, config.MaxConsoleLog)})
	}
	if r := spec.ConsoleLogRate; r > config.MaxConsoleLog {
		probs = append(probs, ledger.Problem{Field: "console_log_rate",
			Message: fmt.Sprintf("%d bytes a second is over %d", r, config.MaxConsoleLog)})
	}
	return probs
}

// maxMemoryProblems says what is wrong with spec's max_memory: below its
// memory, a hotplug region that is not a multiple of its block size, or
// larger than a VMM takes.
func maxMemoryProblems(spec Spec) []ledger.Problem {
	if msg := config.MaxMemoryProblem(spec.Memory, spec.MaxMemory, ram.PageSize(spec.Request().PageSize)); msg != "" {
		return []ledger.Problem{{Field: "max_memory", Message: msg}}
	}
	return nil
}

// Check lists everything wrong with spec, changing nothing: the files, the
// segment grants, what the supervisor refuses (RequestProblems) and what
// the ledger cannot give.
func (s *Supervisor) Check(spec Spec) []ledger.Problem {
	probs := append(append(append(checkFiles(spec), segmentProblems(spec.Segments)...), maxCPUsProblems(spec)...), autoscaleProblems(spec)...)
	probs = append(append(probs, maxMemoryProblems(spec)...), s.nicProblems(spec, s.allNICs(spec.Name))...)
	probs = append(append(probs, s.shareProblems("shares", spec.Shares)...), sshKeyProblems(spec)...)
	return append(probs, Admission{s.ledger}.Check(spec.Request())...)
}

func checkFiles(spec Spec) []ledger.Problem {
	var probs []ledger.Problem
	check := func(field, path string, required bool) {
		if path == "" {
			if required {
				probs = append(probs, ledger.Problem{Field: field, Message: "required"})
			}
			return
		}
		if st, err := os.Stat(path); err != nil {
			probs = append(probs, ledger.Problem{Field: field, Message: err.Error()})
		} else if !st.Mode().IsRegular() {
			probs = append(probs, ledger.Problem{Field: field, Message: path + " is not a regular file"})
		}
	}
	check("kernel", spec.Kernel, true)
	check("initrd", spec.Initrd, false)
	check("image", spec.Image, false)
	for i, d := range spec.Disks {
		// A disk may be a regular file or a block device: the device
		// model's rule.
		field := "disks[" + strconv.Itoa(i) + "].path"
		if d.Path == "" {
			probs = append(probs, ledger.Problem{Field: field, Message: "required"})
		} else if err := blk.CheckPath(d.Path); err != nil {
			probs = append(probs, ledger.Problem{Field: field, Message: err.Error()})
		}
	}
	return probs
}

// Create reserves resources for spec, applies them and starts its VMM. It
// is all-or-nothing: on any failure every step is undone.
func (s *Supervisor) Create(ctx context.Context, spec Spec) (info Info, err error) {
	start := time.Now()
	s.opMu.Lock()
	defer s.opMu.Unlock()
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
			s.event(s.who(ctx), "create-failed", spec.Name, time.Since(start), err.Error())
		}
	}()
	s.mu.Lock()
	_, exists := s.subos[spec.Name]
	s.mu.Unlock()
	if exists {
		return Info{}, fmt.Errorf("%w: %q", ErrExists, spec.Name)
	}
	spec.Disks = withDiskIDs(spec.Disks)
	if probs := append(append(append(append(checkFiles(spec), consoleProblems(spec)...), maxCPUsProblems(spec)...), maxMemoryProblems(spec)...), RequestProblems(spec.Request())...); len(probs) > 0 {
		return Info{}, &ProblemsError{Problems: probs}
	}
	spec = s.withLoopMembers(spec) // the created spec names its loop networks' members
	if probs := append(append(autoscaleProblems(spec), sshKeyProblems(spec)...), s.nicProblems(spec, s.allNICs(spec.Name))...); len(probs) > 0 {
		return Info{}, &ProblemsError{Problems: probs}
	}
	spec.Shares = share.WithIDs(spec.Shares)
	if probs := s.shareProblems("shares", spec.Shares); len(probs) > 0 {
		return Info{}, &ProblemsError{Problems: probs}
	}
	spec.Nets = withNICDefaults(spec) // the created spec names its TAPs and MACs
	if spec.Image != "" {
		path, err := s.copyImage(spec.Name, spec.Image)
		if err != nil {
			return Info{}, err
		}
		undo = append(undo, func() { os.Remove(path) })
		spec.Disks = append([]Disk{{ID: imageDiskID, Path: path}}, spec.Disks...)
		spec.CmdlineAppend = strings.TrimSpace("root=/dev/vda " + spec.CmdlineAppend)
	}
	alloc, err := Admission{s.ledger}.Reserve(spec.Request())
	if err != nil {
		return Info{}, err
	}
	undo = append(undo, func() { _, _ = s.ledger.Release(spec.Name) })
	spec.MaxCPUs = s.maxCPUsFor(spec, alloc)
	if spec.MaxMemory == alloc.Memory {
		spec.MaxMemory = 0 // no hotplug memory
	}
	spec.Memory = alloc.Memory // the boot memory, which never goes
	// Listed as starting while the slow steps run.
	starting := &subOS{info: Info{Name: spec.Name, State: StateStarting, Allocation: alloc, Spec: spec, Created: time.Now().UTC()}, stopped: make(chan struct{}), cid: s.allocCID()}
	s.mu.Lock()
	s.subos[spec.Name] = starting
	s.mu.Unlock()
	undo = append(undo, func() {
		s.mu.Lock()
		delete(s.subos, spec.Name)
		s.mu.Unlock()
	})
	// The intent record, before any side effect: a successor rolls back.
	if err := s.poolIntent(starting, store.PhaseCreating, opCreate, true); err != nil {
		return Info{}, err
	}
	undo = append(undo, func() { _ = s.store.Delete(spec.Name) })
	s.at("create:hugepages")
	added, err := s.cfg.Actuator.EnsureHugePages(alloc.Node, alloc.PageSize, alloc.Pages)
	if err != nil {
		return Info{}, err
	}
	starting.added = added
	s.at("create:hugepages-added")
	undo = append(undo, func() {
		if added > 0 {
			_ = s.cfg.Actuator.ReleaseHugePages(alloc.Node, alloc.PageSize, added)
			starting.added = 0
			_ = s.writeRecord(starting, store.PhaseCreating, &intent{Op: opCreate})
		}
	})
	if err := s.writeRecord(starting, store.PhaseCreating, &intent{Op: opCreate}); err != nil {
		return Info{}, err
	}
	s.at("create:cgroup")
	group, err := s.cfg.Actuator.CreateGroup(spec.Name, alloc.Cores, []int{alloc.Node})
	if err != nil {
		return Info{}, err
	}
	undo = append(undo, func() { _ = s.cfg.Actuator.RemoveGroup(spec.Name) })
	s.at("create:join")
	member, err := s.join(spec.Name, spec.Segments)
	if err != nil {
		return Info{}, err
	}
	undo = append(undo, member.undo)
	ctlPath := s.ctlPath(spec.Name)
	ln, err := vmmctl.Listen(ctlPath)
	if err != nil {
		return Info{}, err
	}
	undo = append(undo, func() { os.Remove(ctlPath) })
	lnFile, err := ln.File()
	ln.Close()
	if err != nil {
		return Info{}, fmt.Errorf("control socket: %w", err)
	}
	defer lnFile.Close()
	logPath := s.logPath(spec.Name)
	doc := vmmDocument(spec, alloc, s.consolePath(spec.Name), member.regions)
	doc.Console = config.Console{Mode: config.ConsoleFile, Path: logPath, Socket: s.consolePath(spec.Name),
		LogSize: spec.ConsoleLogSize, LogRate: spec.ConsoleLogRate}
	doc.Vsock = &config.Vsock{CID: uint64(starting.cid), Socket: s.vsockPath(spec.Name)}
	s.at("create:nets")
	nets, tapFiles, uplinks, closeNICs, err := s.openNICs(spec, group.AddProcess)
	if err != nil {
		return Info{}, err
	}
	undo = append(undo, closeNICs)
	doc.Nets = nets
	for _, arg := range []string{uplinkCmdline(spec), addrCmdline(spec), sshKeysCmdline(spec)} {
		if arg != "" {
			doc.Append = strings.TrimSpace(doc.Append + " " + arg)
		}
	}
	// Shares: a virtiofsd each, in the subOS's cgroup; their sockets go
	// to the VMM beside the TAPs.
	s.at("create:shares")
	shares, shareFiles, backends, stopShares, err := s.startShares(ctx, spec, group)
	if err != nil {
		return Info{}, err
	}
	undo = append(undo, stopShares)
	doc.Shares = shares
	doc.Append = strings.TrimSpace(doc.Append + " " + sharesCmdline(spec.Shares))
	maps.Copy(tapFiles, shareFiles)
	named, unjail, err := s.confine(doc, tapFiles)
	if err != nil {
		return Info{}, err
	}
	defer closeNamed(named) // the VMM has its own copies once started
	undo = append(undo, unjail)
	if err := doc.Validate(); err != nil {
		return Info{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := group.Limit(vmmLimits(doc)); err != nil {
		return Info{}, err
	}
	var ctl *net.UnixConn
	defer func() {
		if ctl != nil {
			ctl.Close()
		}
	}()
	prepare := func(pid int) error {
		if err := group.AddProcess(pid); err != nil {
			return err
		}
		// The VMM reads this after "go", before its guest boots.
		var err error
		if ctl, err = vmmctl.Dial(ctlPath); err != nil {
			return err
		}
		files, _ := vmmctl.LaunchFiles(member.files, named)
		return vmmctl.SendLaunch(ctl, doc, files)
	}
	args := []string{"vmm", "--control-fd", strconv.Itoa(FirstExtraFD)}
	logFrom := fileSize(s.vmmLogPath(spec.Name))
	// A create that fails leaves no log behind (its error carries the
	// VMM's last words).
	undo = append(undo, func() { os.Remove(s.vmmLogPath(spec.Name)) })
	s.at("create:start")
	proc, err := s.cfg.Launcher.Start(ctx, args, s.vmmLogPath(spec.Name), []*os.File{lnFile}, prepare)
	if err != nil {
		if e := vmmExit(s.vmmLogPath(spec.Name), logFrom); e.Seccomp != "" {
			s.recordExit(spec.Name, e)
		}
		return Info{}, fmt.Errorf("subOS %s: %w%s", spec.Name, err, backendsExited(backends))
	}
	undo = append(undo, func() { stopProcess(proc, 5*time.Second) })
	s.at("create:record")
	info = Info{Name: spec.Name, State: StateRunning, PID: proc.PID(), Allocation: alloc, Spec: spec, Created: time.Now().UTC(),
		ConsoleSocket: s.consolePath(spec.Name), Log: logPath, VMMLog: s.vmmLogPath(spec.Name), Cgroup: group.Path(), Peer: member.peer, SegmentPeers: member.segPeers}
	so := &subOS{info: info, proc: proc, added: added, stopped: make(chan struct{}), logFrom: logFrom, cid: starting.cid, backends: backends, uplinks: uplinks}
	raw, err := json.Marshal(persisted{Spec: spec, AddedPages: added, Cgroup: group.Path(), Peer: member.peer, SegmentPeers: member.segPeers, CID: starting.cid, Backends: backendRecords(so)})
	if err != nil {
		return Info{}, err
	}
	if err := s.store.Put(store.Record{Allocation: alloc, PID: proc.PID(), StartTime: proc.StartTime(), Spec: raw, Created: info.Created, Phase: store.PhaseRunning}); err != nil {
		return Info{}, err
	}
	s.mu.Lock()
	s.subos[spec.Name] = so
	delete(s.exits, spec.Name)
	s.mu.Unlock()
	s.watch(so)
	for _, b := range backends {
		s.watchBackend(so, b)
	}
	s.startAgent(so)
	s.steerIRQs()
	s.publish()
	s.event(s.who(ctx), "create", spec.Name, time.Since(start), fmt.Sprintf("pid %d cores %s node %d memory %d", proc.PID(), units.FormatCPUList(alloc.Cores), alloc.Node, alloc.Memory))
	return info, nil
}

// vmmDocument is the VMM's configuration for a subOS: its spec on the
// resources the ledger gave it, its console on stdio (the subOS's log)
// and on a socket, and its regions (their files travel beside it).
func vmmDocument(spec Spec, a ledger.Allocation, console string, regions []config.Region) *config.Document {
	return &config.Document{
		Version: config.Version, Name: spec.Name, Kernel: spec.Kernel, Initrd: spec.Initrd, Append: spec.CmdlineAppend,
		Cores: a.Cores, MaxVCPUs: spec.MaxCPUs, Memory: a.Memory, PageSize: pageSizeName(a.PageSize), Disks: spec.Disks,
		Console: config.Console{Mode: config.ConsoleStdio, Socket: console}, Regions: regions, LogLevel: "info",
		HotplugMemory: hotplugMemory(spec),
	}
}

// hotplugMemory is the size of spec's hotplug memory region.
func hotplugMemory(spec Spec) uint64 {
	if spec.MaxMemory <= spec.Memory {
		return 0
	}
	return spec.MaxMemory - spec.Memory
}

// maxCPUsFor is the max_cpus of a subOS created from spec on a: what the
// spec asks for (at least its size), else every core of its memory node
// but the housekeeping ones, within what a VMM supports.
func (s *Supervisor) maxCPUsFor(spec Spec, a ledger.Allocation) int {
	n := spec.MaxCPUs
	if n == 0 && s.cfg.Inventory != nil {
		hk := s.ledger.Housekeeping()
		for _, node := range s.cfg.Inventory.Nodes {
			if node.ID != a.Node {
				continue
			}
			for _, c := range node.CPUs {
				if !slices.Contains(hk, c) {
					n++
				}
			}
		}
	}
	return min(max(n, len(a.Cores)), config.MaxCores)
}

// withDiskIDs gives every disk without an id the first free "diskN".
func withDiskIDs(disks []Disk) []Disk {
	out := append([]Disk(nil), disks...)
	used := map[string]bool{}
	for _, d := range out {
		used[d.ID] = true
	}
	n := 0
	for i := range out {
		if out[i].ID != "" {
			continue
		}
		for used[fmt.Sprintf("disk%d", n)] {
			n++
		}
		out[i].ID = fmt.Sprintf("disk%d", n)
		used[out[i].ID] = true
	}
	return out
}

func pageSizeName(ps uint64) string {
	if ps == 1<<30 {
		return "1G"
	}
	return "2M"
}

// Destroy stops a subOS's VMM and frees everything it held.
func (s *Supervisor) Destroy(ctx context.Context, name string) error {
	start := time.Now()
	s.opMu.Lock()
	defer s.opMu.Unlock()
	s.mu.Lock()
	so, ok := s.subos[name]
	if ok {
		so.info.State = StateStopping
	}
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	// A successor finishes the destroy from here on.
	if err := s.writeRecord(so, store.PhaseDestroying, &intent{Op: opDestroy}); err != nil {
		s.log.Error("store", "subos", name, "err", err)
	}
	s.at("destroy:stop")
	stopProcess(so.proc, 10*time.Second)
	close(so.stopped)
	s.at("destroy:reclaim")
	s.reclaim(so, s.who(ctx), "destroyed")
	s.mu.Lock()
	delete(s.subos, name)
	s.mu.Unlock()
	s.publish()
	s.event(s.who(ctx), "destroy", name, time.Since(start), "")
	return nil
}

// List returns all subOSes, sorted by name.
func (s *Supervisor) List() []Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Info, 0, len(s.subos))
	for _, so := range s.subos {
		out = append(out, s.withAutoscale(s.withLoans(withShares(so, withAgent(so)))))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Get returns one subOS.
func (s *Supervisor) Get(name string) (Info, error) {
	info, vmm, ask, err := s.getLocked(name)
	if err != nil || !ask {
		return info, err
	}
	// Who serves the NICs is the VMM's to say (it falls back from
	// vhost-net on its own); asked outside the lock, briefly.
	ctx, cancel := context.WithTimeout(context.Background(), nicQueryTimeout)
	defer cancel()
	devs, qerr := vmmctl.Devices(ctx, vmm)
	info.Nets = nicInfo(info.Spec, devs, qerr == nil)
	return info, nil
}

// getLocked is Get's view under the lock, and the VMM to ask about the
// NICs when ask.
func (s *Supervisor) getLocked(name string) (info Info, vmm vmmctl.VMM, ask bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	so, ok := s.subos[name]
	if !ok {
		if e, gone := s.exits[name]; gone {
			// Gone on its own: how it ended stays visible.
			return Info{Name: name, State: StateExited, LastExit: &e}, vmm, false, nil
		}
		return Info{}, vmm, false, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	info = s.withAutoscale(s.withLoans(withShares(so, withAgent(so))))
	if info.State != StateRunning || so.proc == nil || !hasTAPNIC(info.Spec) {
		return info, vmm, false, nil
	}
	return info, s.vmm(so), true, nil
}

// nicQueryTimeout bounds how long Get waits for a VMM to list its
// devices.
const nicQueryTimeout = 2 * time.Second

// hasTAPNIC says whether spec has a NIC on a TAP.
func hasTAPNIC(spec Spec) bool {
	for _, n := range spec.Nets {
		if !n.User {
			return true
		}
	}
	return false
}

// withAutoscale fills in the autoscaler's last decision on info's subOS.
func (s *Supervisor) withAutoscale(info Info) Info {
	if info.Spec.Autoscale != nil {
		info.AutoscaleLast = s.autoscaleLast(info.Name)
	}
	return info
}

// withLoans fills in the loans info's subOS made (the ledger's view).
func (s *Supervisor) withLoans(info Info) Info {
	if a, ok := s.ledger.Get(info.Name); ok {
		info.Allocation.Lent = a.Lent
	}
	return info
}

// Events returns audit events after seq since.
func (s *Supervisor) Events(since uint64, limit int) ([]store.Event, error) {
	return s.store.Events(since, limit)
}

// ProblemsError carries every problem found in a request.
type ProblemsError struct{ Problems []ledger.Problem }

func (e *ProblemsError) Error() string {
	msg := ""
	for i, p := range e.Problems {
		if i > 0 {
			msg += "; "
		}
		msg += p.Error()
	}
	return msg
}

func (e *ProblemsError) Unwrap() error { return ErrInvalid }
