package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"rainforest/ledger"
	"rainforest/rfm/share"
	"rainforest/rfm/vmmctl"
	"rainforest/vmm/config"
)

// Shared directories (RFfuse). Each share of a subOS is a virtio-fs
// device in its VMM whose queues a virtiofsd process serves from the host
// directory. The supervisor starts one virtiofsd per share, in the subOS's
// cgroup (moved there before it runs, so its CPU time and memory are the
// subOS's), in its own session (it outlives the supervisor) and in its own
// sandbox (virtiofsd's namespace or chroot sandbox, confined to the
// directory). Its vhost-user socket never has a path anyone else could
// reach: the supervisor makes a listening socket and connects to it at
// once (share.Socket), hands virtiofsd the listener and the jailed VMM
// the connection, and keeps neither, so virtiofsd ends with its VMM. A
// read-only share is served from a read-only bind mount of the directory
// (share.ReadOnlyView, under the run directory's shares/<subOS>/), so the
// host kernel refuses the guest's writes.
//
// The virtiofsd pids (with their start times) are in the subOS's record:
// a restarted supervisor re-adopts them as it does VMMs. A virtiofsd that
// ends while its VMM runs is reported: the share is failed in Info
// (rfm inspect) with the reason, and the event "share-failed" is logged;
// the VMM then answers the guest's requests on it with EIO
// (vmm/virtio/fs).
// Destroying a subOS stops its VMM first, then the virtiofsd processes,
// then removes the read-only views.

// ShareSpec is a host directory given to a subOS as a virtio-fs device
// (path, tag, readonly, allow_root; see share.Spec).
type ShareSpec = share.Spec

// Share states, as Info reports them.
const (
	ShareServing = "serving" // its virtiofsd runs
	ShareFailed  = "failed"  // its virtiofsd ended while the subOS runs
)

// ShareInfo is a share of a running subOS and the state of its back end.
type ShareInfo struct {
	ShareSpec
	State string `json:"state"`
	// PID is its virtiofsd's (0 once it has ended).
	PID int `json:"pid,omitempty"`
	// Error says why the share failed.
	Error string `json:"error,omitempty"`
	// Log is virtiofsd's output.
	Log string `json:"log,omitempty"`
}

// BackendLauncher is a Launcher that also starts the processes serving a
// subOS's devices outside its VMM (virtiofsd). Without it, subOSes with
// shares are refused.
type BackendLauncher interface {
	// StartBackend runs argv (argv[0] a path) in its own session, with
	// output appended to logPath and files inherited as descriptors
	// BackendFirstFD, +1, .... argv does not start before prepare(pid)
	// has returned (the supervisor moves the process into the subOS's
	// cgroup there); a failing prepare kills it.
	StartBackend(ctx context.Context, argv []string, logPath string, files []*os.File, prepare func(pid int) error) (Process, error)
}

// GroupOpener is an Actuator that finds a subOS's existing cgroup (after
// a restart too); shares are hot-added only with it.
type GroupOpener interface {
	OpenGroup(name string) (Group, error)
}

// BackendFirstFD is the descriptor number of the first file StartBackend
// passes (0-2 are stdio, 3 the wait pipe).
const BackendFirstFD = 4

// Bounds of the share back ends.
const (
	// backendStopGrace is how long a virtiofsd asked to stop has before
	// it is killed.
	backendStopGrace = 5 * time.Second
	// backendExitGrace is how long a virtiofsd's end waits for its
	// VMM's before it counts as the share's failure: a VMM that ends
	// closes the socket, and virtiofsd ends with it.
	backendExitGrace = 2 * time.Second
	// backendMemory and backendTasks are each virtiofsd's room in the
	// subOS's memory.max (page cache of the files it serves included,
	// which is reclaimable) and pids.max (its threads, and its sandbox's
	// second process).
	backendMemory = 128 << 20
	backendTasks  = 64
)

// backend is a share's virtiofsd.
type backend struct {
	spec share.Spec
	// proc is nil when it is not running (gone at adoption, or not
	// started).
	proc Process
	view string // the read-only view it serves ("" for a read-write share)
	log  string
	// Under mu: failed says why it ended while the subOS ran;
	// stopping that the supervisor is ending it.
	failed   string
	stopping bool
	// done is closed when the supervisor stops watching it.
	done     chan struct{}
	doneOnce sync.Once
}

