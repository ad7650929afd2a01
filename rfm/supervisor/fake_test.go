package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"rainforest/partitioner"
	"rainforest/rfm/vmmctl"
	"rainforest/vmm/config"
)

// fakeActuator records what it was asked to do.
type fakeActuator struct {
	mu      sync.Mutex
	groups  map[string][]int
	members map[string][]int // pids moved into each group
	pages   int64            // pages added to the pool (of fakePoolBase)
	failOn  string           // operation to fail
	removed []string
	// host, when set, is the launcher whose processes are in the groups:
	// the ones that have not exited keep a group busy, and KillGroup
	// kills them.
	host   *fakeLauncher
	limits map[string][2]uint64 // memory.max, pids.max by group
}

// fakePoolBase is the hugepage pool's size before the supervisor adds.
const fakePoolBase = 100

type fakeGroup struct {
	name string
	a    *fakeActuator
}

func (g fakeGroup) Path() string { return "/fake/" + g.name }
func (g fakeGroup) Limit(memoryMax uint64, pidsMax int) error {
	g.a.mu.Lock()
	defer g.a.mu.Unlock()
	if g.a.limits == nil {
		g.a.limits = map[string][2]uint64{}
	}
	g.a.limits[g.name] = [2]uint64{memoryMax, uint64(pidsMax)}
	return nil
}

func (g fakeGroup) AddProcess(pid int) error {
	if g.a.failOn == "addprocess" {
		return errors.New("fake: cannot move process")
	}
	g.a.mu.Lock()
	defer g.a.mu.Unlock()
	if g.a.members == nil {
		g.a.members = map[string][]int{}
	}
	g.a.members[g.name] = append(g.a.members[g.name], pid)
	return nil
}

// live is the group's processes that have not exited. Called under mu.
func (a *fakeActuator) live(name string) []int {
	if a.host == nil {
		return nil
	}
	var out []int
	for _, pid := range a.members[name] {
		if a.host.alive(pid) {
			out = append(out, pid)
		}
	}
	return out
}

func (a *fakeActuator) Groups() ([]string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for n := range a.groups {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}

func (a *fakeActuator) KillGroup(_ context.Context, name string) ([]int, error) {
	a.mu.Lock()
	pids := a.live(name)
	a.mu.Unlock()
	for _, pid := range pids {
		a.host.kill(pid)
	}
	return pids, nil
}

func (a *fakeActuator) PoolSize(node int, ps uint64) (uint64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return uint64(fakePoolBase + a.pages), nil
}

func (a *fakeActuator) CreateGroup(name string, cores, nodes []int) (Group, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.failOn == "cgroup" {
		return nil, errors.New("fake: cgroup refused")
	}
	if a.groups == nil {
		a.groups = map[string][]int{}
	}
	a.groups[name] = cores
	return fakeGroup{name, a}, nil
}

func (a *fakeActuator) SetCores(name string, cores []int) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.failOn == "setcores" {
		return errors.New("fake: cpuset refused")
	}
	if _, ok := a.groups[name]; !ok {
		return fmt.Errorf("fake: no group %s", name)
	}
	a.groups[name] = append([]int(nil), cores...)
	return nil
}

func (a *fakeActuator) RemoveGroup(name string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if pids := a.live(name); len(pids) > 0 {
		return fmt.Errorf("fake: group %s busy: %v", name, pids)
	}
	if _, ok := a.groups[name]; !ok {
		return fmt.Errorf("fake: no group %s", name)
	}
	delete(a.groups, name)
	delete(a.members, name)
	a.removed = append(a.removed, name)
	return nil
}

func (a *fakeActuator) EnsureHugePages(node int, ps, pages uint64) (uint64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.failOn == "hugepages" {
		return 0, errors.New("fake: hugepages short")
	}
	a.pages += int64(pages)
	return pages, nil
}

func (a *fakeActuator) ReleaseHugePages(node int, ps, pages uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pages -= int64(pages)
	return nil
}

// fakeLauncher runs no process: each Start gives a fakeProcess that "exits"
// when killed.
type fakeLauncher struct {
	mu    sync.Mutex
	next  int
	procs map[int]*fakeProcess
	fail  bool
	argv  [][]string
	gate  chan struct{} // when set, Start waits for it (a slow VMM start)
	// afterStart, when set, runs once the VMM runs, before Start returns
	// (a test crashes the supervisor there).
	afterStart func()
	crash      string // when set, Start writes it to the VMM's log and fails
	// failBackend makes StartBackend fail; backendArgv are the back ends
	// started.
	failBackend bool
	backendArgv [][]string
}

