package virtio_test

import (
	"bytes"
	"errors"
	"testing"

	"rainforest/vmm/guestmem"
	"rainforest/vmm/virtio"
	vt "rainforest/vmm/virtio/virtiotest"
)

const memSize = 1 << 20

func newQueue(t testing.TB, size uint16, features uint64) (*vt.Driver, *virtio.Queue) {
	t.Helper()
	mem := vt.NewMemory(memSize)
	d := vt.NewDriver(mem, size, 0x1000)
	q, err := virtio.NewQueue(mem, d.Config(), features)
	if err != nil {
		t.Fatal(err)
	}
	return d, q
}

func TestNewQueueValidation(t *testing.T) {
	mem := vt.NewMemory(memSize)
	good := vt.NewDriver(mem, 8, 0x1000).Config()
	bad := []virtio.QueueConfig{}
	for _, size := range []uint16{0, 3, 512} {
		c := good
		c.Size = size
		bad = append(bad, c)
	}
	c := good
	c.Desc = 0x1008
	bad = append(bad, c)
	c = good
	c.Driver = 0x3001
	bad = append(bad, c)
	c = good
	c.Device = memSize - 8
	bad = append(bad, c)
	c = good
	c.Desc = 1 << 40
	bad = append(bad, c)
	for _, c := range bad {
		if _, err := virtio.NewQueue(mem, c, 0); !errors.Is(err, virtio.ErrMalformed) {
			t.Errorf("NewQueue(%+v) = %v", c, err)
		}
	}
}

func TestQueueDirectAndChained(t *testing.T) {
	d, q := newQueue(t, 8, 0)
	mem := d.Mem
	if _, ok, err := q.Pop(); ok || err != nil {
		t.Fatalf("empty Pop = %v %v", ok, err)
	}
	_ = mem.WriteAt([]byte("hello"), 0x10000)
	h1 := d.AddChain(vt.Buf{Addr: 0x10000, Len: 5})
	h2 := d.AddChain(vt.Buf{Addr: 0x10000, Len: 2}, vt.Buf{Addr: 0x10002, Len: 3},
		vt.Buf{Addr: 0x20000, Len: 100, Write: true}, vt.Buf{Addr: 0x20100, Len: 28, Write: true})
	c, ok, err := q.Pop()
	if err != nil || !ok || c.Head != h1 || len(c.Readable) != 1 || string(c.Readable[0]) != "hello" || len(c.Writable) != 0 {
		t.Fatalf("Pop 1 = %+v %v %v", c, ok, err)
	}
	c2, ok, err := q.Pop()
	if err != nil || !ok || c2.Head != h2 || len(c2.Readable) != 2 || len(c2.Writable) != 2 ||
		c2.ReadableLen() != 5 || c2.WritableLen() != 128 {
		t.Fatalf("Pop 2 = %+v %v %v", c2, ok, err)
	}
	if n := virtio.WriteBuffers(c2.Writable, 98, []byte("abcd")); n != 4 {
		t.Fatalf("WriteBuffers = %d", n)
	}
	got, _ := mem.Slice(0x20062, 2)
	got2, _ := mem.Slice(0x20100, 2)
	if string(got) != "ab" || string(got2) != "cd" {
		t.Fatalf("scatter write = %q %q", got, got2)
	}
	var p [4]byte
	if n := virtio.ReadBuffers(c2.Readable, 1, p[:]); n != 4 || string(p[:]) != "ello" {
		t.Fatalf("ReadBuffers = %d %q", n, p)
	}
	head, tail := virtio.SplitBuffers(c2.Readable, 3)
	if len(head) != 2 || len(tail) != 1 || string(tail[0]) != "lo" {
		t.Fatalf("Split = %q %q", head, tail)
	}
	if _, ok, _ := q.Pop(); ok {
		t.Fatal("third chain")
	}
	if err := q.Push(h1, 0); err != nil {
		t.Fatal(err)
	}
	if err := q.Push(h2, 4); err != nil {
		t.Fatal(err)
	}
	if id, n, ok := d.TakeUsed(); !ok || id != h1 || n != 0 {
		t.Fatalf("used 1 = %d %d %v", id, n, ok)
	}
	if id, n, ok := d.TakeUsed(); !ok || id != h2 || n != 4 {
		t.Fatalf("used 2 = %d %d %v", id, n, ok)
	}
	if !q.NeedsNotify() {
		t.Fatal("NeedsNotify after push")
	}
	if q.NeedsNotify() {
		t.Fatal("NeedsNotify with nothing new")
	}
	d.SetAvailFlags(1) // VRING_AVAIL_F_NO_INTERRUPT
	d.AddChain(vt.Buf{Addr: 0x10000, Len: 1})
	c, _, _ = q.Pop()
	_ = q.Push(c.Head, 0)
	if q.NeedsNotify() {
		t.Fatal("NeedsNotify despite NO_INTERRUPT")
	}
	if err := q.Push(8, 0); !errors.Is(err, virtio.ErrMalformed) {
		t.Fatalf("Push(bad head) = %v", err)
	}
	// Ring wrap-around.
	for i := 0; i < 20; i++ {
		h := d.AddChain(vt.Buf{Addr: 0x10000, Len: 1})
		c, ok, err := q.Pop()
		if !ok || err != nil || c.Head != h {
			t.Fatalf("wrap %d: %+v %v %v", i, c, ok, err)
		}
		_ = q.Push(c.Head, 1)
	}
}

