package mem_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"rainforest/vmm/guestmem"
	"rainforest/vmm/virtio"
	"rainforest/vmm/virtio/mem"
	vt "rainforest/vmm/virtio/virtiotest"
)

const (
	blockSize  = 2 << 20
	regionAddr = 1 << 32
	regionSize = 64 * blockSize
	reqBuf     = 0x8000
	respBuf    = 0x9000
)

// fakeBacking records plugged bytes per block and the calls it got; fail
// makes the next calls fail.
type fakeBacking struct {
	plugged map[uint64]bool // offset -> plugged
	calls   []string
	fail    error
}

func newFakeBacking() *fakeBacking { return &fakeBacking{plugged: map[uint64]bool{}} }

func (f *fakeBacking) Plug(off, size uint64) error {
	f.calls = append(f.calls, fmt.Sprintf("plug %#x+%#x", off, size))
	if f.fail != nil {
		return f.fail
	}
	for o := off; o < off+size; o += blockSize {
		if f.plugged[o] {
			panic("plugged twice")
		}
		f.plugged[o] = true
	}
	return nil
}

func (f *fakeBacking) Unplug(off, size uint64) error {
	f.calls = append(f.calls, fmt.Sprintf("unplug %#x+%#x", off, size))
	if f.fail != nil {
		return f.fail
	}
	for o := off; o < off+size; o += blockSize {
		if !f.plugged[o] {
			panic("unplugged twice")
		}
		delete(f.plugged, o)
	}
	return nil
}

type rig struct {
	t   *testing.T
	mem *guestmem.Memory
	drv *vt.Driver
	irq *vt.IRQ
	dev *mem.Device
	b   *fakeBacking
}

func newRig(t *testing.T) *rig {
	t.Helper()
	b := newFakeBacking()
	dev, err := mem.New(mem.Options{Addr: regionAddr, RegionSize: regionSize, BlockSize: blockSize, NodeID: 3, Backing: b})
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, mem: vt.NewMemory(0x10000), irq: &vt.IRQ{}, dev: dev, b: b}
	r.activate()
	return r
}

func (r *rig) activate() {
	r.drv = vt.NewDriver(r.mem, 8, 0x1000)
	_ = r.mem.WriteAt(make([]byte, 0x4000), 0x1000)
	q, err := virtio.NewQueue(r.mem, r.drv.Config(), 0)
	if err != nil {
		r.t.Fatal(err)
	}
	if err := r.dev.Activate(virtio.Activation{Mem: r.mem, Features: mem.FeatureUnpluggedInaccessible, Queues: []*virtio.Queue{q}, IRQ: r.irq}); err != nil {
		r.t.Fatal(err)
	}
}

// do sends one request and returns the response type and state.
func (r *rig) do(typ uint16, addr uint64, nb uint16) (uint16, uint16) {
	r.t.Helper()
	var req [mem.RequestLen]byte
	binary.LittleEndian.PutUint16(req[0:], typ)
	binary.LittleEndian.PutUint64(req[8:], addr)
	binary.LittleEndian.PutUint16(req[16:], nb)
	return r.raw(req[:], mem.ResponseLen)
}

// raw posts req (readable) and a writable buffer of respLen bytes.
func (r *rig) raw(req []byte, respLen uint32) (uint16, uint16) {
	r.t.Helper()
	_ = r.mem.WriteAt(req, reqBuf)
	_ = r.mem.WriteAt(make([]byte, 16), respBuf)
	r.drv.AddChain(vt.Buf{Addr: reqBuf, Len: uint32(len(req))}, vt.Buf{Addr: respBuf, Len: respLen, Write: true})
	r.dev.QueueNotify(0)
	_, n, ok := r.drv.TakeUsed()
	if !ok {
		r.t.Fatal("request not completed")
	}
	if respLen >= mem.ResponseLen && n != mem.ResponseLen {
		r.t.Fatalf("response of %d bytes", n)
	}
	typ, _ := r.mem.Uint16(respBuf)
	st, _ := r.mem.Uint16(respBuf + 8)
	return typ, st
}

func (r *rig) config(off uint64) uint64 {
	b := make([]byte, 8)
	r.dev.ReadConfig(off, b)
	return binary.LittleEndian.Uint64(b)
}

