package supervisor

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"rainforest/rfm/netdev"
	"rainforest/rfm/vmmctl"
)

// fakeNetwork plays the host's network: bridges and TAPs by name. A TAP's
// descriptor is a pipe's write end; the TAP goes when the test says so
// (gone).
type fakeNetwork struct {
	mu      sync.Mutex
	bridges map[string]bool   // name -> made by the supervisor
	taps    map[string]string // TAP -> bridge
	files   map[string]*os.File
	failTAP string // OpenTAP of this name fails
	noVhost bool   // the host has no /dev/vhost-net
	// guards are the TAPs' source guards (TAP -> "MAC IP"), failGuard
	// a TAP whose guard cannot be installed, guardCounts the counters
	// GuardCounters returns.
	guards      map[string]string
	failGuard   string
	guardCounts map[string]map[string]uint64
}

func newFakeNetwork(bridges ...string) *fakeNetwork {
	n := &fakeNetwork{bridges: map[string]bool{}, taps: map[string]string{}, files: map[string]*os.File{}, guards: map[string]string{}}
	for _, b := range bridges {
		n.bridges[b] = false
	}
	return n
}

func (n *fakeNetwork) CheckBridge(name string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.bridges[name]; !ok {
		return fmt.Errorf("%w: %q", netdev.ErrNoBridge, name)
	}
	return nil
}

func (n *fakeNetwork) EnsureBridge(name string, create bool, addr string) (bool, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.bridges[name]; ok {
		return false, nil
	}
	if !create {
		return false, fmt.Errorf("%w: %q", netdev.ErrNoBridge, name)
	}
	n.bridges[name] = true
	return true, nil
}

func (n *fakeNetwork) RemoveBridge(name string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	for t, b := range n.taps {
		if b == name {
			return fmt.Errorf("bridge %s still has %s", name, t)
		}
	}
	delete(n.bridges, name)
	return nil
}

func (n *fakeNetwork) Made(name string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.bridges[name]
}

func (n *fakeNetwork) Exists(name string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, tap := n.taps[name]
	_, br := n.bridges[name]
	return tap || br || name == "eth0"
}

func (n *fakeNetwork) OpenTAP(name, bridge string) (*os.File, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if name == n.failTAP {
		return nil, errors.New("fake: no TAP for you")
	}
	if _, ok := n.taps[name]; ok {
		return nil, fmt.Errorf("%w: %q", netdev.ErrNameTaken, name)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	r.Close()
	n.taps[name], n.files[name] = bridge, w
	return w, nil
}

func (n *fakeNetwork) OpenVhostNet() (*os.File, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.noVhost {
		return nil, fmt.Errorf("open /dev/vhost-net: %w", os.ErrNotExist)
	}
	return os.Open(os.DevNull)
}

func (n *fakeNetwork) GuardTAP(tap, mac string, ip netip.Addr) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if tap == n.failGuard {
		return errors.New("fake: no nftables for you")
	}
	if _, ok := n.taps[tap]; !ok {
		return fmt.Errorf("fake: guard of TAP %s, which does not exist", tap)
	}
	n.guards[tap] = mac + " " + ip.String()
	return nil
}

func (n *fakeNetwork) UnguardTAP(tap string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.guards, tap)
	return nil
}

func (n *fakeNetwork) GuardCounters(tap string) (map[string]uint64, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.guards[tap]; !ok {
		return nil, fmt.Errorf("%w: %s", netdev.ErrNoGuard, tap)
	}
	return maps.Clone(n.guardCounts[tap]), nil
}

func (n *fakeNetwork) guardState() map[string]string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return maps.Clone(n.guards)
}

// gone removes TAPs as the kernel does once their VMM's descriptors are
// closed (the fake cannot tell on its own, so the test says which went).
func (n *fakeNetwork) gone(taps ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, t := range taps {
		delete(n.taps, t)
		delete(n.files, t)
	}
}

func (n *fakeNetwork) state() (bridges []string, taps []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for b := range n.bridges {
		bridges = append(bridges, b)
	}
	for t := range n.taps {
		taps = append(taps, t)
	}
	slices.Sort(bridges)
	slices.Sort(taps)
	return bridges, taps
}

