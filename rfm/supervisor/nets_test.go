package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"rainforest/rfm/netdev"
)

// fakeNetwork plays the host's network: bridges and TAPs by name. A TAP
// is an open pipe whose read end stands for the device: it "goes" when
// the test closes the files the VMM was given (gone).
type fakeNetwork struct {
	mu      sync.Mutex
	bridges map[string]bool   // name -> made by the supervisor
	taps    map[string]string // TAP -> bridge
	files   map[string]*os.File
	failTAP string // OpenTAP of this name fails
}

func newFakeNetwork(bridges ...string) *fakeNetwork {
	n := &fakeNetwork{bridges: map[string]bool{}, taps: map[string]string{}, files: map[string]*os.File{}}
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

// gone removes the TAPs whose descriptors were all closed: a closed pipe
// end fails Stat... so the test says which went.
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