func (r *rig) expect(typ uint16, addr uint64, nb uint16, want uint16) {
	r.t.Helper()
	if got, _ := r.do(typ, addr, nb); got != want {
		r.t.Fatalf("request %d at %#x x%d: response %d, want %d", typ, addr, nb, got, want)
	}
}

func blk(i uint64) uint64 { return regionAddr + i*blockSize }

func TestConfigSpace(t *testing.T) {
	r := newRig(t)
	if err := r.dev.SetRequested(4 * blockSize); err != nil {
		t.Fatal(err)
	}
	r.expect(mem.ReqPlug, blk(1), 2, mem.RespACK)
	want := map[uint64]uint64{0: blockSize, 16: regionAddr, 24: regionSize, 32: regionSize, 40: 2 * blockSize, 48: 4 * blockSize}
	for off, v := range want {
		if got := r.config(off); got != v {
			t.Errorf("config at %d = %#x, want %#x", off, got, v)
		}
	}
	b := make([]byte, 2)
	r.dev.ReadConfig(8, b)
	if binary.LittleEndian.Uint16(b) != 3 {
		t.Errorf("node_id %x", b)
	}
	// Split 32-bit reads, reads past the end, and writes (ignored).
	lo, hi := make([]byte, 4), make([]byte, 4)
	r.dev.ReadConfig(48, lo)
	r.dev.ReadConfig(52, hi)
	if uint64(binary.LittleEndian.Uint32(lo))|uint64(binary.LittleEndian.Uint32(hi))<<32 != 4*blockSize {
		t.Errorf("split read %x %x", lo, hi)
	}
	r.dev.WriteConfig(48, []byte{1, 2, 3, 4, 5, 6, 7, 8})
	if r.config(48) != 4*blockSize {
		t.Error("config write changed requested_size")
	}
	tail := []byte{9, 9, 9, 9, 9, 9, 9, 9}
	r.dev.ReadConfig(52, tail)
	if binary.LittleEndian.Uint32(tail[4:]) != 0 {
		t.Errorf("read past the end: %x", tail)
	}
	r.dev.ReadConfig(1<<40, tail)
	if binary.LittleEndian.Uint64(tail) != 0 {
		t.Errorf("read far past the end: %x", tail)
	}
	if r.dev.Type() != 24 || r.dev.Features() != mem.FeatureUnpluggedInaccessible || r.dev.NumQueues() != 1 {
		t.Errorf("type %d features %#x queues %d", r.dev.Type(), r.dev.Features(), r.dev.NumQueues())
	}
}

func TestPlugUnplugState(t *testing.T) {
	r := newRig(t)
	if err := r.dev.SetRequested(8 * blockSize); err != nil {
		t.Fatal(err)
	}
	r.expect(mem.ReqPlug, blk(0), 3, mem.RespACK)
	r.expect(mem.ReqPlug, blk(10), 1, mem.RespACK)
	if got := r.dev.Plugged(); got != 4*blockSize {
		t.Fatalf("plugged %d", got)
	}
	for _, c := range []struct {
		addr uint64
		nb   uint16
		want uint16
	}{
		{blk(0), 3, mem.StatePlugged},
		{blk(1), 1, mem.StatePlugged},
		{blk(3), 7, mem.StateUnplugged},
		{blk(2), 2, mem.StateMixed},
		{blk(0), 64, mem.StateMixed},
		{blk(11), 53, mem.StateUnplugged},
	} {
		typ, st := r.do(mem.ReqState, c.addr, c.nb)
		if typ != mem.RespACK || st != c.want {
			t.Errorf("state %#x x%d: %d/%d, want ACK/%d", c.addr, c.nb, typ, st, c.want)
		}
	}
	r.expect(mem.ReqUnplug, blk(1), 2, mem.RespACK)
	if got := r.dev.Plugged(); got != 2*blockSize {
		t.Fatalf("plugged %d after unplug", got)
	}
	if r.b.plugged[blockSize] || !r.b.plugged[0] || !r.b.plugged[10*blockSize] {
		t.Fatalf("backing %v", r.b.plugged)
	}
	r.expect(mem.ReqUnplugAll, 0, 0, mem.RespACK)
	if r.dev.Plugged() != 0 || len(r.b.plugged) != 0 {
		t.Fatalf("after unplug all: %d plugged, backing %v", r.dev.Plugged(), r.b.plugged)
	}
	// Unplug-all with nothing plugged is fine too.
	r.expect(mem.ReqUnplugAll, 0, 0, mem.RespACK)
}