func (b *backend) release() { b.doneOnce.Do(func() { close(b.done) }) }

// backendRecord is a backend in the subOS's record.
type backendRecord struct {
	ID        string `json:"id"`
	PID       int    `json:"pid,omitempty"`
	StartTime uint64 `json:"start_time,omitempty"`
	View      string `json:"view,omitempty"`
	Log       string `json:"log,omitempty"`
	Failed    string `json:"failed,omitempty"`
}

// shareChange is a hot-add or removal of a share under way (an intent):
// the share and, once it runs, its virtiofsd.
type shareChange struct {
	Spec    share.Spec     `json:"spec"`
	Backend *backendRecord `json:"backend,omitempty"`
}

// shareDir holds subOS name's share sockets (briefly), virtiofsd logs and
// read-only views.
func (s *Supervisor) shareDir(name string) string {
	return filepath.Join(s.cfg.RunDir, "shares", name)
}

// shareProblems lists what is wrong with spec's shares (field "shares[i]
// .path" and so on): share.Problems, a directory holding the supervisor's
// own state or run directory (unless allow_root says the whole host may
// be shared), and a supervisor that cannot start virtiofsd.
func (s *Supervisor) shareProblems(prefix string, shares []ShareSpec) []ledger.Problem {
	probs := share.Problems(prefix, shares)
	if len(shares) == 0 {
		return probs
	}
	for i, sp := range shares {
		if sp.AllowRoot || share.PathProblem(sp) != "" {
			continue
		}
		real, _ := filepath.EvalSymlinks(sp.Path)
		for _, own := range []string{s.cfg.StateDir, s.cfg.RunDir} {
			if o, err := filepath.EvalSymlinks(own); err == nil && share.Contains(real, o) {
				probs = append(probs, ledger.Problem{Field: fmt.Sprintf("%s[%d].path", prefix, i),
					Message: fmt.Sprintf("%s holds the supervisor's own directory %s: share a directory below it", sp.Path, own)})
				break
			}
		}
	}
	if _, ok := s.cfg.Launcher.(BackendLauncher); !ok {
		probs = append(probs, ledger.Problem{Field: prefix, Message: "this supervisor starts no virtiofsd (its launcher has no back ends)"})
	} else if _, err := s.virtiofsd(context.Background()); err != nil {
		probs = append(probs, ledger.Problem{Field: prefix, Message: err.Error()})
	}
	return probs
}

// virtiofsd finds the virtiofsd binary (once; Config.Virtiofsd says
// where to look).
func (s *Supervisor) virtiofsd(ctx context.Context) (share.Binary, error) {
	s.vfsMu.Lock()
	defer s.vfsMu.Unlock()
	if s.vfsBinary != nil {
		return *s.vfsBinary, nil
	}
	b, err := share.Find(ctx, s.cfg.Virtiofsd...)
	if err != nil {
		return share.Binary{}, err
	}
	s.vfsBinary = &b
	return b, nil
}

// sandbox is virtiofsd's sandbox: Config.ShareSandbox, else
// share.DefaultSandbox.
func (s *Supervisor) sandbox() share.Sandbox {
	if s.cfg.ShareSandbox != "" {
		return s.cfg.ShareSandbox
	}
	return share.DefaultSandbox()
}