func TestQueueIndirect(t *testing.T) {
	d, q := newQueue(t, 4, virtio.FeatureIndirectDesc)
	_ = d.Mem.WriteAt([]byte("hdr!"), 0x10000)
	h := d.AddIndirect(0x30000, vt.Buf{Addr: 0x10000, Len: 4}, vt.Buf{Addr: 0x11000, Len: 512, Write: true},
		vt.Buf{Addr: 0x12000, Len: 1, Write: true})
	c, ok, err := q.Pop()
	if err != nil || !ok || c.Head != h || len(c.Readable) != 1 || !bytes.Equal(c.Readable[0], []byte("hdr!")) ||
		len(c.Writable) != 2 || c.WritableLen() != 513 {
		t.Fatalf("indirect Pop = %+v %v %v", c, ok, err)
	}
	// A full queue's worth of buffers fits in one indirect table.
	bufs := make([]vt.Buf, 4)
	for i := range bufs {
		bufs[i] = vt.Buf{Addr: 0x10000, Len: 1}
	}
	d.AddIndirect(0x31000, bufs...)
	if c, ok, err := q.Pop(); err != nil || !ok || len(c.Readable) != 4 {
		t.Fatalf("full indirect Pop = %+v %v %v", c, ok, err)
	}
	// Without the feature, INDIRECT is malformed.
	d2, q2 := newQueue(t, 4, 0)
	d2.AddIndirect(0x30000, vt.Buf{Addr: 0x10000, Len: 4})
	if _, _, err := q2.Pop(); !errors.Is(err, virtio.ErrMalformed) {
		t.Fatalf("indirect without feature = %v", err)
	}
}