func TestUnplugAllRuns(t *testing.T) {
	r := newRig(t)
	if err := r.dev.SetRequested(regionSize); err != nil {
		t.Fatal(err)
	}
	r.expect(mem.ReqPlug, blk(0), 64, mem.RespACK)
	r.expect(mem.ReqUnplug, blk(5), 1, mem.RespACK)
	r.expect(mem.ReqUnplug, blk(62), 1, mem.RespACK)
	r.b.calls = nil
	r.expect(mem.ReqUnplugAll, 0, 0, mem.RespACK)
	want := []string{"unplug 0x0+0xa00000", "unplug 0xc00000+0x7000000", "unplug 0x7e00000+0x200000"}
	if fmt.Sprint(r.b.calls) != fmt.Sprint(want) {
		t.Fatalf("calls %v, want %v", r.b.calls, want)
	}
}

func TestMalformedRequests(t *testing.T) {
	r := newRig(t)
	if err := r.dev.SetRequested(4 * blockSize); err != nil {
		t.Fatal(err)
	}
	r.expect(mem.ReqPlug, blk(2), 1, mem.RespACK)
	for _, c := range []struct {
		name string
		typ  uint16
		addr uint64
		nb   uint16
		want uint16
	}{
		{"plug no blocks", mem.ReqPlug, blk(0), 0, mem.RespError},
		{"plug unaligned", mem.ReqPlug, blk(0) + 4096, 1, mem.RespError},
		{"plug below the region", mem.ReqPlug, regionAddr - blockSize, 1, mem.RespError},
		{"plug past the region", mem.ReqPlug, blk(63), 2, mem.RespError},
		{"plug after the region", mem.ReqPlug, blk(64), 1, mem.RespError},
		{"plug far beyond", mem.ReqPlug, ^uint64(0) &^ (blockSize - 1), 0xFFFF, mem.RespError},
		{"plug max count", mem.ReqPlug, blk(0), 0xFFFF, mem.RespError},
		{"plug plugged", mem.ReqPlug, blk(1), 2, mem.RespError},
		{"plug beyond requested", mem.ReqPlug, blk(3), 4, mem.RespNACK},
		{"unplug unplugged", mem.ReqUnplug, blk(3), 1, mem.RespError},
		{"unplug mixed", mem.ReqUnplug, blk(2), 2, mem.RespError},
		{"unplug no blocks", mem.ReqUnplug, blk(2), 0, mem.RespError},
		{"unplug unaligned", mem.ReqUnplug, blk(2) + 1, 1, mem.RespError},
		{"unplug address 0", mem.ReqUnplug, 0, 1, mem.RespError},
		{"state no blocks", mem.ReqState, blk(0), 0, mem.RespError},
		{"state past the region", mem.ReqState, blk(60), 5, mem.RespError},
		{"state unaligned", mem.ReqState, blk(0) + 512, 1, mem.RespError},
		{"unknown type", 4, blk(0), 1, mem.RespError},
		{"type 0xffff", 0xFFFF, blk(0), 1, mem.RespError},
	} {
		if got, _ := r.do(c.typ, c.addr, c.nb); got != c.want {
			t.Errorf("%s: response %d, want %d", c.name, got, c.want)
		}
	}
	if r.dev.Plugged() != blockSize || len(r.b.plugged) != 1 {
		t.Fatalf("malformed requests changed the state: plugged %d, backing %v", r.dev.Plugged(), r.b.plugged)
	}
	// A short request is an error; a short response buffer gets nothing.
	if got, _ := r.raw(make([]byte, mem.RequestLen-1), mem.ResponseLen); got != mem.RespError {
		t.Errorf("short request: %d", got)
	}
	r.raw(make([]byte, mem.RequestLen), mem.ResponseLen-1)
	if r.dev.Plugged() != blockSize || r.irq.NeedsResetCount() != 0 {
		t.Fatal("short buffers changed the state or broke the device")
	}
}