func TestNICs(t *testing.T) {
	act, l := &fakeActuator{}, &fakeLauncher{}
	dir := t.TempDir()
	nw := newFakeNetwork("br0")
	s := newTestSupervisorNet(t, dir, act, l, nw)
	defer s.Close()
	ctx := context.Background()
	spec := testSpec(t, "web", 1)
	spec.Nets = []NIC{{Bridge: "br0"}, {Bridge: "lan", CreateBridge: true, BridgeAddress: "10.77.0.1/24"}}
	info, err := s.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	nics := info.Spec.Nets
	if len(nics) != 2 || nics[0].ID != "net0" || nics[0].TAP != "rf-web0" || nics[1].TAP != "rf-web1" || nics[0].MAC != netdev.MAC("web", 0).String() {
		t.Fatalf("the created spec's NICs: %+v", nics)
	}
	doc := l.proc(info.PID).doc
	if len(doc.Nets) != 2 || doc.Nets[1].ID != "net1" || doc.Nets[1].MAC != nics[1].MAC {
		t.Errorf("the VMM's nets: %+v", doc.Nets)
	}
	for _, id := range []string{"net0", "net1"} {
		if _, ok := doc.Files["net/"+id]; !ok {
			t.Errorf("no descriptor net/%s for the VMM: %v", id, doc.Files)
		}
	}
	if bridges, taps := nw.state(); !slices.Equal(bridges, []string{"br0", "lan"}) || !slices.Equal(taps, []string{"rf-web0", "rf-web1"}) {
		t.Errorf("host network: bridges %v taps %v", bridges, taps)
	}

	// Refusals: nothing is made.
	for _, c := range []struct {
		nics []NIC
		says string
	}{
		{[]NIC{{Bridge: "nobr"}}, "no such bridge"},
		{[]NIC{{MAC: nics[0].MAC}}, "two NICs cannot share a MAC"},
		{[]NIC{{TAP: "rf-web0"}}, `TAP "rf-web0" is another subOS's`},
		{[]NIC{{TAP: "eth0"}}, "exists already on the host"},
		{[]NIC{{MAC: "01:00:5e:00:00:01"}}, "multicast"},
		{[]NIC{{}, {ID: "net0"}}, "names two NICs"},
		{[]NIC{{TAP: "way-too-long-for-linux"}}, "1 to 15 bytes"},
		{[]NIC{{Bridge: "lan2", BridgeAddress: "10.0.0.1"}}, "prefix length"},
	} {
		bad := testSpec(t, "db", 1)
		bad.Nets = c.nics
		if _, err := s.Create(ctx, bad); err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("create with NICs %+v: %v, want %q", c.nics, err, c.says)
		}
		if probs := s.Check(bad); len(probs) == 0 {
			t.Errorf("check of NICs %+v found nothing", c.nics)
		}
	}
	if bridges, taps := nw.state(); !slices.Equal(bridges, []string{"br0", "lan"}) || len(taps) != 2 {
		t.Errorf("refused creates changed the host network: bridges %v taps %v", bridges, taps)
	}
	// A TAP that cannot be made: the bridge made for it goes again.
	nw.failTAP = "rf-db0"
	bad := testSpec(t, "db", 1)
	bad.Nets = []NIC{{Bridge: "lan3", CreateBridge: true}}
	if _, err := s.Create(ctx, bad); err == nil {
		t.Error("create with a failing TAP succeeded")
	}
	if bridges, _ := nw.state(); slices.Contains(bridges, "lan3") {
		t.Error("the bridge made for a failed create is left behind")
	}

	// Destroy: the TAPs go with the VMM, then the bridge the supervisor
	// made, once no subOS uses it, whichever asked for it; the user's
	// stays.
	nw.failTAP = ""
	other := testSpec(t, "db", 1)
	other.Nets = []NIC{{Bridge: "lan"}}
	if _, err := s.Create(ctx, other); err != nil {
		t.Fatal(err)
	}
	nw.gone("rf-web0", "rf-web1")
	if err := s.Destroy(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if bridges, _ := nw.state(); !slices.Contains(bridges, "lan") {
		t.Error("the bridge went while db still uses it")
	}
	nw.gone("rf-db0")
	if err := s.Destroy(ctx, "db"); err != nil {
		t.Fatal(err)
	}
	if bridges, _ := nw.state(); !slices.Equal(bridges, []string{"br0"}) {
		t.Errorf("after destroy the bridges are %v, want the user's br0 only", bridges)
	}
}

// fakeUplinks starts no process: each uplink "runs" until signalled.
type fakeUplinks struct {
	mu      sync.Mutex
	started [][]string
	joined  []int
	fail    string
	procs   []*fakeUplink
}

type fakeUplink struct {
	pid  int
	done chan struct{}
	once sync.Once
}

func (u *fakeUplink) PID() int              { return u.pid }
func (u *fakeUplink) Done() <-chan struct{} { return u.done }
func (u *fakeUplink) Signal(os.Signal) error {
	u.once.Do(func() { close(u.done) })
	return nil
}

