package loopnet

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"rainforest/rfm/vmmctl"
	"rainforest/vmm/config"
	vnet "rainforest/vmm/virtio/net"
	"rainforest/vmm/virtio/net/loop"
)

var testMembers = []Member{
	{Name: "web", MAC: "02:00:00:00:00:01", IP: "10.0.0.1"},
	{Name: "db", MAC: "02:00:00:00:00:02", IP: "10.0.0.2"},
	{Name: "cache", MAC: "02:00:00:00:00:03"},
}

func TestCreateRefusals(t *testing.T) {
	if _, err := Create("lan", testMembers[:1], 0); !errors.Is(err, ErrInvalid) || !errors.Is(err, loop.ErrTooFewMembers) ||
		!strings.Contains(err.Error(), "(web)") {
		t.Errorf("one member: %v", err)
	}
	if _, err := Create("lan", nil, 0); !errors.Is(err, loop.ErrTooFewMembers) {
		t.Errorf("no member: %v", err)
	}
	dup := append([]Member(nil), testMembers...)
	dup[2].MAC = dup[0].MAC
	if _, err := Create("lan", dup, 0); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "members[2].mac") {
		t.Errorf("same MAC twice: %v", err)
	}
	if _, err := Create("lan", testMembers, 100); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "slots") {
		t.Errorf("100 slots: %v", err)
	}
	if _, err := Create("a lan", testMembers, 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad network name: %v", err)
	}
}