// startBackend starts sp's virtiofsd for subOS name in group and returns
// it with the front end's connection to it (the VMM's share/<id>
// descriptor). On error nothing is left: no process, no view.
func (s *Supervisor) startBackend(ctx context.Context, name string, sp share.Spec, group Group) (_ *backend, conn *os.File, err error) {
	bl, ok := s.cfg.Launcher.(BackendLauncher)
	if !ok {
		return nil, nil, fmt.Errorf("%w: this supervisor starts no virtiofsd", ErrInvalid)
	}
	bin, err := s.virtiofsd(ctx)
	if err != nil {
		return nil, nil, err
	}
	dir := s.shareDir(name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("share %s: %w", sp.ID, err)
	}
	src, err := filepath.EvalSymlinks(sp.Path)
	if err != nil {
		return nil, nil, &ProblemsError{Problems: []ledger.Problem{{Field: "shares", Message: err.Error()}}}
	}
	b := &backend{spec: sp, log: filepath.Join(dir, sp.ID+".log"), done: make(chan struct{})}
	defer func() {
		if err != nil && b.view != "" {
			if rerr := s.removeView(b.view); rerr != nil {
				s.log.Warn("remove read-only view", "subos", name, "share", sp.ID, "err", rerr)
			}
		}
	}()
	if sp.ReadOnly {
		view := filepath.Join(dir, sp.ID)
		if err := s.makeView(src, view); err != nil {
			return nil, nil, fmt.Errorf("share %s: %w", sp.ID, err)
		}
		b.view, src = view, view
	}
	ln, conn, err := share.Socket(filepath.Join(dir, sp.ID+".sock"))
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close() // virtiofsd has its own
	argv := append([]string{bin.Path}, bin.Args(BackendFirstFD, src, sp.ReadOnly, s.sandbox())...)
	proc, err := bl.StartBackend(ctx, argv, b.log, []*os.File{ln}, group.AddProcess)
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("share %s: virtiofsd: %w", sp.ID, err)
	}
	b.proc = proc
	return b, conn, nil
}

// startShares starts the virtiofsd of each of spec's shares in group. It
// returns the VMM's shares, their descriptors (by config.ShareFile) and
// the back ends; undo stops the back ends and closes the descriptors.
func (s *Supervisor) startShares(ctx context.Context, spec Spec, group Group) (shares []config.Share, files map[string]*os.File, backends map[string]*backend, undo func(), err error) {
	files, backends = map[string]*os.File{}, map[string]*backend{}
	undo = func() {
		for _, f := range files {
			f.Close()
		}
		for _, b := range backends {
			s.stopBackend(spec.Name, b)
		}
	}
	defer func() {
		if err != nil {
			undo()
		}
	}()
	for _, sp := range spec.Shares {
		b, conn, err := s.startBackend(ctx, spec.Name, sp, group)
		if err != nil {
			return nil, nil, nil, undo, err
		}
		backends[sp.ID], files[config.ShareFile(sp.ID)] = b, conn
		shares = append(shares, config.Share{ID: sp.ID, Tag: sp.Tag})
	}
	return shares, files, backends, undo, nil
}

// sharesCmdline is the kernel command line parameter naming spec's tags
// (the default image mounts each at /mnt/<tag>); "" without shares.
func sharesCmdline(shares []ShareSpec) string {
	if len(shares) == 0 {
		return ""
	}
	tags := make([]string, len(shares))
	for i, sp := range shares {
		tags[i] = sp.Tag
	}
	return "rf.shares=" + strings.Join(tags, ",")
}

// stopBackend ends a virtiofsd (asked, then killed after
// backendStopGrace) and removes its read-only view.
func (s *Supervisor) stopBackend(name string, b *backend) {
	s.mu.Lock()
	b.stopping = true
	s.mu.Unlock()
	b.release()
	if b.proc != nil {
		stopProcess(b.proc, backendStopGrace)
	}
	if b.view != "" {
		if err := s.removeView(b.view); err != nil {
			s.log.Warn("remove read-only view", "subos", name, "share", b.spec.ID, "err", err)
		}
	}
}

// stopBackends ends every virtiofsd of so (its VMM is gone).
func (s *Supervisor) stopBackends(so *subOS) {
	s.mu.Lock()
	bs := make([]*backend, 0, len(so.backends))
	for _, b := range so.backends {
		bs = append(bs, b)
	}
	s.mu.Unlock()
	for _, b := range bs {
		s.stopBackend(so.info.Name, b)
	}
}

// removeShareDir removes what subOS name's shares left in the run
// directory once its virtiofsd processes are gone: read-only views
// (unmounted, never emptied), logs and sockets. Run after a crash too,
// when no record names them.
func (s *Supervisor) removeShareDir(name string) {
	dir := s.shareDir(name)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		s.log.Warn("share directory", "subos", name, "err", err)
		return
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if e.IsDir() {
			err = s.removeView(p)
		} else {
			err = os.Remove(p)
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("share directory", "subos", name, "path", p, "err", err)
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("share directory", "subos", name, "err", err)
	}
}

// A virtiofsd's log (which a guest can make it write) is kept under
// maxBackendLog bytes, looked at every backendLogCheck.
const (
	maxBackendLog   = 1 << 20
	backendLogCheck = 10 * time.Second
)

