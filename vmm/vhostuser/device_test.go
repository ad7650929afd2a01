package vhostuser_test

import (
	"bytes"
	"errors"
	"os"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"rainforest/vmm/eventfd"
	"rainforest/vmm/guestmem"
	"rainforest/vmm/vhostuser"
	vut "rainforest/vmm/vhostuser/vhostusertest"
	"rainforest/vmm/virtio"
	vt "rainforest/vmm/virtio/virtiotest"
)

// irq records a device's interrupts on channels, so that a test can wait
// for the ones raised from another goroutine.
type irq struct {
	used  chan int
	reset chan struct{}
}

func newIRQ() *irq { return &irq{used: make(chan int, 64), reset: make(chan struct{}, 64)} }

func (i *irq) UsedBuffer(q int) error { i.used <- q; return nil }
func (i *irq) ConfigChanged() error   { return nil }
func (i *irq) NeedsReset()            { i.reset <- struct{}{} }

// doorbells are a transport's eventfds; a nil call means "relay".
type doorbells struct {
	kicks, calls []*eventfd.EventFD
}

func (d *doorbells) Kick(q int) *eventfd.EventFD { return d.kicks[q] }
func (d *doorbells) Call(q int) *eventfd.EventFD { return d.calls[q] }

const highGPA = 1 << 32

// memfdMemory is guest memory on one memfd of 2 MiB: its first MiB at GPA
// 0, its second at highGPA (file offset 1 MiB), as the VMM lays out RAM
// below and above the PCI hole.
func memfdMemory(t *testing.T) (*guestmem.Memory, *os.File) {
	t.Helper()
	fd, err := unix.MemfdCreate("guest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "guest")
	const size = 2 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	data, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Munmap(data)
		f.Close()
	})
	mem, err := guestmem.New(
		guestmem.Region{GPA: 0, Data: data[:size/2], File: f},
		guestmem.Region{GPA: highGPA, Data: data[size/2:], File: f, Offset: size / 2},
	)
	if err != nil {
		t.Fatal(err)
	}
	return mem, f
}

func newDevice(t *testing.T, cfg vut.Config, dc vhostuser.DeviceConfig) (*vut.BackEnd, *vhostuser.Device) {
	t.Helper()
	b, err := vut.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	d, err := vhostuser.NewDevice(t.Context(), vhostuser.New(b.FrontEnd(), vhostuser.Options{}), dc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return b, d
}

var fullBackEnd = vut.Config{
	Features: backEndFeatures | 1<<0 | 1<<5,
	Protocol: vhostuser.ProtocolMQ | vhostuser.ProtocolReplyAck | vhostuser.ProtocolResetDevice,
	Queues:   2,
}

func eventFDs(t *testing.T, n int) []*eventfd.EventFD {
	t.Helper()
	var out []*eventfd.EventFD
	for range n {
		ev, err := eventfd.New()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ev.Close() })
		out = append(out, ev)
	}
	return out
}

// translate turns a front-end address into a GPA through the table.
func translate(t *testing.T, table []vhostuser.MemoryRegion, va uint64) uint64 {
	t.Helper()
	for _, r := range table {
		if va >= r.UserAddr && va < r.UserAddr+r.Size {
			return r.GPA + va - r.UserAddr
		}
	}
	t.Fatalf("address %#x is in no region of the memory table", va)
	return 0
}