func TestBackingErrors(t *testing.T) {
	r := newRig(t)
	if err := r.dev.SetRequested(4 * blockSize); err != nil {
		t.Fatal(err)
	}
	r.expect(mem.ReqPlug, blk(0), 2, mem.RespACK)
	r.b.fail = errors.New("no memory")
	r.expect(mem.ReqPlug, blk(4), 1, mem.RespNACK)
	r.expect(mem.ReqUnplug, blk(0), 1, mem.RespBusy)
	r.expect(mem.ReqUnplugAll, 0, 0, mem.RespBusy)
	if r.dev.Plugged() != 2*blockSize {
		t.Fatalf("plugged %d after failures", r.dev.Plugged())
	}
	r.b.fail = nil
	r.expect(mem.ReqUnplug, blk(0), 2, mem.RespACK)
	r.expect(mem.ReqPlug, blk(4), 1, mem.RespACK)
}

func TestSetRequested(t *testing.T) {
	r := newRig(t)
	for _, bad := range []uint64{1, blockSize + 4096, regionSize + blockSize, ^uint64(0)} {
		if err := r.dev.SetRequested(bad); !errors.Is(err, mem.ErrRequested) {
			t.Errorf("SetRequested(%d): %v", bad, err)
		}
	}
	ch := r.dev.Changed()
	if err := r.dev.SetRequested(2 * blockSize); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	default:
		t.Fatal("Changed not closed by SetRequested")
	}
	if r.config(48) != 2*blockSize {
		t.Fatalf("requested_size %d", r.config(48))
	}
	if n := configs(r.irq); n != 1 {
		t.Fatalf("%d config interrupts, want 1", n)
	}
	// The same size again raises nothing.
	if err := r.dev.SetRequested(2 * blockSize); err != nil {
		t.Fatal(err)
	}
	if n := configs(r.irq); n != 1 {
		t.Fatalf("%d config interrupts after an unchanged size, want 1", n)
	}
	// Before activation (after a reset) the size is kept, no interrupt.
	r.dev.Reset()
	if err := r.dev.SetRequested(0); err != nil {
		t.Fatal(err)
	}
	if n := configs(r.irq); n != 1 {
		t.Fatalf("interrupt while reset: %d", n)
	}
	r.activate()
	if err := r.dev.SetRequested(regionSize); err != nil {
		t.Fatal(err)
	}
	if n := configs(r.irq); n != 2 {
		t.Fatalf("%d config interrupts, want 2", n)
	}
	if s := r.dev.State(); s != (mem.State{Addr: regionAddr, RegionSize: regionSize, BlockSize: blockSize, Requested: regionSize}) {
		t.Fatalf("state %+v", s)
	}
}

// configs counts the config-change interrupts irq saw.
func configs(irq *vt.IRQ) int { return irq.ConfigCount() }

func TestSettle(t *testing.T) {
	r := newRig(t)
	if err := r.dev.SetRequested(2 * blockSize); err != nil {
		t.Fatal(err)
	}
	// A guest that plugs only half: a partial result at the deadline.
	r.expect(mem.ReqPlug, blk(0), 1, mem.RespACK)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s, err := r.dev.Settle(ctx)
	if !errors.Is(err, context.Canceled) || s.Plugged != blockSize || s.Requested != 2*blockSize {
		t.Fatalf("Settle: %+v, %v", s, err)
	}
	// Settle returns once the guest catches up.
	done := make(chan mem.State)
	ch := r.dev.Changed()
	go func() {
		s, err := r.dev.Settle(context.Background())
		if err != nil {
			t.Error(err)
		}
		done <- s
	}()
	r.expect(mem.ReqPlug, blk(1), 1, mem.RespACK)
	<-ch
	if s := <-done; s.Plugged != 2*blockSize {
		t.Fatalf("settled at %+v", s)
	}
}