// watchBackend reports b's virtiofsd ending while so runs, and keeps its
// log bounded meanwhile.
func (s *Supervisor) watchBackend(so *subOS, b *backend) {
	if b.proc == nil {
		return
	}
	var vmmDone <-chan struct{}
	if so.proc != nil {
		vmmDone = so.proc.Done()
	}
	s.wg.Add(1)
	go func() { // owner: the supervisor (Close), the subOS (stopped) or the share (release)
		defer s.wg.Done()
		trim := time.NewTicker(backendLogCheck)
		defer trim.Stop()
	wait:
		for {
			select {
			case <-b.proc.Done():
				break wait
			case <-so.stopped:
				return
			case <-b.done:
				return
			case <-trim.C:
				if err := trimLog(b.log, maxBackendLog); err != nil && !errors.Is(err, os.ErrNotExist) {
					s.log.Warn("trim back end log", "subos", so.info.Name, "share", b.spec.ID, "err", err)
				}
			}
		}
		t := time.NewTimer(s.backendGrace)
		defer t.Stop()
		select {
		case <-vmmDone:
			return // the subOS ended, and the share with it
		case <-so.stopped:
			return
		case <-b.done:
			return
		case <-t.C:
		}
		s.backendFailed(so, b, backendExit(b))
	}()
}

// backendExit says how b's virtiofsd ended: its exit status where known
// and its log's last line (quoted and bounded: it may echo guest input).
func backendExit(b *backend) string {
	status := "exit status unknown"
	if e, ok := b.proc.(interface{ ExitStatus() string }); ok {
		status = e.ExitStatus()
	}
	return fmt.Sprintf("virtiofsd (pid %d) exited (%s); last log line: %s", b.proc.PID(), status, logTail(b.log, 1))
}

// backendFailed records that b's virtiofsd ended while so runs.
func (s *Supervisor) backendFailed(so *subOS, b *backend, why string) {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	name := so.info.Name
	s.mu.Lock()
	cur, ok := s.subos[name]
	mine := ok && cur == so && so.info.State == StateRunning && !b.stopping && so.backends[b.spec.ID] == b && b.failed == ""
	if mine {
		b.failed = why
	}
	s.mu.Unlock()
	if !mine {
		return
	}
	s.log.Warn("share failed", "subos", name, "share", b.spec.ID, "tag", b.spec.Tag, "reason", why)
	if err := s.persist(so); err != nil {
		s.log.Error("store", "subos", name, "err", err)
	}
	s.event(s.cfg.Who, "share-failed", name, 0, fmt.Sprintf("share %s (tag %s, %s): %s", b.spec.ID, b.spec.Tag, b.spec.Path, why))
}

// backendRecords are so's back ends as its record keeps them. Called
// under mu.
func backendRecords(so *subOS) []backendRecord {
	var out []backendRecord
	for _, sp := range so.info.Spec.Shares {
		b, ok := so.backends[sp.ID]
		if !ok {
			continue
		}
		out = append(out, b.record())
	}
	return out
}

func (b *backend) record() backendRecord {
	r := backendRecord{ID: b.spec.ID, View: b.view, Log: b.log, Failed: b.failed}
	if b.proc != nil {
		r.PID, r.StartTime = b.proc.PID(), b.proc.StartTime()
	}
	return r
}

// recordedBackends rebuilds a record's back ends (not running yet: see
// adoptBackends).
func recordedBackends(p persisted) map[string]*backend {
	recs := map[string]backendRecord{}
	for _, r := range p.Backends {
		recs[r.ID] = r
	}
	out := map[string]*backend{}
	for _, sp := range p.Spec.Shares {
		r := recs[sp.ID]
		out[sp.ID] = &backend{spec: sp, view: r.View, log: r.Log, failed: r.Failed, done: make(chan struct{})}
	}
	return out
}