func (f *fakeUplinks) StartUplink(args []string, frames *os.File, join func(pid int) error) (UplinkProcess, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != "" {
		return nil, errors.New(f.fail)
	}
	p := &fakeUplink{pid: 9000 + len(f.procs), done: make(chan struct{})}
	if err := join(p.pid); err != nil {
		return nil, err
	}
	f.started = append(f.started, args)
	f.joined = append(f.joined, p.pid)
	f.procs = append(f.procs, p)
	return p, nil
}

func TestUplinkNIC(t *testing.T) {
	act, l := &fakeActuator{}, &fakeLauncher{}
	dir := t.TempDir()
	ups := &fakeUplinks{}
	s, err := New(Config{StateDir: dir, RunDir: dir + "/run", Inventory: testInventory(), Actuator: act, Launcher: l,
		Jail: JailConfig{KVMPath: dir + "/kvm"}, Uplinks: ups})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	spec := testSpec(t, "web", 1)
	spec.Nets = []NIC{{User: true, Publish: []string{"8080:80"}, HostLoopback: true}}
	info, err := s.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	doc := l.proc(info.PID).doc
	if len(doc.Nets) != 1 || doc.Nets[0].Backend != "socket" || doc.Nets[0].Tap != "" || !strings.Contains(doc.Append, "rf.ip=10.0.2.15/24,10.0.2.2") {
		t.Errorf("the VMM's nets %+v, append %q", doc.Nets, doc.Append)
	}
	if _, ok := doc.Files["net/net0"]; !ok {
		t.Errorf("no frame socket for the VMM: %v", doc.Files)
	}
	if len(ups.started) != 1 || strings.Join(ups.started[0], " ") != "--publish 8080:80 --host-loopback" {
		t.Errorf("uplinks started with %v", ups.started)
	}
	act.mu.Lock()
	members := slices.Clone(act.members["web"])
	act.mu.Unlock()
	if !slices.Contains(members, ups.joined[0]) {
		t.Errorf("the uplink %d is not in the subOS's cgroup (%v)", ups.joined[0], members)
	}
	// Refusals, before anything starts.
	for _, c := range []struct {
		nic  NIC
		says string
	}{
		{NIC{User: true, Publish: []string{"80"}}, "publish"},
		{NIC{User: true, Bridge: "br0"}, "give one"},
		{NIC{TAP: "rf-x", Publish: []string{"8080:80"}}, "for a NIC on the uplink"},
	} {
		bad := testSpec(t, "db", 1)
		bad.Nets = []NIC{c.nic}
		if _, err := s.Create(ctx, bad); err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("create with %+v: %v, want %q", c.nic, err, c.says)
		}
	}
	// An uplink that cannot start (a port in use): nothing is left.
	ups.fail = "uplink: host port 8080/tcp is already in use"
	bad := testSpec(t, "db", 1)
	bad.Nets = []NIC{{User: true, Publish: []string{"8080:80"}}}
	if _, err := s.Create(ctx, bad); err == nil || !strings.Contains(err.Error(), "already in use") {
		t.Errorf("create with a port in use: %v", err)
	}
	if _, err := s.Get("db"); err == nil {
		t.Error("a failed create left its subOS")
	}
	ups.fail = ""
	if err := s.Destroy(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ups.procs[0].done:
	default:
		t.Error("destroy left the uplink running")
	}
}

