package vhostnet_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"rainforest/vmm/eventfd"
	"rainforest/vmm/vhostuser"
	"rainforest/vmm/virtio"
	vnet "rainforest/vmm/virtio/net"
	"rainforest/vmm/virtio/net/vhostnet"
	vt "rainforest/vmm/virtio/virtiotest"
)

const (
	memSize = 0x40000
	rxBase  = 0x1000
	txBase  = 0x5000
	bufBase = 0x10000
	qSize   = 256
	tapFD   = 77
	// kernelFeatures are vhost-net's on Linux 6.x, less ACCESS_PLATFORM
	// and RING_RESET.
	kernelFeatures = notifyOnEmpty | 1<<26 | 1<<27 | vnet.FeatureMrgRxbuf | virtio.TransportFeatures
)

const notifyOnEmpty = 1 << 24

var mac = vnet.MAC{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

// fakeKernel records the vhost calls, one line each, and fails the one
// whose line starts with failOn.
type fakeKernel struct {
	mu       sync.Mutex
	calls    []string
	failOn   string
	features uint64
	closed   int
}

func (k *fakeKernel) do(format string, args ...any) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	c := fmt.Sprintf(format, args...)
	if k.failOn != "" && strings.HasPrefix(c, k.failOn) {
		k.calls = append(k.calls, c+" (failed)")
		return errors.New("fake vhost: " + c + " failed")
	}
	k.calls = append(k.calls, c)
	return nil
}

func (k *fakeKernel) take() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	c := k.calls
	k.calls = nil
	return c
}

func (k *fakeKernel) SetOwner() error { return k.do("owner") }
func (k *fakeKernel) Features() (uint64, error) {
	return k.features, k.do("get-features")
}
func (k *fakeKernel) SetFeatures(f uint64) error { return k.do("features %#x", f) }
func (k *fakeKernel) SetMemTable(r []vhostuser.MemoryRegion) error {
	return k.do("mem %d regions gpa %#x size %#x", len(r), r[0].GPA, r[0].Size)
}
func (k *fakeKernel) SetVringNum(i, n uint32) error  { return k.do("num %d %d", i, n) }
func (k *fakeKernel) SetVringBase(i, b uint32) error { return k.do("base %d %d", i, b) }
func (k *fakeKernel) VringBase(i uint32) (uint32, error) {
	return 0, k.do("get-base %d", i)
}
func (k *fakeKernel) SetVringAddr(a vhostuser.VringAddr) error {
	if a.Desc == 0 || a.Used == 0 || a.Avail == 0 {
		return k.do("addr %d zero address", a.Index)
	}
	return k.do("addr %d", a.Index)
}
func (k *fakeKernel) SetVringKick(i uint32, fd int) error { return k.do("kick %d %s", i, fdName(fd)) }
func (k *fakeKernel) SetVringCall(i uint32, fd int) error { return k.do("call %d %s", i, fdName(fd)) }
func (k *fakeKernel) SetBackend(i uint32, fd int) error   { return k.do("backend %d %s", i, fdName(fd)) }
func (k *fakeKernel) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.closed++
	return nil
}

func fdName(fd int) string {
	switch {
	case fd == -1:
		return "unbind"
	case fd == tapFD:
		return "tap"
	default:
		return "fd"
	}
}

// fakeTap is the TAP both ways: the userspace device's backend and the
// kernel path's interface.
type fakeTap struct {
	mu         sync.Mutex
	configured []uint64
	hdr        []int
	sent       chan []byte
}

func newFakeTap() *fakeTap { return &fakeTap{sent: make(chan []byte, 16)} }

func (t *fakeTap) Offloads() uint64 { return vnet.OffloadFeatures }
func (t *fakeTap) Configure(f uint64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.configured = append(t.configured, f)
	return nil
}
func (t *fakeTap) SetHeaderSize(n int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.hdr = append(t.hdr, n)
	return nil
}
func (t *fakeTap) Control(f func(fd uintptr)) error { f(tapFD); return nil }
func (t *fakeTap) Send(frame [][]byte) error {
	var b []byte
	for _, s := range frame {
		b = append(b, s...)
	}
	t.sent <- b
	return nil
}
func (t *fakeTap) Run(ctx context.Context, _ vnet.Port) error { <-ctx.Done(); return nil }
func (t *fakeTap) Close() error                               { return nil }

// doorbells are the transport's eventfds; calls nil: no MSI-X.
type doorbells struct {
	kicks, calls []*eventfd.EventFD
}

func (d *doorbells) Kick(q int) *eventfd.EventFD { return d.kicks[q] }
func (d *doorbells) Call(q int) *eventfd.EventFD {
	if d.calls == nil {
		return nil
	}
	return d.calls[q]
}