type fakeProcess struct {
	pid  int
	once sync.Once
	done chan struct{}
	// What the launch brought, and the fake VMM's devices.
	doc     *config.Document
	mu      sync.Mutex
	regions []config.Region
	files   []*os.File
	devices map[string]vmmctl.Device
	// named are the descriptors that came with the launch (name ->
	// received file's name), backings the hot-added disks' first bytes.
	named    map[string]string
	backings map[string]string
	// refuse makes the fake guest never release a device.
	refuse bool
	// servedBy, when set, is the pid the supervisor expects to serve the
	// control socket (a test of a socket served by someone else).
	servedBy int
	// cores are the fake vCPUs' cores since set_cpus (nil: the launch's).
	cores []int
	// memory is the hotplug memory plugged since set_memory, requested
	// the size last asked; a guest with a ceiling plugs no more than it.
	memory, requested, ceiling uint64
}

func (p *fakeProcess) PID() int              { return p.pid }
func (p *fakeProcess) StartTime() uint64     { return uint64(p.pid) * 10 }
func (p *fakeProcess) Done() <-chan struct{} { return p.done }
func (p *fakeProcess) Signal(syscall.Signal) error {
	p.exit()
	return nil
}
func (p *fakeProcess) exit()    { p.once.Do(func() { close(p.done) }) }
func (p *fakeProcess) Release() {}

// ControlPID: the fake VMM serves its control socket from the test
// process (controlPID), unless a test says otherwise.
func (p *fakeProcess) ControlPID() int {
	if p.servedBy != 0 {
		return p.servedBy
	}
	return os.Getpid()
}

// ExitStatus plays childProcess's.
func (p *fakeProcess) ExitStatus() string { return "exit status 1" }