// TestAttach: every member gets a net that a document accepts (with its
// files in the launch order vmmctl makes), its own lane writable, the
// others only readable, and every doorbell.
func TestAttach(t *testing.T) {
	n, err := Create("a-rather-long-loop-network-name", testMembers, loop.MinSlots)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if _, err := n.Attach("nobody", "lan"); !errors.Is(err, ErrNoMember) {
		t.Errorf("attach a stranger: %v", err)
	}
	for self, m := range testMembers {
		a, err := n.Attach(m.Name, "lan")
		if err != nil {
			t.Fatal(err)
		}
		if a.Net.MAC != m.MAC || a.Net.Loop.Self != self || len(a.Net.Loop.Members) != 3 || len(a.Files) != 6 {
			t.Fatalf("attachment %+v", a)
		}
		_, table := vmmctl.LaunchFiles(nil, a.Files)
		doc := config.Document{Version: config.Version, Name: m.Name, Kernel: "/k", Cores: []int{0}, Memory: 64 << 20,
			Nets: []config.Net{a.Net}, Files: table}
		if err := doc.Validate(); err != nil {
			t.Fatalf("%s's document: %v", m.Name, err)
		}
		for k := range testMembers {
			f := a.Files[config.LoopLaneFile("lan", k)]
			var st unix.Stat_t
			if err := unix.Fstat(int(f.Fd()), &st); err != nil {
				t.Fatal(err)
			}
			_, err := unix.Mmap(int(f.Fd()), 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
			if k == self && err != nil {
				t.Errorf("%s cannot map its own lane writable: %v", m.Name, err)
			}
			if k != self && !errors.Is(err, unix.EACCES) {
				t.Errorf("%s maps %s's lane writable: %v", m.Name, testMembers[k].Name, err)
			}
		}
		a.Close()
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Attach("web", "lan"); !errors.Is(err, ErrClosed) {
		t.Errorf("attach after close: %v", err)
	}
}

// port is a guest that keeps what it gets.
type port struct {
	mu     sync.Mutex
	frames [][]byte
	got    chan struct{}
}

func (p *port) Receive(f []byte) error {
	p.mu.Lock()
	p.frames = append(p.frames, append([]byte(nil), f...))
	p.mu.Unlock()
	p.got <- struct{}{}
	return nil
}

func (p *port) WaitRx(context.Context) error { return nil }

// first returns the first frame received.
func (p *port) first() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.frames[0]
}

// frame is an Ethernet frame from member i to dst, behind its header.
func frame(i int, dst [6]byte, etherType uint16, body []byte) []byte {
	src, _ := config.Net{MAC: testMembers[i].MAC}.HardwareAddr()
	p := make([]byte, vnet.HeaderLen)
	p = append(append(p, dst[:]...), src[:]...)
	p = binary.BigEndian.AppendUint16(p, etherType)
	return append(p, body...)
}

// TestNetwork: members' backends opened on their attachments, as their
// VMMs open them, exchange frames, doorbells and all; the network
// outlives the supervisor's hold.
func TestNetwork(t *testing.T) {
	n, err := Create("lan", testMembers, loop.MinSlots)
	if err != nil {
		t.Fatal(err)
	}
	var bs []*loop.Backend
	var ports []*port
	for self, m := range testMembers {
		a, err := n.Attach(m.Name, "lan")
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := a.Net.Loop.Config()
		if err != nil {
			t.Fatal(err)
		}
		var files loop.Files
		for k := range testMembers {
			files.Lanes = append(files.Lanes, a.Files[config.LoopLaneFile("lan", k)])
			files.Bells = append(files.Bells, a.Files[config.LoopBellFile("lan", k)])
		}
		b, err := loop.Open(cfg, files)
		if err != nil {
			t.Fatalf("member %d: %v", self, err)
		}
		if err := b.Configure(vnet.OffloadFeatures); err != nil {
			t.Fatal(err)
		}
		bs = append(bs, b)
		ports = append(ports, &port{got: make(chan struct{}, 64)})
	}
	// The VMMs hold the network now.
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i, b := range bs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := b.Run(ctx, ports[i]); err != nil {
				t.Errorf("member %d: %v", i, err)
			}
		}()
	}
	defer func() {
		cancel()
		wg.Wait()
		for _, b := range bs {
			if err := b.Close(); err != nil {
				t.Error(err)
			}
		}
	}()
	ipv4 := func(src, dst [4]byte) []byte {
		h := make([]byte, 28)
		h[0], h[9] = 0x45, 17
		copy(h[12:], src[:])
		copy(h[16:], dst[:])
		return h
	}
	db, _ := config.Net{MAC: testMembers[1].MAC}.HardwareAddr()
	toDB := frame(0, db, 0x0800, ipv4([4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 2}))
	if err := bs[0].Send([][]byte{toDB}); err != nil {
		t.Fatal(err)
	}
	<-ports[1].got
	if !bytes.Equal(ports[1].first(), toDB) {
		t.Fatal("db got another frame")
	}
	bcast := frame(2, [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 0x0806,
		[]byte{0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 3, 10, 0, 0, 9, 0, 0, 0, 0, 0, 0, 10, 0, 0, 1})
	if err := bs[2].Send([][]byte{bcast}); err != nil {
		t.Fatal(err)
	}
	<-ports[0].got
	<-ports[1].got
	// web may not use db's address.
	if err := bs[0].Send([][]byte{frame(0, db, 0x0800, ipv4([4]byte{10, 0, 0, 2}, [4]byte{10, 0, 0, 2}))}); !errors.Is(err, loop.ErrSpoofed) {
		t.Errorf("spoofed IP: %v", err)
	}
	if s := bs[0].Stats(); s.TxSpoofedIP != 1 || s.TxFrames != 1 {
		t.Errorf("web's stats %+v", s)
	}
}

func TestMemberMAC(t *testing.T) {
	a, b := MemberMAC("lan", 0), MemberMAC("lan", 1)
	if a == b || MemberMAC("lan", 0) != a || MemberMAC("wan", 0) == a {
		t.Errorf("MACs %s %s %s", a, b, MemberMAC("wan", 0))
	}
	n := config.Net{MAC: a}
	if mac, err := n.HardwareAddr(); err != nil || mac[0] != 0x02 {
		t.Errorf("%s: %v", a, err)
	}
}