func newDoorbells(t *testing.T, msix bool) *doorbells {
	t.Helper()
	d := &doorbells{}
	for range 2 {
		k, err := eventfd.New()
		if err != nil {
			t.Fatal(err)
		}
		c, err := eventfd.New()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { k.Close(); c.Close() })
		d.kicks = append(d.kicks, k)
		if msix {
			d.calls = append(d.calls, c)
		}
	}
	return d
}

type rig struct {
	dev    *vhostnet.Device
	kernel *fakeKernel
	tap    *fakeTap
	bells  *doorbells
	tx     *vt.Driver
	va     virtio.Activation
}

const driverFeatures = virtio.FeatureVersion1 | virtio.FeatureEventIdx | vnet.FeatureMrgRxbuf | vnet.FeatureMAC |
	vnet.FeatureCsum | vnet.FeatureGuestCsum | vnet.FeatureStatus

func newRig(t *testing.T, failOn string, msix bool) *rig {
	t.Helper()
	k := &fakeKernel{failOn: failOn, features: kernelFeatures}
	tp := newFakeTap()
	inner, err := vnet.New(tp, vnet.Options{MAC: mac})
	if err != nil {
		t.Fatal(err)
	}
	dev := vhostnet.New(inner, tp, k, nil)
	t.Cleanup(func() { dev.Close() })
	mem := vt.NewMemory(memSize)
	rx, tx := vt.NewDriver(mem, qSize, rxBase), vt.NewDriver(mem, qSize, txBase)
	r := &rig{dev: dev, kernel: k, tap: tp, bells: newDoorbells(t, msix), tx: tx}
	r.va = virtio.Activation{Mem: mem, Features: driverFeatures, IRQ: &vt.IRQ{}, Doorbells: r.bells}
	for _, d := range []*vt.Driver{rx, tx} {
		q, err := virtio.NewQueue(mem, d.Config(), driverFeatures)
		if err != nil {
			t.Fatal(err)
		}
		r.va.Queues = append(r.va.Queues, q)
	}
	return r
}

// post has the guest queue a frame for transmission; call it before
// Activate (the device's goroutines read guest memory from then on).
func (r *rig) post(t *testing.T) {
	t.Helper()
	frame := make([]byte, vnet.HeaderLen+vnet.EthHeaderLen+4)
	copy(frame[vnet.HeaderLen+6:], mac[:])
	if err := r.va.Mem.WriteAt(frame, bufBase); err != nil {
		t.Fatal(err)
	}
	r.tx.AddChain(vt.Buf{Addr: bufBase, Len: uint32(len(frame))})
}

// sent waits for the TAP to get the posted frame from the userspace
// device.
func (r *rig) sent(t *testing.T) {
	t.Helper()
	got := <-r.tap.sent
	if want := vnet.HeaderLen + vnet.EthHeaderLen + 4; len(got) != want {
		t.Fatalf("the TAP got %d bytes, want %d", len(got), want)
	}
}

func TestHandOverAndTakeBack(t *testing.T) {
	r := newRig(t, "", true)
	if got := r.kernel.take(); !slices.Equal(got, []string{"owner", "get-features"}) {
		t.Fatalf("New: %q", got)
	}
	if s := r.dev.State(); s != vhostnet.StateReady {
		t.Fatalf("state %q before the driver, want ready", s)
	}
	if err := r.dev.Activate(r.va); err != nil {
		t.Fatal(err)
	}
	want := []string{
		fmt.Sprintf("features %#x", driverFeatures&kernelFeatures),
		fmt.Sprintf("mem 1 regions gpa 0x0 size %#x", memSize),
		"num 0 256", "base 0 0", "addr 0", "kick 0 fd", "call 0 fd",
		"num 1 256", "base 1 0", "addr 1", "kick 1 fd", "call 1 fd",
		"backend 0 tap", "backend 1 tap",
	}
	if got := r.kernel.take(); !slices.Equal(got, want) {
		t.Fatalf("activation:\n got %q\nwant %q", got, want)
	}
	if s := r.dev.State(); s != vhostnet.StateOn {
		t.Fatalf("state %q, want on", s)
	}
	if !slices.Equal(r.tap.configured, []uint64{driverFeatures}) || !slices.Equal(r.tap.hdr, []int{vnet.HeaderLen}) {
		t.Fatalf("TAP configured %#x, header sizes %v", r.tap.configured, r.tap.hdr)
	}
	// The driver hears of link changes while the kernel serves.
	r.dev.SetLinkUp(false)
	if n := r.va.IRQ.(*vt.IRQ).ConfigCount(); n != 1 {
		t.Errorf("%d configuration interrupts for a link change, want 1", n)
	}
	// A notification reaching the VMM goes to the kernel's kick.
	r.dev.QueueNotify(vnet.TxQueue)
	if !r.bells.kicks[vnet.TxQueue].Pending() {
		t.Fatal("QueueNotify did not signal the kick")
	}
	r.dev.Reset()
	want = []string{"backend 0 unbind", "backend 1 unbind",
		"get-base 0", "kick 0 unbind", "call 0 unbind", "get-base 1", "kick 1 unbind", "call 1 unbind"}
	if got := r.kernel.take(); !slices.Equal(got, want) {
		t.Fatalf("reset:\n got %q\nwant %q", got, want)
	}
	if s := r.dev.State(); s != vhostnet.StateReady {
		t.Fatalf("state %q after reset, want ready", s)
	}
	// The next activation hands over again (no second SET_OWNER).
	if err := r.dev.Activate(r.va); err != nil {
		t.Fatal(err)
	}
	if got := r.kernel.take(); len(got) == 0 || got[0] == "owner" {
		t.Fatalf("second activation: %q", got)
	}
	r.dev.Close()
	if r.kernel.closed != 1 {
		t.Fatalf("kernel closed %d times", r.kernel.closed)
	}
}