// adoptBackends re-attaches to the virtiofsd processes of an adopted
// subOS (the record's pids, if still the same processes); one that is
// gone fails its share.
func (s *Supervisor) adoptBackends(so *subOS, p persisted) {
	recs := map[string]backendRecord{}
	for _, r := range p.Backends {
		recs[r.ID] = r
	}
	for id, b := range so.backends {
		r := recs[id]
		if b.failed != "" {
			continue
		}
		proc, err := s.cfg.Launcher.Adopt(r.PID, r.StartTime)
		if err != nil || r.PID == 0 {
			if err == nil {
				err = errors.New("no pid recorded")
			}
			b.failed = fmt.Sprintf("virtiofsd gone at supervisor start: %v", err)
			s.event(s.cfg.Who, "share-failed", so.info.Name, 0, fmt.Sprintf("share %s (tag %s, %s): %s", id, b.spec.Tag, b.spec.Path, b.failed))
			continue
		}
		b.proc = proc
		s.watchBackend(so, b)
	}
}

// withShares fills in the state of info's shares from so. Called under
// mu.
func withShares(so *subOS, info Info) Info {
	if len(so.info.Spec.Shares) == 0 {
		return info
	}
	info.Shares = make([]ShareInfo, 0, len(so.info.Spec.Shares))
	for _, sp := range so.info.Spec.Shares {
		si := ShareInfo{ShareSpec: sp, State: ShareServing}
		if b, ok := so.backends[sp.ID]; ok {
			si.Log = b.log
			switch {
			case b.failed != "":
				si.State, si.Error = ShareFailed, b.failed
			case b.proc != nil:
				si.PID = b.proc.PID()
			}
		}
		info.Shares = append(info.Shares, si)
	}
	return info
}

// openGroup returns subOS name's cgroup.
func (s *Supervisor) openGroup(name string) (Group, error) {
	o, ok := s.cfg.Actuator.(GroupOpener)
	if !ok {
		return nil, fmt.Errorf("%w: this supervisor cannot reopen a subOS's cgroup to add a share to it", ErrInvalid)
	}
	return o.OpenGroup(name)
}

// AddShare hot-adds a share to a running subOS: its virtiofsd starts in
// the subOS's cgroup and its virtio-fs device is plugged into the guest
// (ACPI PCI hotplug), which mounts it by its tag. It returns the share
// with its id (the first free "shareN" unless given).
func (s *Supervisor) AddShare(ctx context.Context, name string, sp ShareSpec) (_ ShareSpec, err error) {
	start := time.Now()
	s.opMu.Lock()
	defer s.opMu.Unlock()
	so, err := s.running(name)
	if err != nil {
		return ShareSpec{}, err
	}
	have := so.info.Spec.Shares
	for _, x := range have {
		switch {
		case x.Tag == sp.Tag:
			return ShareSpec{}, fmt.Errorf("%w: %q has a share of tag %q already (%s)", ErrDeviceExists, name, sp.Tag, x.Path)
		case sp.ID != "" && x.ID == sp.ID:
			return ShareSpec{}, fmt.Errorf("%w: %q has a share %q already (%s)", ErrDeviceExists, name, sp.ID, x.Path)
		}
	}
	all := share.WithIDs(append(append([]ShareSpec(nil), have...), sp))
	sp = all[len(all)-1]
	if probs := s.shareProblems("shares", all); len(probs) > 0 {
		return ShareSpec{}, &ProblemsError{Problems: probs}
	}
	group, err := s.openGroup(name)
	if err != nil {
		return ShareSpec{}, err
	}
	defer func() {
		if err != nil {
			s.event(s.who(ctx), "share-add-failed", name, time.Since(start), fmt.Sprintf("share %s %s: %v", sp.ID, sp, err))
		}
	}()
	change := &shareChange{Spec: sp}
	if err := s.intend(so, intent{Op: opShareAdd, Share: change}); err != nil {
		return ShareSpec{}, err
	}
	s.at("share:backend")
	b, conn, err := s.startBackend(ctx, name, sp, group)
	if err != nil {
		s.unintend(so)
		return ShareSpec{}, err
	}
	defer conn.Close() // the VMM has its own copy
	rec := b.record()
	change.Backend = &rec
	if err := s.intend(so, intent{Op: opShareAdd, Share: change}); err != nil {
		s.stopBackend(name, b)
		s.unintend(so)
		return ShareSpec{}, err
	}
	s.at("share:vmm")
	dev, err := vmmctl.AttachShare(ctx, s.vmm(so), config.Share{ID: sp.ID, Tag: sp.Tag}, conn)
	if err != nil {
		if b.proc != nil {
			select {
			case <-b.proc.Done():
				err = fmt.Errorf("%w (%s)", err, backendExit(b))
			default:
			}
		}
		s.stopBackend(name, b)
		s.unintend(so)
		return ShareSpec{}, vmmError(err)
	}
	s.at("share:record")
	s.mu.Lock()
	so.backends[sp.ID] = b
	s.mu.Unlock()
	s.update(so, func(i *Info) { i.Spec.Shares = append(append([]ShareSpec(nil), i.Spec.Shares...), sp) })
	s.watchBackend(so, b)
	s.event(s.who(ctx), "share-add", name, time.Since(start), fmt.Sprintf("share %s %s slot %d virtiofsd pid %d", sp.ID, sp, dev.Slot, b.proc.PID()))
	s.mountInGuest(so, sp)
	return sp, nil
}