func (l *fakeLauncher) Start(ctx context.Context, argv []string, logPath string, files []*os.File, prepare func(int) error) (Process, error) {
	if l.gate != nil {
		<-l.gate
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.crash != "" {
		os.WriteFile(logPath, []byte(l.crash), 0o600)
		return nil, errors.New("fake: VMM exited before running")
	}
	if l.fail {
		return nil, errors.New("fake: VMM exited before running")
	}
	if l.procs == nil {
		l.procs = map[int]*fakeProcess{}
	}
	l.next++
	p := &fakeProcess{pid: 1000 + l.next, done: make(chan struct{})}
	if err := prepare(p.pid); err != nil {
		return nil, err
	}
	if len(files) > 0 {
		if err := p.attach(files[0]); err != nil {
			return nil, err
		}
	}
	l.procs[p.pid] = p
	l.argv = append(l.argv, argv)
	os.WriteFile(logPath, []byte("RF-INIT-REACHED\n"), 0o600)
	if l.afterStart != nil {
		l.mu.Unlock()
		defer l.mu.Lock()
		l.afterStart()
	}
	return p, nil
}

// attach plays the VMM's side of the control socket: it takes the launch
// request and then serves requests until the process exits, with the
// package's own server and a fake machine.
func (p *fakeProcess) attach(lnFile *os.File) error {
	l, err := net.FileListener(lnFile)
	if err != nil {
		return err
	}
	ln := l.(*net.UnixListener)
	ln.SetUnlinkOnClose(false)
	launch, err := vmmctl.AcceptLaunch(ln, 5*time.Second)
	if err != nil {
		ln.Close()
		return err
	}
	p.doc, p.regions, p.files = launch.Config, launch.Config.Regions, launch.Files
	p.named = map[string]string{}
	for name, f := range launch.Named {
		p.named[name] = f.Name()
		f.Close()
	}
	p.devices = map[string]vmmctl.Device{}
	for i, d := range launch.Config.WithDiskIDs() {
		p.devices[d.ID] = vmmctl.Device{ID: d.ID, Kind: "disk", Slot: 1 + i, Path: d.Path}
	}
	for i, r := range launch.Config.Regions {
		id := "region/" + r.Name
		p.devices[id] = vmmctl.Device{ID: id, Kind: "region", Name: r.Name, Slot: 20 + i}
	}
	for i, sh := range launch.Config.WithShareIDs() {
		p.devices[sh.ID] = vmmctl.Device{ID: sh.ID, Kind: "share", Name: sh.Tag, Slot: 30 + i}
	}
	if err := launch.Reply(nil); err != nil {
		ln.Close()
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { // ends when the process exits
		<-p.done
		cancel()
		p.mu.Lock()
		closeFiles(p.files)
		p.mu.Unlock()
	}()
	go vmmctl.Serve(ctx, ln, launch.From.UID, p, slog.New(slog.NewTextHandler(io.Discard, nil))) // ends with ctx
	return nil
}

func (p *fakeProcess) AttachDisk(_ context.Context, d config.Disk, backing *os.File) (vmmctl.Device, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if backing != nil {
		b := make([]byte, 8)
		n, _ := backing.ReadAt(b, 0)
		backing.Close()
		if p.backings == nil {
			p.backings = map[string]string{}
		}
		p.backings[d.ID] = string(b[:n])
	}
	if _, ok := p.devices[d.ID]; ok {
		return vmmctl.Device{}, fmt.Errorf("%w: %q", vmmctl.ErrExists, d.ID)
	}
	dev := vmmctl.Device{ID: d.ID, Kind: "disk", Slot: 10 + len(p.devices), Path: d.Path}
	p.devices[d.ID] = dev
	return dev, nil
}

func (p *fakeProcess) Grant(_ context.Context, r config.Region, files []*os.File) (vmmctl.Device, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id := "region/" + r.Name
	dev := vmmctl.Device{ID: id, Kind: "region", Name: r.Name, Slot: 10 + len(p.devices)}
	p.devices[id] = dev
	p.regions = append(p.regions, r)
	p.files = append(p.files, files...)
	return dev, nil
}

func (p *fakeProcess) Detach(ctx context.Context, id string) error {
	p.mu.Lock()
	_, ok := p.devices[id]
	refuse := p.refuse
	p.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %q", vmmctl.ErrNotFound, id)
	}
	if refuse {
		<-ctx.Done()
		return fmt.Errorf("%w: %q", vmmctl.ErrNotReleased, id)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.devices, id)
	// Like the real VMM, Export no longer hands out a removed region.
	off := 0
	for i, r := range p.regions {
		if "region/"+r.Name == id {
			closeFiles(p.files[off : off+r.Files()])
			p.files = append(p.files[:off:off], p.files[off+r.Files():]...)
			p.regions = append(p.regions[:i:i], p.regions[i+1:]...)
			break
		}
		off += r.Files()
	}
	return nil
}

func (p *fakeProcess) Devices() []vmmctl.Device {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []vmmctl.Device
	for _, d := range p.devices {
		out = append(out, d)
	}
	return out
}

// SetCPUs plays vmm.Machine.PinVCPUs: 1 to VCPUs() distinct cores.
func (p *fakeProcess) SetCPUs(cores []int) ([]vmmctl.VCPUPin, error) {
	p.mu.Lock()
	n := p.doc.VCPUs()
	p.mu.Unlock()
	if len(cores) == 0 || len(cores) > n {
		return nil, fmt.Errorf("%w: %d cores for %d vCPUs", vmmctl.ErrInvalid, len(cores), n)
	}
	seen := map[int]bool{}
	for _, c := range cores {
		if seen[c] || c < 0 {
			return nil, fmt.Errorf("%w: cores %v", vmmctl.ErrInvalid, cores)
		}
		seen[c] = true
	}
	p.mu.Lock()
	p.cores = append([]int(nil), cores...)
	p.mu.Unlock()
	return p.VCPUs(), nil
}

// VCPUs plays vmm.Machine.VCPUPins: vCPU i on cores[i], the rest on
// cores[0].
func (p *fakeProcess) VCPUs() []vmmctl.VCPUPin {
	p.mu.Lock()
	defer p.mu.Unlock()
	cores := p.cores
	if cores == nil {
		cores = p.doc.Cores
	}
	out := make([]vmmctl.VCPUPin, p.doc.VCPUs())
	for i := range out {
		out[i] = vmmctl.VCPUPin{VCPU: i, Core: cores[0], TID: p.pid*100 + i}
		if i < len(cores) {
			out[i].Core = cores[i]
		}
	}
	return out
}

func (p *fakeProcess) Export() ([]config.Region, []*os.File) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]config.Region(nil), p.regions...), append([]*os.File(nil), p.files...)
}