// TestQueueMalicious feeds chains a hostile guest could build; each must
// return ErrMalformed, then ErrBroken, never panic or hang.
func TestQueueMalicious(t *testing.T) {
	const F = virtio.FeatureIndirectDesc
	type setup func(d *vt.Driver)
	cases := map[string]setup{
		"head out of range": func(d *vt.Driver) { d.Publish(d.Size) },
		"self loop": func(d *vt.Driver) {
			d.SetDesc(d.Desc, 0, 0x10000, 4, virtio.DescFlagNext, 0)
			d.Publish(0)
		},
		"two-cycle": func(d *vt.Driver) {
			d.SetDesc(d.Desc, 0, 0x10000, 4, virtio.DescFlagNext, 1)
			d.SetDesc(d.Desc, 1, 0x10000, 4, virtio.DescFlagNext, 0)
			d.Publish(0)
		},
		"next out of range": func(d *vt.Driver) {
			d.SetDesc(d.Desc, 0, 0x10000, 4, virtio.DescFlagNext, 0xFFFF)
			d.Publish(0)
		},
		"buffer outside memory": func(d *vt.Driver) {
			d.SetDesc(d.Desc, 0, memSize-2, 4, 0, 0)
			d.Publish(0)
		},
		"huge length": func(d *vt.Driver) {
			d.SetDesc(d.Desc, 0, 0x10000, 0xFFFF_FFFF, 0, 0)
			d.Publish(0)
		},
		"address wraps": func(d *vt.Driver) {
			d.SetDesc(d.Desc, 0, 0xFFFF_FFFF_FFFF_FFF0, 0x100, 0, 0)
			d.Publish(0)
		},
		"readable after writable": func(d *vt.Driver) {
			d.AddChain(vt.Buf{Addr: 0x10000, Len: 4, Write: true}, vt.Buf{Addr: 0x10000, Len: 4})
		},
		"avail idx far ahead": func(d *vt.Driver) { d.SetAvailIdx(d.Size + 1) },
		"indirect table outside memory": func(d *vt.Driver) {
			d.SetDesc(d.Desc, 0, memSize-16, 32, virtio.DescFlagIndirect, 0)
			d.Publish(0)
		},
		"indirect length not multiple of 16": func(d *vt.Driver) {
			d.SetDesc(d.Desc, 0, 0x30000, 24, virtio.DescFlagIndirect, 0)
			d.Publish(0)
		},
		"indirect zero length": func(d *vt.Driver) {
			d.SetDesc(d.Desc, 0, 0x30000, 0, virtio.DescFlagIndirect, 0)
			d.Publish(0)
		},
		"indirect table too long": func(d *vt.Driver) {
			d.SetDesc(d.Desc, 0, 0x30000, 0xFFFF_FFF0, virtio.DescFlagIndirect, 0)
			d.Publish(0)
		},
		"indirect with next": func(d *vt.Driver) {
			d.SetDesc(d.Desc, 0, 0x30000, 16, virtio.DescFlagIndirect|virtio.DescFlagNext, 1)
			d.Publish(0)
		},
		"nested indirect": func(d *vt.Driver) {
			d.SetDesc(0x30000, 0, 0x30000, 16, virtio.DescFlagIndirect, 0)
			d.SetDesc(d.Desc, 0, 0x30000, 16, virtio.DescFlagIndirect, 0)
			d.Publish(0)
		},
		"indirect loop": func(d *vt.Driver) {
			d.SetDesc(0x30000, 0, 0x10000, 1, virtio.DescFlagNext, 1)
			d.SetDesc(0x30000, 1, 0x10000, 1, virtio.DescFlagNext, 0)
			d.SetDesc(d.Desc, 0, 0x30000, 32, virtio.DescFlagIndirect, 0)
			d.Publish(0)
		},
		"indirect next out of table": func(d *vt.Driver) {
			d.SetDesc(0x30000, 0, 0x10000, 1, virtio.DescFlagNext, 2)
			d.SetDesc(d.Desc, 0, 0x30000, 32, virtio.DescFlagIndirect, 0)
			d.Publish(0)
		},
		"chain longer than queue": func(d *vt.Driver) {
			for i := uint16(0); i < d.Size; i++ {
				d.SetDesc(d.Desc, i, 0x10000, 1, virtio.DescFlagNext, i+1)
			}
			d.SetDesc(d.Desc, d.Size-1, 0x30000, 32, virtio.DescFlagIndirect, 0)
			d.SetDesc(0x30000, 0, 0x10000, 1, virtio.DescFlagNext, 1)
			d.SetDesc(0x30000, 1, 0x10000, 1, 0, 0)
			d.Publish(0)
		},
	}
	for name, set := range cases {
		t.Run(name, func(t *testing.T) {
			d, q := newQueue(t, 4, F)
			set(d)
			if _, ok, err := q.Pop(); ok || !errors.Is(err, virtio.ErrMalformed) {
				t.Fatalf("Pop = %v %v", ok, err)
			}
			if _, _, err := q.Pop(); !errors.Is(err, virtio.ErrBroken) {
				t.Fatalf("second Pop = %v", err)
			}
			if err := q.Push(0, 0); !errors.Is(err, virtio.ErrBroken) {
				t.Fatalf("Push on broken queue = %v", err)
			}
		})
	}
}

func TestQueueEventIdx(t *testing.T) {
	d, q := newQueue(t, 8, virtio.FeatureEventIdx)
	// Empty Pop asks for a notification at the current index.
	if _, ok, _ := q.Pop(); ok {
		t.Fatal("chain in empty queue")
	}
	if d.AvailEvent() != 0 {
		t.Fatalf("avail_event = %d", d.AvailEvent())
	}
	for i := 0; i < 3; i++ {
		d.AddChain(vt.Buf{Addr: 0x10000, Len: 1})
	}
	d.SetUsedEvent(1) // interrupt when used idx passes 1
	for i := 0; i < 3; i++ {
		c, ok, err := q.Pop()
		if !ok || err != nil {
			t.Fatal(ok, err)
		}
		_ = q.Push(c.Head, 0)
		// After the first push used idx = 1: event 1 not yet crossed.
		want := i == 1
		if got := q.NeedsNotify(); got != want {
			t.Fatalf("push %d: NeedsNotify = %v, want %v", i, got, want)
		}
	}
	if _, ok, _ := q.Pop(); ok {
		t.Fatal("extra chain")
	}
	if d.AvailEvent() != 3 {
		t.Fatalf("avail_event = %d, want 3", d.AvailEvent())
	}
	// A batch crossing used_event notifies once.
	d.SetUsedEvent(4)
	for i := 0; i < 3; i++ {
		d.AddChain(vt.Buf{Addr: 0x10000, Len: 1})
		c, _, _ := q.Pop()
		_ = q.Push(c.Head, 0)
	}
	if !q.NeedsNotify() {
		t.Fatal("batch crossing used_event not notified")
	}
	// used_event behind: no notification.
	d.AddChain(vt.Buf{Addr: 0x10000, Len: 1})
	c, _, _ := q.Pop()
	_ = q.Push(c.Head, 0)
	if q.NeedsNotify() {
		t.Fatal("notified with used_event behind")
	}
}

