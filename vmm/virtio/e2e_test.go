package virtio_test

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"rainforest/vmm/virtio"
	"rainforest/vmm/virtio/blk"
	"rainforest/vmm/virtio/console"
	vt "rainforest/vmm/virtio/virtiotest"
)

// TestBlockOverPCI brings a virtio-blk device up through config space and
// BAR 0 like Linux and writes then reads a sector through the ioeventfd
// path, with MSI-X interrupts.
func TestBlockOverPCI(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	model, err := blk.New(f, blk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m := newMachine(t)
	r := &router{}
	dev, err := virtio.NewPCIDevice(model, m.mem, r)
	if err != nil {
		t.Fatal(err)
	}
	d := probe(t, m, m.add(dev))
	if c := m.cfgRead(d.slot, 8, 4) >> 8; c != 0x018000 {
		t.Fatalf("class %#x", c)
	}
	bar0 := dev.BARs()[0].Addr
	d.enableMSIX(bar0, 2)
	if !d.negotiate(t, virtio.FeatureVersion1|virtio.FeatureIndirectDesc|virtio.FeatureEventIdx|blk.FeatureFlush) {
		t.Fatal("negotiation failed")
	}
	if capacity := m.rd(d.device, 8); capacity != 2048 {
		t.Fatalf("capacity %d", capacity)
	}
	m.wr(d.common+0x10, 2, 0)
	drv := vt.NewDriver(m.mem, 64, 0x10000)
	m.wr(d.common+0x16, 2, 0)
	if max := m.rd(d.common+0x18, 2); max != 256 {
		t.Fatalf("queue max %d", max)
	}
	m.wr(d.common+0x16, 2, 0)
	m.wr(d.common+0x18, 2, 64)
	m.wr(d.common+0x20, 8, drv.Desc)
	m.wr(d.common+0x28, 8, drv.Avail)
	m.wr(d.common+0x30, 8, drv.Used)
	m.wr(d.common+0x1A, 2, 1)
	m.wr(d.common+0x1C, 2, 1)
	d.setStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
	if d.status()&virtio.StatusDeviceNeedsReset != 0 {
		t.Fatal("needs reset")
	}
	req := func(typ uint32, sector uint64, data vt.Buf) byte {
		var h [16]byte
		binary.LittleEndian.PutUint32(h[0:], typ)
		binary.LittleEndian.PutUint64(h[8:], sector)
		_ = m.mem.WriteAt(h[:], 0x30000)
		drv.SetUsedEvent(uint16(drv.AvailEvent()))
		drv.AddIndirect(0x31000, vt.Buf{Addr: 0x30000, Len: 16}, data, vt.Buf{Addr: 0x30100, Len: 1, Write: true})
		dev.QueueNotify(0) // what the VMM's ioeventfd goroutine calls
		if _, _, ok := drv.TakeUsed(); !ok {
			t.Fatal("request not completed")
		}
		if f := r.takeFired(); len(f) != 1 || f[0] != 1 {
			t.Fatalf("interrupts %v", f)
		}
		st, _ := m.mem.Slice(0x30100, 1)
		return st[0]
	}
	sector := bytes.Repeat([]byte{0xA5, 0x5A}, 256)
	_ = m.mem.WriteAt(sector, 0x40000)
	if st := req(blk.TypeOut, 7, vt.Buf{Addr: 0x40000, Len: 512}); st != blk.StatusOK {
		t.Fatalf("write status %d", st)
	}
	if st := req(blk.TypeIn, 7, vt.Buf{Addr: 0x50000, Len: 512, Write: true}); st != blk.StatusOK {
		t.Fatalf("read status %d", st)
	}
	if got, _ := m.mem.Slice(0x50000, 512); !bytes.Equal(got, sector) {
		t.Fatal("read back differs")
	}
	if st := req(blk.TypeIn, 2048, vt.Buf{Addr: 0x50000, Len: 512, Write: true}); st != blk.StatusIOErr {
		t.Fatalf("out of range read status %d", st)
	}
}

// TestConsoleOverPCI checks that the console's queues get activated and
// output reaches the writer through the MMIO notify register.
func TestConsoleOverPCI(t *testing.T) {
	var out bytes.Buffer
	model := console.New(&out, console.Options{})
	m := newMachine(t)
	dev, err := virtio.NewPCIDevice(model, m.mem, &router{})
	if err != nil {
		t.Fatal(err)
	}
	d := probe(t, m, m.add(dev))
	d.enableMSIX(dev.BARs()[0].Addr, 3)
	d.negotiate(t, virtio.FeatureVersion1)
	rx := vt.NewDriver(m.mem, 16, 0x10000)
	tx := vt.NewDriver(m.mem, 16, 0x20000)
	d.setupQueue(t, 0, 16, 1, rx)
	d.setupQueue(t, 1, 16, 2, tx)
	// Input typed before the driver is ready arrives once it is.
	if _, err := model.Enqueue([]byte("early")); err != nil {
		t.Fatal(err)
	}
	rx.AddChain(vt.Buf{Addr: 0x40000, Len: 64, Write: true})
	d.setStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
	if _, n, ok := rx.TakeUsed(); !ok || n != 5 {
		t.Fatalf("early input: %d %v", n, ok)
	}
	_ = m.mem.WriteAt([]byte("login: "), 0x50000)
	tx.AddChain(vt.Buf{Addr: 0x50000, Len: 7})
	m.wr(d.notify+4, 2, 1)
	if out.String() != "login: " {
		t.Fatalf("output %q", out.String())
	}
}

// FuzzPCIDevice performs arbitrary config-space and BAR accesses: nothing
// may panic or hang, whatever the guest programs.
func FuzzPCIDevice(f *testing.F) {
	f.Add([]byte{0, 0x14, 0, 1, 0x0F, 1, 0x1C, 0, 2, 1, 0, 0x14, 0, 1, 0x0F})
	f.Add([]byte{2, 0x04, 0, 2, 0x06, 0, 0x30, 0, 2, 0, 1, 0x00, 0x40, 4, 0xFF})
	f.Fuzz(func(t *testing.T, ops []byte) {
		m := newMachine(t)
		dev, err := virtio.NewPCIDevice(&echoModel{}, m.mem, &router{})
		if err != nil {
			t.Fatal(err)
		}
		m.add(dev)
		for len(ops) >= 5 {
			kind, off, width, val := ops[0]%4, uint64(ops[1])|uint64(ops[2])<<8, 1<<(ops[3]%4), ops[4]
			ops = ops[5:]
			buf := bytes.Repeat([]byte{val}, width)
			switch kind {
			case 0:
				dev.WriteBAR(0, off, buf)
			case 1:
				dev.ReadBAR(0, off, buf)
			case 2:
				dev.WriteConfig(int(off%300), buf)
			case 3:
				dev.QueueNotify(int(off % 4))
				dev.ReadConfig(int(off%300), buf)
			}
		}
	})
}