func TestNICVhost(t *testing.T) {
	act, l := &fakeActuator{}, &fakeLauncher{}
	nw := newFakeNetwork("br0")
	s := newTestSupervisorNet(t, t.TempDir(), act, l, nw)
	defer s.Close()
	ctx := context.Background()
	spec := testSpec(t, "web", 1)
	spec.Nets = []NIC{{Bridge: "br0"}, {Bridge: "br0", Vhost: VhostOff}, {Bridge: "br0", Vhost: VhostOn}}
	info, err := s.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	doc := l.proc(info.PID).doc
	for id, want := range map[string]bool{"net0": true, "net1": false, "net2": true} {
		if _, ok := doc.Files["vhost-net/"+id]; ok != want {
			t.Errorf("descriptor vhost-net/%s given: %v, want %v (%v)", id, ok, want, doc.Files)
		}
	}

	// Without /dev/vhost-net: auto goes without, on is refused by check
	// and create, and nothing is left behind.
	nw.noVhost = true
	auto := testSpec(t, "db", 1)
	auto.Nets = []NIC{{Bridge: "br0"}}
	if probs := s.Check(auto); len(probs) != 0 {
		t.Errorf("check of vhost auto without the device: %v", probs)
	}
	on := testSpec(t, "api", 1)
	on.Nets = []NIC{{Bridge: "lanx", CreateBridge: true, Vhost: VhostOn}}
	probs := s.Check(on)
	if len(probs) != 1 || probs[0].Field != "nets[0].vhost" || !strings.Contains(probs[0].Message, "/dev/vhost-net") {
		t.Errorf("check of vhost on without the device: %v", probs)
	}
	if _, err := s.Create(ctx, on); err == nil || !strings.Contains(err.Error(), "/dev/vhost-net") {
		t.Errorf("create with vhost on without the device: %v", err)
	}
	if bridges, taps := nw.state(); slices.Contains(bridges, "lanx") || len(taps) != 3 {
		t.Errorf("a refused vhost on left bridges %v taps %v", bridges, taps)
	}
	info, err = s.Create(ctx, auto)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := l.proc(info.PID).doc.Files["vhost-net/net0"]; ok {
		t.Error("vhost-net descriptor given without the device")
	}

	bad := testSpec(t, "x", 1)
	bad.Nets = []NIC{{Bridge: "br0", Vhost: "yes"}, {User: true, Vhost: VhostOn}}
	probs = s.Check(bad)
	fields := []string{}
	for _, p := range probs {
		fields = append(fields, p.Field)
	}
	if !slices.Contains(fields, "nets[0].vhost") || !slices.Contains(fields, "nets[1].vhost") {
		t.Errorf("check of bad vhost values: %v", probs)
	}
}

func TestNICInfo(t *testing.T) {
	spec := Spec{Name: "web", Nets: []NIC{{Bridge: "br0"}, {User: true}, {Bridge: "br0", ID: "lan"}}}
	got := nicInfo(spec, []vmmctl.Device{{ID: "net0", Kind: "net", Vhost: "on"}, {ID: "lan", Kind: "net"}}, true)
	if len(got) != 2 || got[0].Vhost != "on" || got[0].TAP != "rf-web0" || got[1].ID != "lan" || got[1].Vhost != "off" {
		t.Errorf("nicInfo: %+v", got)
	}
	got = nicInfo(spec, []vmmctl.Device{{ID: "net0", Kind: "net", Vhost: "\x1b[31m"}}, true)
	if got[0].Vhost != "unknown" {
		t.Errorf("an unknown report passed: %+v", got)
	}
	if got = nicInfo(spec, nil, false); got[0].Vhost != "unknown" {
		t.Errorf("no answer: %+v", got)
	}
}