// FuzzQueue lets the guest write arbitrary bytes over the descriptor
// table, the available ring and the used-ring index, then drains the queue
// as a device would: no panic, no hang, bounded work.
func FuzzQueue(f *testing.F) {
	f.Add([]byte{0, 0, 1, 0, 0, 0}, []byte{0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0}, uint8(0))
	f.Add([]byte{0, 0, 0xFF, 0xFF, 3, 0}, []byte{0x00, 0x70, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0, 5, 0, 1, 0}, uint8(3))
	f.Fuzz(func(t *testing.T, avail, descs []byte, feat uint8) {
		const size = 8
		mem, err := guestmem.New(guestmem.Region{GPA: 0x1000, Data: make([]byte, 0x10000)})
		if err != nil {
			t.Fatal(err)
		}
		d := vt.NewDriver(mem, size, 0x1000)
		_ = mem.WriteAt(descs[:min(len(descs), 16*size)], d.Desc)
		_ = mem.WriteAt(avail[:min(len(avail), 6+2*size)], d.Avail)
		// Indirect tables and buffers may point anywhere, including
		// back at the rings.
		if len(descs) > 16*size {
			_ = mem.WriteAt(descs[16*size:min(len(descs), 16*size+0x100)], 0x8000)
		}
		var features uint64
		if feat&1 != 0 {
			features |= virtio.FeatureIndirectDesc
		}
		if feat&2 != 0 {
			features |= virtio.FeatureEventIdx
		}
		q, err := virtio.NewQueue(mem, d.Config(), features)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 4*size; i++ {
			c, ok, err := q.Pop()
			if err != nil || !ok {
				break
			}
			if c.ReadableLen()+c.WritableLen() > size*(1<<32) {
				t.Fatalf("chain too long: %d", c.ReadableLen()+c.WritableLen())
			}
			_ = q.Push(c.Head, uint32(c.WritableLen()))
			q.NeedsNotify()
		}
	})
}

func TestQueuePushMany(t *testing.T) {
	d, q := newQueue(t, 4, virtio.FeatureEventIdx)
	var heads []uint16
	for i := 0; i < 3; i++ {
		d.AddChain(vt.Buf{Addr: 0x10000, Len: 8, Write: true})
		c, ok, err := q.Pop()
		if !ok || err != nil {
			t.Fatalf("Pop %d: %v %v", i, ok, err)
		}
		heads = append(heads, c.Head)
	}
	// A bad head refuses the whole batch, writes nothing and leaves the
	// queue working.
	if err := q.PushMany([]virtio.Used{{Head: heads[0], Len: 1}, {Head: 4}}); !errors.Is(err, virtio.ErrMalformed) {
		t.Fatalf("PushMany(bad head) = %v", err)
	}
	if idx, _ := d.Mem.Uint16(d.Used + 2); idx != 0 {
		t.Fatalf("used idx %d after a refused batch", idx)
	}
	if err := q.PushMany(nil); err != nil {
		t.Fatal(err)
	}
	if err := q.PushMany([]virtio.Used{{heads[0], 5}, {heads[1], 6}, {heads[2], 7}}); err != nil {
		t.Fatal(err)
	}
	if idx, _ := d.Mem.Uint16(d.Used + 2); idx != 3 {
		t.Fatalf("used idx %d, want 3 (published once)", idx)
	}
	for i, h := range heads {
		if id, n, ok := d.TakeUsed(); !ok || id != h || n != uint32(5+i) {
			t.Fatalf("used %d = %d %d %v", i, id, n, ok)
		}
	}
	// used_event 0: the driver wanted a notification after the first
	// buffer, and three went by.
	if !q.NeedsNotify() {
		t.Fatal("no notification after a batch crossing used_event")
	}
	// Wrap-around of the used ring.
	for i := 0; i < 3; i++ {
		d.AddChain(vt.Buf{Addr: 0x10000, Len: 8, Write: true})
	}
	var used []virtio.Used
	for {
		c, ok, err := q.Pop()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		used = append(used, virtio.Used{Head: c.Head, Len: 1})
	}
	if err := q.PushMany(used); err != nil {
		t.Fatal(err)
	}
	for range used {
		if _, n, ok := d.TakeUsed(); !ok || n != 1 {
			t.Fatalf("wrapped used = %d %v", n, ok)
		}
	}
}