// shareMountTimeout bounds how long the guest has to see a hot-added
// share and mount it.
const shareMountTimeout = time.Minute

// guestMountScript mounts the virtio-fs share tagged $1 where the images
// mount their boot-time shares (/mnt/TAG, or /shares/TAG when /mnt is
// read-only), retrying while the guest's driver takes the new device;
// one already mounted is left as it is.
const guestMountScript = `tag=$1; d=/mnt/$tag
mkdir -p "$d" 2>/dev/null || { d=/shares/$tag; mkdir -p "$d"; }
grep -q " $d virtiofs " /proc/mounts && exit 0
modprobe virtiofs 2>/dev/null
i=0; until mount -t virtiofs "$tag" "$d"; do i=$((i+1)); [ $i -ge 60 ] && exit 1; sleep 0.5; done
echo "$d"`

// guestUnmountScript unmounts the virtio-fs share tagged $1 wherever it
// is mounted, so that the guest lets its device go.
const guestUnmountScript = `awk -v t="$1" '$1 == t && $3 == "virtiofs" {print $2}' /proc/mounts | while read -r d; do umount "$d"; done`

// mountInGuest has so's agent mount the share sp, hot-added, in the
// background: the outcome is an event (share-mount or
// share-mount-failed). A subOS without an agent mounts it itself.
func (s *Supervisor) mountInGuest(so *subOS, sp ShareSpec) {
	name := so.info.Name
	s.wg.Add(1)
	go func() { // owner: the supervisor (Close closes so.stopped), bounded by shareMountTimeout
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), shareMountTimeout)
		defer cancel()
		stop := make(chan struct{})
		defer close(stop)
		go func() { // owner: this goroutine (stop)
			select {
			case <-so.stopped:
				cancel()
			case <-stop:
			}
		}()
		start := time.Now()
		err := s.runInGuest(ctx, name, []string{"sh", "-c", guestMountScript, "rf-mount", sp.Tag})
		switch {
		case errors.Is(err, ErrNoAgent):
			s.log.Info("share not mounted by the supervisor: no agent", "subos", name, "tag", sp.Tag)
		case err != nil:
			s.event(s.cfg.Who, "share-mount-failed", name, time.Since(start), fmt.Sprintf("share %s tag %s: %v", sp.ID, sp.Tag, err))
		default:
			s.event(s.cfg.Who, "share-mount", name, time.Since(start), fmt.Sprintf("share %s tag %s mounted in the guest", sp.ID, sp.Tag))
		}
	}()
}