func TestNICGuard(t *testing.T) {
	act, l := &fakeActuator{}, &fakeLauncher{}
	nw := newFakeNetwork("br0")
	s := newTestSupervisorNet(t, t.TempDir(), act, l, nw)
	defer s.Close()
	ctx := context.Background()
	spec := testSpec(t, "web", 1)
	spec.Nets = []NIC{{Bridge: "br0", IP: "10.77.0.2/24", MAC: "02:AA:00:00:00:01"}, {Bridge: "br0"}, {User: true}}
	s.cfg.Uplinks = &fakeUplinks{}
	info, err := s.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	mac1 := netdev.MAC("web", 1).String()
	if got, want := nw.guardState(), map[string]string{"rf-web0": "02:AA:00:00:00:01 10.77.0.2", "rf-web1": mac1 + " invalid IP"}; !maps.Equal(got, want) {
		t.Errorf("guards %v, want %v", got, want)
	}
	if doc := l.proc(info.PID).doc; !strings.Contains(doc.Append, "rf.addr=02:aa:00:00:00:01=10.77.0.2/24") || strings.Count(doc.Append, "rf.addr=") != 1 {
		t.Errorf("the guest's command line %q does not give it its address", doc.Append)
	}

	// The host's counters join the NIC's, the zero ones left out.
	nw.mu.Lock()
	nw.guardCounts = map[string]map[string]uint64{"rf-web0": {netdev.CounterSpoofedMAC: 3, netdev.CounterSpoofedIP: 0}}
	nw.mu.Unlock()
	s.mu.Lock()
	so := s.subos["web"]
	s.mu.Unlock()
	got := s.nicCounters(so)
	if len(got) != 2 || got[0].ID != "net0" || !maps.Equal(got[0].Counters, map[string]uint64{netdev.CounterSpoofedMAC: 3}) || got[1].ID != "net1" || len(got[1].Counters) != 0 {
		t.Errorf("NIC counters %+v", got)
	}

	// Refusals, by check and create.
	for _, c := range []struct {
		nic  NIC
		says string
	}{
		{NIC{Bridge: "br0", IP: "10.77.0.3"}, "prefix length"},
		{NIC{Bridge: "br0", IP: "fd00::3/64"}, "IPv4"},
		{NIC{Bridge: "br0", IP: "0.0.0.0/24"}, "not an address"},
		{NIC{Bridge: "br0", IP: "10.77.0.2/24"}, "two NICs cannot share an address"},
		{NIC{User: true, IP: "10.0.2.15/24"}, "ip is for a NIC on a TAP"},
	} {
		bad := testSpec(t, "db", 1)
		bad.Nets = []NIC{c.nic}
		if probs := s.Check(bad); len(probs) == 0 || !strings.Contains(fmt.Sprint(probs), c.says) {
			t.Errorf("check of %+v: %v, want %q", c.nic, probs, c.says)
		}
		if _, err := s.Create(ctx, bad); err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("create with %+v: %v, want %q", c.nic, err, c.says)
		}
	}
	twice := testSpec(t, "db", 1)
	twice.Nets = []NIC{{Bridge: "br0", IP: "10.77.0.5/24"}, {Bridge: "br0", IP: "10.77.0.5/24"}}
	if probs := s.Check(twice); !strings.Contains(fmt.Sprint(probs), "two NICs cannot share an address") {
		t.Errorf("check of two NICs with one address: %v", probs)
	}

	// A guard that cannot be installed undoes the create: no guard, no
	// subOS (the fake's TAPs outlive their descriptors, so the bridge
	// part is TestNICs's).
	nw.failGuard = "rf-db1"
	bad := testSpec(t, "db", 1)
	bad.Nets = []NIC{{Bridge: "br0"}, {Bridge: "br0"}}
	if _, err := s.Create(ctx, bad); err == nil || !strings.Contains(err.Error(), "source guard") {
		t.Errorf("create with a failing guard: %v", err)
	}
	nw.gone("rf-db0", "rf-db1")
	if _, ok := nw.guardState()["rf-db0"]; ok {
		t.Error("the guard of a failed create is left")
	}
	if _, err := s.Get("db"); err == nil {
		t.Error("a failed create left its subOS")
	}

	// Destroy removes the guards.
	nw.gone("rf-web0", "rf-web1")
	if err := s.Destroy(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if g := nw.guardState(); len(g) != 0 {
		t.Errorf("guards left after destroy: %v", g)
	}
}

func TestIPCmdline(t *testing.T) {
	spec := Spec{Name: "web", Nets: []NIC{{Bridge: "br0", IP: "10.77.0.2/24"}, {User: true, IP: "10.0.2.9/24"}, {Bridge: "br0", IP: "bad"}}}
	if got, want := addrCmdline(spec), "rf.addr="+netdev.MAC("web", 0).String()+"=10.77.0.2/24"; got != want {
		t.Errorf("addrCmdline = %q, want %q", got, want)
	}
	spec.CmdlineAppend = "rf.addr=x"
	if got := addrCmdline(spec); got != "" {
		t.Errorf("addrCmdline with the command line's own rf.addr = %q", got)
	}
}

// A restarted supervisor leaves the guards of the subOSes it adopts as
// they are (they live in the kernel), and removes those of the subOSes
// it reclaims.
func TestNICGuardRestart(t *testing.T) {
	dir := t.TempDir()
	act, l := &fakeActuator{}, &fakeLauncher{}
	nw := newFakeNetwork("br0")
	s := newTestSupervisorNet(t, dir, act, l, nw)
	ctx := context.Background()
	var pids []int
	for _, name := range []string{"a", "b"} {
		spec := testSpec(t, name, 1)
		spec.Nets = []NIC{{Bridge: "br0"}}
		info, err := s.Create(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, info.PID)
	}
	s.Close()
	l.procs[pids[1]].exit()
	nw.gone("rf-b0")
	s2 := newTestSupervisorNet(t, dir, act, l, nw)
	defer s2.Close()
	if g := nw.guardState(); len(g) != 1 || g["rf-a0"] == "" {
		t.Errorf("guards after the restart: %v, want a's only", g)
	}
	l.procs[pids[0]].exit()
	nw.gone("rf-a0")
	deadline := time.Now().Add(5 * time.Second)
	for len(s2.List()) != 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if g := nw.guardState(); len(g) != 0 {
		t.Errorf("guards after a's VMM exited: %v", g)
	}
}