func TestFailureFallsBackToUserspace(t *testing.T) {
	for _, step := range []string{"features", "mem", "num 1", "base 0", "addr 1", "kick 0", "call 1", "backend 0", "backend 1"} {
		t.Run(step, func(t *testing.T) {
			r := newRig(t, step, true)
			r.kernel.take()
			r.post(t)
			if err := r.dev.Activate(r.va); err != nil {
				t.Fatalf("Activate: %v (a vhost failure must fall back)", err)
			}
			if s := r.dev.State(); s != vhostnet.StateFallback {
				t.Fatalf("state %q, want fallback", s)
			}
			calls := r.kernel.take()
			// Whatever was attached is detached again, no ring is left
			// with the kernel's kick.
			attached := map[string]bool{}
			for _, c := range calls {
				if strings.HasSuffix(c, "(failed)") {
					continue
				}
				if q, ok := strings.CutPrefix(c, "backend "); ok {
					attached[q[:1]] = !strings.HasSuffix(c, "unbind")
				}
				if q, ok := strings.CutPrefix(c, "kick "); ok && !strings.HasSuffix(c, "unbind") {
					if !slices.Contains(calls, "kick "+q[:1]+" unbind") {
						t.Errorf("ring %s kept its kick: %q", q[:1], calls)
					}
				}
			}
			for q, on := range attached {
				if on {
					t.Errorf("ring %s left on the TAP: %q", q, calls)
				}
			}
			r.sent(t) // the userspace device serves the queues
			r.dev.QueueNotify(vnet.TxQueue)
			if err := r.bells.kicks[vnet.TxQueue].Signal(); err != nil { // relayed
				t.Fatal(err)
			}
			r.dev.Reset()
			if s := r.dev.State(); s != vhostnet.StateFallback {
				t.Fatalf("state %q after reset, want fallback", s)
			}
		})
	}
}

func TestWithoutMSIXServesInUserspace(t *testing.T) {
	r := newRig(t, "", false)
	r.kernel.take()
	r.post(t)
	if err := r.dev.Activate(r.va); err != nil {
		t.Fatal(err)
	}
	if got := r.kernel.take(); len(got) != 0 {
		t.Fatalf("vhost calls without irqfds: %q", got)
	}
	if s := r.dev.State(); s != vhostnet.StateFallback {
		t.Fatalf("state %q, want fallback", s)
	}
	r.sent(t)
}

func TestUnownableKernelIsOff(t *testing.T) {
	for _, step := range []string{"owner", "get-features"} {
		k := &fakeKernel{failOn: step, features: kernelFeatures}
		tp := newFakeTap()
		inner, err := vnet.New(tp, vnet.Options{MAC: mac})
		if err != nil {
			t.Fatal(err)
		}
		dev := vhostnet.New(inner, tp, k, nil)
		if s := dev.State(); s != vhostnet.StateOff || k.closed != 1 {
			t.Errorf("%s failing: state %q, kernel closed %d times", step, s, k.closed)
		}
		if dev.ServedTransportFeatures() != virtio.TransportFeatures || dev.Features() != inner.Features() {
			t.Errorf("%s failing: features changed", step)
		}
		dev.Close()
	}
}

func TestFeaturesFollowTheKernel(t *testing.T) {
	k := &fakeKernel{features: virtio.FeatureVersion1 | virtio.FeatureIndirectDesc}
	tp := newFakeTap()
	inner, err := vnet.New(tp, vnet.Options{MAC: mac})
	if err != nil {
		t.Fatal(err)
	}
	dev := vhostnet.New(inner, tp, k, nil)
	defer dev.Close()
	if dev.Features()&vnet.FeatureMrgRxbuf != 0 {
		t.Error("mergeable buffers offered without the kernel's")
	}
	if got := dev.ServedTransportFeatures(); got != virtio.FeatureVersion1|virtio.FeatureIndirectDesc {
		t.Errorf("transport features %#x", got)
	}
}