func TestResetKeepsPlugged(t *testing.T) {
	r := newRig(t)
	if err := r.dev.SetRequested(2 * blockSize); err != nil {
		t.Fatal(err)
	}
	r.expect(mem.ReqPlug, blk(0), 2, mem.RespACK)
	r.dev.Reset()
	r.dev.QueueNotify(0) // no queue: nothing happens
	r.activate()
	if typ, st := r.do(mem.ReqState, blk(0), 2); typ != mem.RespACK || st != mem.StatePlugged {
		t.Fatalf("after reset: %d/%d", typ, st)
	}
	r.expect(mem.ReqUnplugAll, 0, 0, mem.RespACK)
}

func TestMalformedQueue(t *testing.T) {
	r := newRig(t)
	r.drv.SetAvailIdx(100) // runs ahead of the ring
	r.dev.QueueNotify(0)
	if r.irq.NeedsResetCount() != 1 {
		t.Fatal("malformed ring did not ask for a reset")
	}
	r.dev.QueueNotify(0) // the queue is gone; no second reset
	if r.irq.NeedsResetCount() != 1 {
		t.Fatal("second reset")
	}
}

func TestNewRefuses(t *testing.T) {
	b := newFakeBacking()
	for _, o := range []mem.Options{
		{Addr: regionAddr, RegionSize: regionSize, BlockSize: blockSize},
		{Addr: regionAddr, RegionSize: regionSize, BlockSize: 3 << 20, Backing: b},
		{Addr: regionAddr, RegionSize: regionSize, BlockSize: 2048, Backing: b},
		{Addr: regionAddr + 4096, RegionSize: regionSize, BlockSize: blockSize, Backing: b},
		{Addr: regionAddr, RegionSize: 0, BlockSize: blockSize, Backing: b},
		{Addr: regionAddr, RegionSize: blockSize + 4096, BlockSize: blockSize, Backing: b},
		{Addr: regionAddr, RegionSize: (mem.MaxBlocks + 1) * 4096, BlockSize: 4096, Backing: b},
		{Addr: ^uint64(0) &^ (blockSize - 1), RegionSize: 2 * blockSize, BlockSize: blockSize, Backing: b},
	} {
		if _, err := mem.New(o); !errors.Is(err, mem.ErrOptions) {
			t.Errorf("New(%+v): %v", o, err)
		}
	}
}

// A driver that does not accept UNPLUGGED_INACCESSIBLE gets no device: it
// might read unplugged memory, which the VMM makes inaccessible.
func TestActivateNeedsUnpluggedInaccessible(t *testing.T) {
	r := newRig(t)
	q, err := virtio.NewQueue(r.mem, r.drv.Config(), 0)
	if err != nil {
		t.Fatal(err)
	}
	err = r.dev.Activate(virtio.Activation{Mem: r.mem, Queues: []*virtio.Queue{q}, IRQ: r.irq})
	if !errors.Is(err, mem.ErrInaccessibleRequired) {
		t.Fatalf("activate without UNPLUGGED_INACCESSIBLE: %v, want ErrInaccessibleRequired", err)
	}
}

func TestAccessible(t *testing.T) {
	r := newRig(t)
	if r.dev.Accessible(0, 1) {
		t.Fatal("nothing plugged, yet block 0 is")
	}
	if err := r.dev.SetRequested(2 * blockSize); err != nil {
		t.Fatal(err)
	}
	if typ, _ := r.do(mem.ReqPlug, regionAddr+blockSize, 2); typ != mem.RespACK {
		t.Fatalf("plug blocks 1-2: %d", typ)
	}
	for _, c := range []struct {
		off, n uint64
		want   bool
	}{
		{blockSize, 2 * blockSize, true},
		{blockSize, 0, true},
		{2*blockSize + 5, 10, true},
		{blockSize - 1, 2, false},             // starts in unplugged block 0
		{2 * blockSize, blockSize + 1, false}, // runs into block 3
		{regionSize, 1, false},
		{regionSize - 1, 2, false},
		{1<<64 - 1, 1, false},
	} {
		if got := r.dev.Accessible(c.off, c.n); got != c.want {
			t.Errorf("Accessible(%#x, %#x) = %v, want %v", c.off, c.n, got, c.want)
		}
	}
}