func TestDeviceActivation(t *testing.T) {
	b, d := newDevice(t, fullBackEnd, vhostuser.DeviceConfig{Type: virtio.TypeFS, Queues: 2, QueueSize: 64, Features: 1 << 5})
	if got := d.Features(); got != 1<<5 {
		t.Fatalf("device features %#x, want only the allowed bit 5", got)
	}
	if got := d.ServedTransportFeatures(); got != virtio.TransportFeatures {
		t.Fatalf("transport features %#x", got)
	}
	handshake := len(b.Received())

	mem, _ := memfdMemory(t)
	drivers := []*vt.Driver{vt.NewDriver(mem, 64, 0x10000), vt.NewDriver(mem, 32, highGPA+0x20000)}
	features := virtio.FeatureVersion1 | virtio.FeatureEventIdx | 1<<5
	var queues []*virtio.Queue
	for _, drv := range drivers {
		q, err := virtio.NewQueue(mem, drv.Config(), features)
		if err != nil {
			t.Fatal(err)
		}
		queues = append(queues, q)
	}
	bells := &doorbells{kicks: eventFDs(t, 2), calls: []*eventfd.EventFD{eventFDs(t, 1)[0], nil}}
	in := newIRQ()
	if err := d.Activate(virtio.Activation{Mem: mem, Features: features, Queues: queues, IRQ: in, Doorbells: bells}); err != nil {
		t.Fatal(err)
	}
	msgs := b.Received()[handshake:]
	perQueue := []vhostuser.Request{vhostuser.SetVringNum, vhostuser.SetVringBase, vhostuser.SetVringAddr,
		vhostuser.SetVringCall, vhostuser.SetVringErr, vhostuser.SetVringKick, vhostuser.SetVringEnable}
	want := append([]vhostuser.Request{vhostuser.SetFeatures, vhostuser.SetMemTable}, append(perQueue, perQueue...)...)
	var got []vhostuser.Request
	for _, m := range msgs {
		got = append(got, m.Request)
		if m.Flags&vhostuser.FlagNeedReply == 0 {
			t.Errorf("%v without need-reply under REPLY_ACK", m.Request)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("activation sent %v, want %v", got, want)
	}
	if v, _ := vhostuser.ParseU64(msgs[0].Payload); v != features|vhostuser.FeatureProtocolFeatures {
		t.Fatalf("SET_FEATURES %#x, want %#x", v, features|vhostuser.FeatureProtocolFeatures)
	}

	// The memory table: both regions, each with a descriptor of the
	// guest's memfd at its offset.
	table, err := vhostuser.ParseMemoryTable(msgs[1].Payload)
	if err != nil {
		t.Fatal(err)
	}
	if len(table) != 2 || len(msgs[1].FDs) != 2 {
		t.Fatalf("memory table %+v with %d descriptors", table, len(msgs[1].FDs))
	}
	for i, r := range mem.Regions() {
		tr := table[i]
		if tr.GPA != r.GPA || tr.Size != uint64(len(r.Data)) || tr.MmapOffset != r.Offset {
			t.Fatalf("region %d: %+v, guest region at %#x of %#x bytes, offset %#x", i, tr, r.GPA, len(r.Data), r.Offset)
		}
		copy(r.Data[0x100:], []byte("region-marker"))
		r.Data[0x100+13] = byte('0' + i)
		back, err := unix.Mmap(msgs[1].FDs[i], int64(tr.MmapOffset), int(tr.Size), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			t.Fatalf("map region %d from its descriptor: %v", i, err)
		}
		same := bytes.Equal(back[0x100:0x100+14], r.Data[0x100:0x100+14])
		unix.Munmap(back)
		if !same {
			t.Fatalf("region %d: the descriptor does not map the guest's memory", i)
		}
	}

	// Each queue: size, base 0, ring addresses that the table turns
	// into the driver's GPAs, and its descriptors.
	for q, drv := range drivers {
		m := msgs[2+7*q:]
		if s, _ := vhostuser.ParseVringState(m[0].Payload); s != (vhostuser.VringState{Index: uint32(q), Num: uint32(drv.Size)}) {
			t.Fatalf("queue %d: SET_VRING_NUM %+v", q, s)
		}
		if s, _ := vhostuser.ParseVringState(m[1].Payload); s != (vhostuser.VringState{Index: uint32(q)}) {
			t.Fatalf("queue %d: SET_VRING_BASE %+v", q, s)
		}
		a, err := vhostuser.ParseVringAddr(m[2].Payload)
		if err != nil || a.Index != uint32(q) {
			t.Fatalf("queue %d: SET_VRING_ADDR %+v %v", q, a, err)
		}
		if translate(t, table, a.Desc) != drv.Desc || translate(t, table, a.Avail) != drv.Avail || translate(t, table, a.Used) != drv.Used {
			t.Fatalf("queue %d: ring addresses %+v translate elsewhere than %#x %#x %#x", q, a, drv.Desc, drv.Avail, drv.Used)
		}
		for _, k := range []int{3, 4, 5} {
			idx, hasFD, err := vhostuser.ParseVringFile(m[k].Payload)
			if err != nil || idx != uint32(q) || !hasFD || len(m[k].FDs) != 1 {
				t.Fatalf("queue %d: %v index %d fd %v (%d descriptors) %v", q, m[k].Request, idx, hasFD, len(m[k].FDs), err)
			}
		}
		if s, _ := vhostuser.ParseVringState(m[6].Payload); s != (vhostuser.VringState{Index: uint32(q), Num: 1}) {
			t.Fatalf("queue %d: SET_VRING_ENABLE %+v", q, s)
		}
	}
	callFD := func(q int) int { return msgs[2+7*q+3].FDs[0] }
	errFD := func(q int) int { return msgs[2+7*q+4].FDs[0] }
	kickFD := func(q int) int { return msgs[2+7*q+5].FDs[0] }

	// The kicks are the transport's eventfds: what the back end waits on
	// is what KVM signals.
	for q := range 2 {
		if err := vut.Signal(kickFD(q)); err != nil {
			t.Fatal(err)
		}
		if !bells.kicks[q].Pending() {
			t.Fatalf("queue %d: the back end's kick is not the transport's eventfd", q)
		}
		bells.kicks[q].Drain()
	}
	// A notification that reached the VMM goes to the same kick.
	d.QueueNotify(1)
	if !bells.kicks[1].Pending() {
		t.Fatal("QueueNotify did not kick the back end")
	}
	// Queue 0's call is the transport's (the irqfd): nothing relays it.
	if err := vut.Signal(callFD(0)); err != nil {
		t.Fatal(err)
	}
	if !bells.calls[0].Pending() {
		t.Fatal("queue 0's call is not the transport's eventfd")
	}
	// Queue 1 has no vector: the device relays its calls.
	if err := vut.Signal(callFD(1)); err != nil {
		t.Fatal(err)
	}
	if q := <-in.used; q != 1 {
		t.Fatalf("relayed an interrupt for queue %d, want 1", q)
	}
	// A ring error asks the driver for a reset.
	if err := vut.Signal(errFD(0)); err != nil {
		t.Fatal(err)
	}
	<-in.reset

	// Reset: each queue disabled and stopped, then the back end reset.
	before := len(b.Received())
	d.Reset()
	var stop []vhostuser.Request
	for _, m := range b.Received()[before:] {
		stop = append(stop, m.Request)
	}
	wantStop := []vhostuser.Request{vhostuser.SetVringEnable, vhostuser.GetVringBase, vhostuser.SetVringEnable, vhostuser.GetVringBase, vhostuser.ResetDevice}
	if !slices.Equal(stop, wantStop) {
		t.Fatalf("reset sent %v, want %v", stop, wantStop)
	}
	// After the reset the relay is gone and the device starts again.
	d.QueueNotify(0)
	if bells.kicks[0].Pending() {
		t.Fatal("a reset device kicked the back end")
	}
	if err := d.Activate(virtio.Activation{Mem: mem, Features: features, Queues: queues[:1], IRQ: in, Doorbells: bells}); err != nil {
		t.Fatalf("activate again: %v", err)
	}
	d.Reset()
}

func TestDeviceWithoutDoorbellsOrProtocolFeatures(t *testing.T) {
	b, d := newDevice(t, vut.Config{Features: virtio.FeatureVersion1}, vhostuser.DeviceConfig{Type: virtio.TypeFS, Queues: 1, QueueSize: 16})
	if d.ServedTransportFeatures() != virtio.FeatureVersion1 {
		t.Fatalf("transport features %#x", d.ServedTransportFeatures())
	}
	mem, _ := memfdMemory(t)
	drv := vt.NewDriver(mem, 16, 0x4000)
	q, err := virtio.NewQueue(mem, drv.Config(), virtio.FeatureVersion1)
	if err != nil {
		t.Fatal(err)
	}
	in := newIRQ()
	if err := d.Activate(virtio.Activation{Mem: mem, Features: virtio.FeatureVersion1, Queues: []*virtio.Queue{q}, IRQ: in}); err != nil {
		t.Fatal(err)
	}
	// GET_FEATURES, SET_OWNER, SET_FEATURES, SET_MEM_TABLE, then the
	// queue: no SET_VRING_ENABLE (rings start enabled).
	msgs := b.WaitFor(10)
	var got []vhostuser.Request
	for _, m := range msgs {
		got = append(got, m.Request)
	}
	want := []vhostuser.Request{vhostuser.GetFeatures, vhostuser.SetOwner, vhostuser.SetFeatures, vhostuser.SetMemTable,
		vhostuser.SetVringNum, vhostuser.SetVringBase, vhostuser.SetVringAddr, vhostuser.SetVringCall, vhostuser.SetVringErr, vhostuser.SetVringKick}
	if !slices.Equal(got, want) {
		t.Fatalf("sent %v, want %v", got, want)
	}
	if v, _ := vhostuser.ParseU64(msgs[2].Payload); v != virtio.FeatureVersion1 {
		t.Fatalf("SET_FEATURES %#x", v)
	}
	// The device's own kick and relayed call.
	d.QueueNotify(0)
	kick, err := eventfdOf(msgs[9].FDs[0])
	if err != nil {
		t.Fatal(err)
	}
	if !kick.Pending() {
		t.Fatal("QueueNotify did not signal the kick")
	}
	if err := vut.Signal(msgs[7].FDs[0]); err != nil {
		t.Fatal(err)
	}
	if q := <-in.used; q != 0 {
		t.Fatalf("relayed queue %d", q)
	}
	d.Reset()
	if got := b.WaitFor(11); got[len(got)-1].Request != vhostuser.GetVringBase {
		t.Fatalf("reset sent %v", got[len(got)-1].Request)
	}
}

func eventfdOf(fd int) (*eventfd.EventFD, error) { return eventfd.Borrow(fd), nil }

func TestBackEndDeath(t *testing.T) {
	b, d := newDevice(t, fullBackEnd, vhostuser.DeviceConfig{Type: virtio.TypeFS, Queues: 2, QueueSize: 16})
	mem, _ := memfdMemory(t)
	drv := vt.NewDriver(mem, 16, 0x4000)
	q, err := virtio.NewQueue(mem, drv.Config(), virtio.FeatureVersion1)
	if err != nil {
		t.Fatal(err)
	}
	in := newIRQ()
	if err := d.Activate(virtio.Activation{Mem: mem, Features: virtio.FeatureVersion1, Queues: []*virtio.Queue{q, nil}, IRQ: in}); err != nil {
		t.Fatal(err)
	}
	b.HangUp()
	<-in.reset // the driver is asked for a reset
	<-d.Done()
	if !errors.Is(d.Err(), vhostuser.ErrClosed) {
		t.Fatalf("Err %v, want ErrClosed", d.Err())
	}
	d.QueueNotify(0) // nothing to kick; must not block or panic
	d.Reset()        // nothing to stop
	if err := d.Activate(virtio.Activation{Mem: mem, Features: virtio.FeatureVersion1, Queues: []*virtio.Queue{q, nil}, IRQ: in}); !errors.Is(err, vhostuser.ErrClosed) {
		t.Fatalf("activation after the back end died: %v", err)
	}
}

func TestBackEndDeathWhileInactive(t *testing.T) {
	b, d := newDevice(t, fullBackEnd, vhostuser.DeviceConfig{Type: virtio.TypeFS, Queues: 1, QueueSize: 16})
	b.HangUp()
	<-d.Done()
	if d.Err() == nil {
		t.Fatal("no error after the back end hung up")
	}
}

func TestActivationRefused(t *testing.T) {
	cfg := fullBackEnd
	cfg.Refuse = func(r vhostuser.Request) uint64 {
		if r == vhostuser.SetVringAddr {
			return 1
		}
		return 0
	}
	b, d := newDevice(t, cfg, vhostuser.DeviceConfig{Type: virtio.TypeFS, Queues: 2, QueueSize: 16})
	mem, _ := memfdMemory(t)
	drv := vt.NewDriver(mem, 16, 0x4000)
	q, err := virtio.NewQueue(mem, drv.Config(), virtio.FeatureVersion1)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Activate(virtio.Activation{Mem: mem, Features: virtio.FeatureVersion1, Queues: []*virtio.Queue{q, nil}, IRQ: newIRQ()}); !errors.Is(err, vhostuser.ErrRefused) {
		t.Fatalf("got %v, want ErrRefused", err)
	}
	// Nothing was started (the kick was never sent), so nothing stops;
	// the device can be activated again.
	for _, m := range b.Received() {
		if m.Request == vhostuser.SetVringKick || m.Request == vhostuser.GetVringBase {
			t.Fatalf("%v after a refused SET_VRING_ADDR", m.Request)
		}
	}
}

func TestMemoryWithoutFileIsRefused(t *testing.T) {
	_, d := newDevice(t, fullBackEnd, vhostuser.DeviceConfig{Type: virtio.TypeFS, Queues: 1, QueueSize: 16})
	mem := vt.NewMemory(1 << 20)
	if err := d.Activate(virtio.Activation{Mem: mem, Features: virtio.FeatureVersion1, Queues: []*virtio.Queue{nil}, IRQ: newIRQ()}); err == nil {
		t.Fatal("guest memory without a file was shared")
	}
}

func TestNewDeviceRefusesBackEnds(t *testing.T) {
	for name, c := range map[string]struct {
		cfg vut.Config
		dc  vhostuser.DeviceConfig
	}{
		"no VERSION_1":    {vut.Config{Features: virtio.FeatureIndirectDesc}, vhostuser.DeviceConfig{Queues: 1, QueueSize: 16}},
		"too few queues":  {fullBackEnd, vhostuser.DeviceConfig{Queues: 3, QueueSize: 16}},
		"bad queue size":  {fullBackEnd, vhostuser.DeviceConfig{Queues: 1, QueueSize: 24}},
		"no queues":       {fullBackEnd, vhostuser.DeviceConfig{Queues: 0, QueueSize: 16}},
		"handshake fails": {vut.Config{Misbehave: func(vhostuser.Request) ([]byte, bool) { return nil, true }}, vhostuser.DeviceConfig{Queues: 1, QueueSize: 16}},
	} {
		t.Run(name, func(t *testing.T) {
			b, err := vut.New(c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if _, err := vhostuser.NewDevice(t.Context(), vhostuser.New(b.FrontEnd(), vhostuser.Options{}), c.dc); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}