// RemoveShare asks a running subOS's guest to release a share (by tag or
// id) and removes it once it has, then ends its virtiofsd; the guest has
// timeout (DefaultReleaseTimeout when 0) to let go (unmount it), else
// ErrInUse and the share stays.
func (s *Supervisor) RemoveShare(ctx context.Context, name, tag string, timeout time.Duration) error {
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
	k := slices.IndexFunc(so.info.Spec.Shares, func(x ShareSpec) bool { return x.Tag == tag || x.ID == tag })
	if k < 0 {
		return fmt.Errorf("%w: %q has no share %q", ErrNoDevice, name, tag)
	}
	sp := so.info.Spec.Shares[k]
	s.mu.Lock()
	b := so.backends[sp.ID]
	s.mu.Unlock()
	change := &shareChange{Spec: sp}
	if b != nil {
		rec := b.record()
		change.Backend = &rec
	}
	if err := s.intend(so, intent{Op: opShareRemove, Share: change}); err != nil {
		return err
	}
	// The guest lets a mounted share go only once it is unmounted: ask
	// its agent first (best effort; without one, the guest's user must).
	uctx, cancel := context.WithTimeout(ctx, min(timeout, 10*time.Second))
	if err := s.runInGuest(uctx, name, []string{"sh", "-c", guestUnmountScript, "rf-umount", sp.Tag}); err != nil && !errors.Is(err, ErrNoAgent) {
		s.log.Warn("unmount share in guest", "subos", name, "tag", sp.Tag, "err", err)
	}
	cancel()
	s.at("unshare:vmm")
	detail, err := s.removeDevice(ctx, so, sp.ID, timeout, "share-remove", fmt.Sprintf("share %s %s", sp.ID, sp), start)
	if err != nil {
		s.unintend(so)
		return err
	}
	s.at("unshare:backend")
	if b != nil {
		s.stopBackend(name, b)
		os.Remove(b.log)
	}
	s.mu.Lock()
	delete(so.backends, sp.ID)
	s.mu.Unlock()
	s.update(so, func(i *Info) {
		i.Spec.Shares = slices.DeleteFunc(slices.Clone(i.Spec.Shares), func(x ShareSpec) bool { return x.ID == sp.ID })
	})
	s.event(s.who(ctx), "share-remove", name, time.Since(start), detail)
	return nil
}

// settleShareChange settles an interrupted hot-add or removal of a share
// by what the VMM has (present): a share it has is kept, with its
// virtiofsd re-adopted; one it does not have is dropped, its virtiofsd
// ended and its view removed. It returns the event's detail.
func (s *Supervisor) settleShareChange(so *subOS, in *intent, present bool) string {
	c := in.Share
	sp := c.Spec
	name := so.info.Name
	var b *backend
	if r := c.Backend; r != nil {
		b = &backend{spec: sp, view: r.View, log: r.Log, done: make(chan struct{})}
		if proc, err := s.cfg.Launcher.Adopt(r.PID, r.StartTime); err == nil {
			b.proc = proc
		} else if present {
			b.failed = fmt.Sprintf("virtiofsd gone at supervisor start: %v", err)
		}
	}
	if !present {
		if b != nil {
			s.stopBackend(name, b)
			os.Remove(b.log)
		}
		s.mu.Lock()
		delete(so.backends, sp.ID)
		var keep []ShareSpec
		for _, x := range so.info.Spec.Shares {
			if x.ID != sp.ID {
				keep = append(keep, x)
			}
		}
		so.info.Spec.Shares = keep
		s.mu.Unlock()
		return fmt.Sprintf("%s of share %s interrupted: %s", in.Op, sp.ID, presence(false))
	}
	s.mu.Lock()
	if b != nil {
		if old := so.backends[sp.ID]; old != nil {
			old.release()
		}
		so.backends[sp.ID] = b
	}
	keep := []ShareSpec{}
	for _, x := range so.info.Spec.Shares {
		if x.ID != sp.ID {
			keep = append(keep, x)
		}
	}
	so.info.Spec.Shares = append(keep, sp)
	s.mu.Unlock()
	if b != nil && b.proc != nil {
		s.watchBackend(so, b)
	}
	return fmt.Sprintf("%s of share %s interrupted: %s", in.Op, sp.ID, presence(true))
}

// backendsExited says which of backends have ended (for the error of a
// create whose VMM could not connect to them): "" when none has.
func backendsExited(backends map[string]*backend) string {
	var out string
	for _, b := range backends {
		if b.proc == nil {
			continue
		}
		select {
		case <-b.proc.Done():
			out += fmt.Sprintf("; share %s: %s", b.spec.ID, backendExit(b))
		default:
		}
	}
	return out
}

// sweepShareDirs removes what the shares of subOSes that no longer exist
// left in the run directory (a crash between a rollback's steps, an
// orphan cgroup): read-only views, logs, sockets.
func (s *Supervisor) sweepShareDirs() {
	ents, err := os.ReadDir(filepath.Join(s.cfg.RunDir, "shares"))
	if err != nil {
		return
	}
	for _, e := range ents {
		s.mu.Lock()
		_, live := s.subos[e.Name()]
		s.mu.Unlock()
		if !live && e.IsDir() {
			s.removeShareDir(e.Name())
		}
	}
}