// alive says whether fake process pid was started and has not exited.
func (l *fakeLauncher) alive(pid int) bool {
	l.mu.Lock()
	p, ok := l.procs[pid]
	l.mu.Unlock()
	if !ok {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill makes fake process pid exit.
func (l *fakeLauncher) kill(pid int) {
	l.mu.Lock()
	p, ok := l.procs[pid]
	l.mu.Unlock()
	if ok {
		p.exit()
	}
}

func (l *fakeLauncher) Adopt(pid int, start uint64) (Process, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p, ok := l.procs[pid]
	if !ok || p.StartTime() != start {
		return nil, fmt.Errorf("fake: no process %d", pid)
	}
	select {
	case <-p.done:
		return nil, fmt.Errorf("fake: process %d exited", pid)
	default:
	}
	return p, nil
}

// testInventory is a 1-node, 4-core machine with a 64-page 2 MiB pool and
// one PCI device the ledger could assign (IOMMU group 3).
func testInventory() *partitioner.Inventory {
	inv := &partitioner.Inventory{}
	for i := 0; i < 4; i++ {
		inv.CPUs = append(inv.CPUs, partitioner.CPU{ID: i, Online: true, Core: i, Node: 0, Siblings: []int{i}})
	}
	inv.Nodes = []partitioner.Node{{ID: 0, CPUs: []int{0, 1, 2, 3}, MemTotal: 8 << 30, MemFree: 6 << 30,
		HugePages: []partitioner.HugePool{{PageSize: 2 << 20, Total: 64, Free: 64}}}}
	inv.Devices = []partitioner.PCIDevice{{Address: testDevice, Driver: "vfio-pci", IOMMUGroup: 3, Node: 0}}
	return inv
}

// testDevice is testInventory's PCI device.
const testDevice = "0000:03:00.0"

func newTestSupervisor(t *testing.T, dir string, act *fakeActuator, l *fakeLauncher) *Supervisor {
	t.Helper()
	return newTestSupervisorNet(t, dir, act, l, nil)
}

// newTestSupervisorNet is newTestSupervisor with the host network nw
// (nil: none).
func newTestSupervisorNet(t *testing.T, dir string, act *fakeActuator, l *fakeLauncher, nw *fakeNetwork) *Supervisor {
	t.Helper()
	cfg := Config{StateDir: dir, RunDir: filepath.Join(dir, "run"), Inventory: testInventory(), Actuator: act, Launcher: l,
		Jail: JailConfig{KVMPath: filepath.Join(dir, "kvm")}}
	if nw != nil {
		cfg.Network = nw
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func testSpec(t *testing.T, name string, cpus int) Spec {
	k := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(k, []byte("kernel"), 0o644)
	return Spec{Name: name, CPUs: cpus, Memory: 32 << 20, Kernel: k}
}

func (p *fakeProcess) setRefuse(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = on
}

func (p *fakeProcess) has(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.devices[id]
	return ok
}

// forget drops a device as a guest that released it on its own would.
func (p *fakeProcess) forget(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.devices, id)
}

func (p *fakeProcess) lastRegion() config.Region {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.regions[len(p.regions)-1]
}

// SetMemory plays vmm.Machine.SetMemory and a guest that plugs at once
// whatever is asked of the document's hotplug memory, up to its ceiling
// when it has one.
func (p *fakeProcess) SetMemory(_ context.Context, requested uint64) (vmmctl.Memory, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	region, bs := p.doc.HotplugMemory, uint64(2<<20)
	if region == 0 || requested%bs != 0 || requested > region {
		return vmmctl.Memory{}, fmt.Errorf("%w: requested %d of a %d-byte region", vmmctl.ErrInvalid, requested, region)
	}
	p.requested, p.memory = requested, requested
	if p.ceiling > 0 {
		p.memory = min(requested, p.ceiling)
	}
	return vmmctl.Memory{Requested: requested, Plugged: p.memory, RegionSize: region, BlockSize: bs}, nil
}

// plugged returns the hotplug memory plugged and requested.
func (p *fakeProcess) plugged() (plugged, requested uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.memory, p.requested
}

// Memory plays vmm.Machine.MemoryState.
func (p *fakeProcess) Memory() (vmmctl.Memory, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.doc.HotplugMemory == 0 {
		return vmmctl.Memory{}, fmt.Errorf("%w: no hotplug memory", vmmctl.ErrInvalid)
	}
	return vmmctl.Memory{Requested: p.requested, Plugged: p.memory, RegionSize: p.doc.HotplugMemory, BlockSize: 2 << 20}, nil
}
