package virtio_test

import (
	"encoding/binary"
	"errors"
	"sync"
	"testing"

	"rainforest/vmm/bus"
	"rainforest/vmm/guestmem"
	"rainforest/vmm/pci"
	"rainforest/vmm/virtio"
	vt "rainforest/vmm/virtio/virtiotest"
)

// echoModel copies each chain's readable bytes into its writable buffers.
type echoModel struct {
	mu        sync.Mutex
	act       *virtio.Activation
	notified  []int
	resets    int
	config    [8]byte
	activateE error
}

func (m *echoModel) Type() uint16        { return 0x2A }
func (m *echoModel) Features() uint64    { return 1 << 3 }
func (m *echoModel) NumQueues() int      { return 2 }
func (m *echoModel) QueueMax(int) uint16 { return 16 }
func (m *echoModel) ReadConfig(off uint64, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range data {
		data[i] = 0
		if o := off + uint64(i); o < 8 {
			data[i] = m.config[o]
		}
	}
}
func (m *echoModel) WriteConfig(off uint64, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range data {
		if o := off + uint64(i); o < 8 {
			m.config[o] = data[i]
		}
	}
}
func (m *echoModel) Activate(a virtio.Activation) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.activateE != nil {
		return m.activateE
	}
	m.act = &a
	return nil
}
func (m *echoModel) Reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.act = nil
	m.resets++
}
func (m *echoModel) QueueNotify(qi int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.notified = append(m.notified, qi)
	if m.act == nil {
		return
	}
	q := m.act.Queues[qi]
	for {
		c, ok, err := q.Pop()
		if err != nil {
			m.act.IRQ.NeedsReset()
			return
		}
		if !ok {
			break
		}
		buf := make([]byte, c.ReadableLen())
		virtio.ReadBuffers(c.Readable, 0, buf)
		n := virtio.WriteBuffers(c.Writable, 0, buf)
		_ = q.Push(c.Head, uint32(n))
	}
	if q.NeedsNotify() {
		_ = m.act.IRQ.UsedBuffer(qi)
	}
}

type router struct {
	mu     sync.Mutex
	routes map[int]pci.MSIMessage
	masked map[int]bool
	fired  []int
}

func (r *router) Route(v int, msg pci.MSIMessage, masked bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.routes == nil {
		r.routes, r.masked = map[int]pci.MSIMessage{}, map[int]bool{}
	}
	r.routes[v], r.masked[v] = msg, masked
	return nil
}

func (r *router) Fire(v int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fired = append(r.fired, v)
	return nil
}

func (r *router) takeFired() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	f := r.fired
	r.fired = nil
	return f
}

// machine is the VMM side of a test: guest memory, port and MMIO buses.
type machine struct {
	t    *testing.T
	mem  *guestmem.Memory
	pio  bus.Bus
	mmio bus.Bus
	pb   *pci.Bus
}

func newMachine(t *testing.T) *machine {
	m := &machine{t: t, mem: vt.NewMemory(memSize), pb: pci.NewBus()}
	if err := m.pio.Insert(m.pb, pci.ConfigPortBase, pci.ConfigPortSize); err != nil {
		t.Fatal(err)
	}
	m.pb.SetBARMoveHandler(func(slot int, dev pci.Device, bar pci.BAR, old uint64) error {
		m.mmio.Remove(old)
		if err := m.mmio.Insert(pci.BARRegion(dev, bar.Index), bar.Addr, bar.Size); err != nil {
			t.Errorf("move BAR: %v", err)
			return err
		}
		return nil
	})
	return m
}

func (m *machine) add(dev pci.Device) int {
	slot, bars, err := m.pb.Add(-1, dev, nil)
	if err != nil {
		m.t.Fatal(err)
	}
	for _, b := range bars {
		if err := m.mmio.Insert(pci.BARRegion(dev, b.Index), b.Addr, b.Size); err != nil {
			m.t.Fatal(err)
		}
	}
	return slot
}

func (m *machine) cfgRead(slot, off, n int) uint32 {
	var a [4]byte
	binary.LittleEndian.PutUint32(a[:], 1<<31|uint32(slot)<<11|uint32(off&^3))
	m.pio.Write(0xCF8, a[:])
	b := make([]byte, 4)
	m.pio.Read(0xCFC+uint64(off&3), b[:n])
	return binary.LittleEndian.Uint32(b)
}

func (m *machine) cfgWrite(slot, off, n int, v uint32) {
	var a [4]byte
	binary.LittleEndian.PutUint32(a[:], 1<<31|uint32(slot)<<11|uint32(off&^3))
	m.pio.Write(0xCF8, a[:])
	b := make([]byte, 4)
	binary.LittleEndian.PutUint32(b, v)
	m.pio.Write(0xCFC+uint64(off&3), b[:n])
}

func (m *machine) rd(addr uint64, n int) uint64 {
	b := make([]byte, 8)
	m.mmio.Read(addr, b[:n])
	return binary.LittleEndian.Uint64(b)
}

func (m *machine) wr(addr uint64, n int, v uint64) {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, v)
	m.mmio.Write(addr, b[:n])
}

// linuxDriver holds what a virtio_pci_modern driver learns at probe.
type linuxDriver struct {
	m                           *machine
	slot                        int
	common, notify, isr, device uint64
	notifyMul                   uint32
	msixCap                     int
}

// probe walks the capability list like vp_modern_probe.
func probe(t *testing.T, m *machine, slot int) *linuxDriver {
	d := &linuxDriver{m: m, slot: slot}
	if v := m.cfgRead(slot, 0, 2); v != virtio.PCIVendorID {
		t.Fatalf("vendor %#x", v)
	}
	if m.cfgRead(slot, pci.RegRevision, 1) != 1 || m.cfgRead(slot, pci.RegSubsysVendor, 2) != virtio.PCISubsystemVenID {
		t.Fatal("revision or subsystem vendor")
	}
	barLo := uint64(m.cfgRead(slot, pci.RegBAR0, 4))
	if barLo&0x6 != 0x4 {
		t.Fatalf("BAR0 not 64-bit memory: %#x", barLo)
	}
	bar0 := barLo&^0xF | uint64(m.cfgRead(slot, pci.RegBAR0+4, 4))<<32
	if m.cfgRead(slot, pci.RegStatus, 2)&pci.StatusCapList == 0 {
		t.Fatal("no capability list")
	}
	ptr := int(m.cfgRead(slot, pci.RegCapPointer, 1))
	for n := 0; ptr != 0; n++ {
		if n > 20 {
			t.Fatal("capability loop")
		}
		id, next := m.cfgRead(slot, ptr, 1), int(m.cfgRead(slot, ptr+1, 1))
		switch id {
		case pci.CapIDMSIX:
			d.msixCap = ptr
		case pci.CapIDVendor:
			typ := m.cfgRead(slot, ptr+3, 1)
			bar := m.cfgRead(slot, ptr+4, 1)
			off := uint64(m.cfgRead(slot, ptr+8, 4))
			if bar != 0 {
				t.Fatalf("cap in BAR %d", bar)
			}
			switch typ {
			case 1:
				if l := m.cfgRead(slot, ptr+12, 4); l < 0x38 {
					t.Fatalf("common cfg length %#x", l)
				}
				d.common = bar0 + off
			case 2:
				d.notify = bar0 + off
				d.notifyMul = m.cfgRead(slot, ptr+16, 4)
			case 3:
				d.isr = bar0 + off
			case 4:
				d.device = bar0 + off
			}
		}
		ptr = next
	}
	if d.common == 0 || d.notify == 0 || d.isr == 0 || d.device == 0 || d.msixCap == 0 || d.notifyMul != 4 {
		t.Fatalf("capabilities incomplete: %+v", d)
	}
	return d
}

func (d *linuxDriver) status() uint8 { return uint8(d.m.rd(d.common+0x14, 1)) }

func (d *linuxDriver) setStatus(s uint8) { d.m.wr(d.common+0x14, 1, uint64(s)) }

// negotiate runs reset, ACK, DRIVER, feature exchange, FEATURES_OK.
func (d *linuxDriver) negotiate(t *testing.T, want uint64) bool {
	m := d.m
	d.setStatus(0)
	if d.status() != 0 {
		t.Fatal("reset not complete")
	}
	d.setStatus(virtio.StatusAcknowledge)
	d.setStatus(virtio.StatusAcknowledge | virtio.StatusDriver)
	m.wr(d.common+0x00, 4, 0)
	lo := m.rd(d.common+0x04, 4)
	m.wr(d.common+0x00, 4, 1)
	hi := m.rd(d.common+0x04, 4)
	offered := lo | hi<<32
	m.wr(d.common+0x08, 4, 0)
	m.wr(d.common+0x0C, 4, (want&offered|want&^offered)&0xFFFF_FFFF)
	m.wr(d.common+0x08, 4, 1)
	m.wr(d.common+0x0C, 4, want>>32)
	d.setStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK)
	return d.status()&virtio.StatusFeaturesOK != 0
}

// setupQueue programs queue qi like vp_modern setup_vq with vector vec.
func (d *linuxDriver) setupQueue(t *testing.T, qi int, size uint16, vec uint16, drv *vt.Driver) {
	m := d.m
	m.wr(d.common+0x16, 2, uint64(qi))
	if max := m.rd(d.common+0x18, 2); max < uint64(size) && t != nil {
		t.Fatalf("queue %d max %d", qi, max)
	}
	m.wr(d.common+0x18, 2, uint64(size))
	for _, r := range []struct {
		off uint64
		v   uint64
	}{{0x20, drv.Desc}, {0x28, drv.Avail}, {0x30, drv.Used}} {
		m.wr(d.common+r.off, 4, r.v&0xFFFF_FFFF) // vp_iowrite64_twopart
		m.wr(d.common+r.off+4, 4, r.v>>32)
	}
	m.wr(d.common+0x1A, 2, uint64(vec))
	if got := m.rd(d.common+0x1A, 2); got != uint64(vec) {
		t.Fatalf("queue vector read back %#x", got)
	}
	m.wr(d.common+0x1C, 2, 1)
}

// enableMSIX programs the table (vector v -> data 0x40+v) and enables.
func (d *linuxDriver) enableMSIX(bar0 uint64, n int) {
	m := d.m
	for v := 0; v < n; v++ {
		e := bar0 + virtio.MSIXTableOffset + uint64(16*v)
		m.wr(e, 4, 0xFEE0_0000)
		m.wr(e+4, 4, 0)
		m.wr(e+8, 4, uint64(0x40+v))
		m.wr(e+12, 4, 0)
	}
	m.cfgWrite(d.slot, d.msixCap+2, 2, 0x8000)
}

func TestPCILinuxStyleBringUp(t *testing.T) {
	m := newMachine(t)
	model := &echoModel{}
	r := &router{}
	dev, err := virtio.NewPCIDevice(model, m.mem, r)
	if err != nil {
		t.Fatal(err)
	}
	slot := m.add(dev)
	if id := m.cfgRead(slot, 2, 2); id != 0x1040+0x2A {
		t.Fatalf("device id %#x", id)
	}
	d := probe(t, m, slot)
	bar0 := dev.BARs()[0].Addr
	if d.common != bar0+virtio.CommonCfgOffset || d.notify != bar0+virtio.NotifyOffset {
		t.Fatalf("layout: common %#x notify %#x bar %#x", d.common, d.notify, bar0)
	}
	if n := m.rd(d.common+0x12, 2); n != 2 {
		t.Fatalf("num_queues %d", n)
	}
	d.enableMSIX(bar0, 3)
	if !d.negotiate(t, virtio.FeatureVersion1|virtio.FeatureEventIdx|1<<3) {
		t.Fatal("FEATURES_OK refused")
	}
	m.wr(d.common+0x10, 2, 0) // config vector
	if m.rd(d.common+0x10, 2) != 0 {
		t.Fatal("config vector")
	}
	drv0 := vt.NewDriver(m.mem, 8, 0x10000)
	drv1 := vt.NewDriver(m.mem, 16, 0x20000)
	d.setupQueue(t, 0, 8, 1, drv0)
	d.setupQueue(t, 1, 16, 2, drv1)
	// Notifies before DRIVER_OK are dropped.
	dev.QueueNotify(0)
	if len(model.notified) != 0 {
		t.Fatal("notify before DRIVER_OK reached the model")
	}
	d.setStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
	if model.act == nil || model.act.Queues[0] == nil || model.act.Queues[1] == nil ||
		model.act.Features != virtio.FeatureVersion1|virtio.FeatureEventIdx|1<<3 || model.act.Queues[0].Size() != 8 {
		t.Fatalf("activation = %+v", model.act)
	}
	model.notified = nil
	// A request through the MMIO notify register.
	_ = m.mem.WriteAt([]byte("ping"), 0x40000)
	drv0.SetUsedEvent(0)
	h := drv0.AddChain(vt.Buf{Addr: 0x40000, Len: 4}, vt.Buf{Addr: 0x41000, Len: 16, Write: true})
	m.wr(d.notify+0*uint64(d.notifyMul), 2, 0)
	if id, n, ok := drv0.TakeUsed(); !ok || id != h || n != 4 {
		t.Fatalf("used = %d %d %v", id, n, ok)
	}
	if got, _ := m.mem.Slice(0x41000, 4); string(got) != "ping" {
		t.Fatalf("echo = %q", got)
	}
	if f := r.takeFired(); len(f) != 1 || f[0] != 1 {
		t.Fatalf("fired = %v", f)
	}
	// The same through NotifyAddrs / QueueNotify (the ioeventfd path).
	addrs := dev.NotifyAddrs()
	if len(addrs) != 2 || addrs[1] != d.notify+4 {
		t.Fatalf("NotifyAddrs = %#x", addrs)
	}
	drv1.SetUsedEvent(0)
	drv1.AddChain(vt.Buf{Addr: 0x40000, Len: 4}, vt.Buf{Addr: 0x42000, Len: 4, Write: true})
	dev.QueueNotify(1)
	if _, n, ok := drv1.TakeUsed(); !ok || n != 4 {
		t.Fatal("queue 1 not served")
	}
	if f := r.takeFired(); len(f) != 1 || f[0] != 2 {
		t.Fatalf("fired = %v", f)
	}
	dev.QueueNotify(7)
	dev.QueueNotify(-1)
	m.wr(d.notify+100, 2, 0)
	// Device config and config change.
	m.wr(d.device+2, 2, 0xBEEF)
	if v := m.rd(d.device, 4); v != 0xBEEF0000 {
		t.Fatalf("device config %#x", v)
	}
	gen := m.rd(d.common+0x15, 1)
	if err := model.act.IRQ.ConfigChanged(); err != nil {
		t.Fatal(err)
	}
	if m.rd(d.common+0x15, 1) == gen {
		t.Fatal("config_generation unchanged")
	}
	if f := r.takeFired(); len(f) != 1 || f[0] != 0 {
		t.Fatalf("config interrupt fired %v", f)
	}
	if isr := m.rd(d.isr, 1); isr != 3 {
		t.Fatalf("ISR %#x", isr)
	}
	if isr := m.rd(d.isr, 1); isr != 0 {
		t.Fatal("ISR not cleared by read")
	}
	// Queue fields are frozen after DRIVER_OK.
	m.wr(d.common+0x16, 2, 0)
	m.wr(d.common+0x18, 2, 2)
	if m.rd(d.common+0x18, 2) != 8 {
		t.Fatal("queue size changed after enable")
	}
	// Guest moves BAR0: the VMM is told and notify addresses follow.
	m.cfgWrite(slot, pci.RegBAR0, 4, 0xD000_0000)
	if got := dev.NotifyAddrs()[0]; got != 0xD000_0000+virtio.NotifyOffset {
		t.Fatalf("NotifyAddrs after move = %#x", got)
	}
	if v := m.rd(0xD000_0000+0x12, 2); v != 2 {
		t.Fatalf("common cfg at new BAR address: num_queues = %d", v)
	}
	// Reset.
	m.wr(0xD000_0000+0x14, 1, 0)
	if model.resets != 1 || model.act != nil {
		t.Fatal("model not reset")
	}
	m.wr(0xD000_0000+0x16, 2, 0)
	if m.rd(0xD000_0000+0x1C, 2) != 0 || m.rd(0xD000_0000+0x18, 2) != 16 || m.rd(0xD000_0000+0x1A, 2) != virtio.NoVector {
		t.Fatal("queue state survives reset")
	}
}

func TestPCIFeatureNegotiation(t *testing.T) {
	m := newMachine(t)
	dev, err := virtio.NewPCIDevice(&echoModel{}, m.mem, &router{})
	if err != nil {
		t.Fatal(err)
	}
	d := probe(t, m, m.add(dev))
	if d.negotiate(t, 1<<3) {
		t.Fatal("FEATURES_OK without VERSION_1")
	}
	if d.negotiate(t, virtio.FeatureVersion1|1<<5) {
		t.Fatal("FEATURES_OK with a feature not offered")
	}
	if !d.negotiate(t, virtio.FeatureVersion1) {
		t.Fatal("FEATURES_OK refused for VERSION_1 alone")
	}
	// Driver features are frozen after FEATURES_OK.
	m.wr(d.common+0x08, 4, 0)
	m.wr(d.common+0x0C, 4, 1<<3)
	if m.rd(d.common+0x0C, 4) != 0 {
		t.Fatal("driver features changed after FEATURES_OK")
	}
	// Out-of-range selectors read zero.
	m.wr(d.common+0x00, 4, 7)
	if m.rd(d.common+0x04, 4) != 0 {
		t.Fatal("feature word 7")
	}
	// DRIVER_OK without FEATURES_OK is an error.
	d.setStatus(0)
	d.setStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusDriverOK)
	if d.status()&virtio.StatusDeviceNeedsReset == 0 {
		t.Fatal("DRIVER_OK without FEATURES_OK accepted")
	}
	// Vectors beyond the table read back as NO_VECTOR.
	d.setStatus(0)
	m.wr(d.common+0x10, 2, 3)
	if m.rd(d.common+0x10, 2) != virtio.NoVector {
		t.Fatal("config vector out of range accepted")
	}
	// Queue select out of range reads zeros and ignores writes.
	m.wr(d.common+0x16, 2, 9)
	m.wr(d.common+0x18, 2, 4)
	if m.rd(d.common+0x18, 2) != 0 {
		t.Fatal("queue 9 has a size")
	}
	// Odd widths and offsets are harmless.
	m.wr(d.common+0x13, 8, ^uint64(0))
	m.rd(d.common+0x3F, 8)
	m.rd(virtio.BARSize-1+dev.BARs()[0].Addr, 4)
}

func TestPCIBadQueueNeedsReset(t *testing.T) {
	for name, set := range map[string]func(d *linuxDriver, drv *vt.Driver){
		"size not power of two": func(d *linuxDriver, drv *vt.Driver) { d.setupQueue(nil, 0, 6, 1, drv) },
		"size above max":        func(d *linuxDriver, drv *vt.Driver) { d.setupQueue(nil, 0, 32, 1, drv) },
		"ring outside memory": func(d *linuxDriver, drv *vt.Driver) {
			drv.Desc = 1 << 40
			d.setupQueue(nil, 0, 8, 1, drv)
		},
	} {
		t.Run(name, func(t *testing.T) {
			m := newMachine(t)
			model := &echoModel{}
			r := &router{}
			dev, err := virtio.NewPCIDevice(model, m.mem, r)
			if err != nil {
				t.Fatal(err)
			}
			d := probe(t, m, m.add(dev))
			d.enableMSIX(dev.BARs()[0].Addr, 3)
			d.negotiate(t, virtio.FeatureVersion1)
			m.wr(d.common+0x10, 2, 0)
			set(d, vt.NewDriver(m.mem, 8, 0x10000))
			d.setStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
			if d.status()&virtio.StatusDeviceNeedsReset == 0 || model.act != nil {
				t.Fatalf("status %#x act %v", d.status(), model.act)
			}
			if f := r.takeFired(); len(f) != 1 || f[0] != 0 {
				t.Fatalf("config interrupt %v", f)
			}
			d.setStatus(0)
			if d.status() != 0 {
				t.Fatal("reset did not clear NEEDS_RESET")
			}
		})
	}
}

func TestPCIActivateError(t *testing.T) {
	m := newMachine(t)
	model := &echoModel{activateE: errors.New("boom")}
	dev, err := virtio.NewPCIDevice(model, m.mem, &router{})
	if err != nil {
		t.Fatal(err)
	}
	d := probe(t, m, m.add(dev))
	d.negotiate(t, virtio.FeatureVersion1)
	d.setStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
	if d.status()&virtio.StatusDeviceNeedsReset == 0 {
		t.Fatal("activate error not reported")
	}
	dev.QueueNotify(0)
	if len(model.notified) != 0 {
		t.Fatal("notify reached an inactive model")
	}
}

type badModel struct{ echoModel }

func (*badModel) NumQueues() int      { return 0 }
func (*badModel) QueueMax(int) uint16 { return 3 }

type badMax struct{ echoModel }

func (*badMax) QueueMax(int) uint16 { return 3 }

func TestNewPCIDeviceRejects(t *testing.T) {
	mem := vt.NewMemory(4096)
	if _, err := virtio.NewPCIDevice(&badModel{}, mem, &router{}); !errors.Is(err, virtio.ErrBadModel) {
		t.Fatal(err)
	}
	if _, err := virtio.NewPCIDevice(&badMax{}, mem, &router{}); !errors.Is(err, virtio.ErrBadModel) {
		t.Fatal(err)
	}
}

// TestPCIConcurrentNotify drives QueueNotify from an "ioeventfd" goroutine
// while the vCPU side reads config; run with -race.
func TestPCIConcurrentNotify(t *testing.T) {
	m := newMachine(t)
	model := &echoModel{}
	dev, err := virtio.NewPCIDevice(model, m.mem, &router{})
	if err != nil {
		t.Fatal(err)
	}
	d := probe(t, m, m.add(dev))
	d.enableMSIX(dev.BARs()[0].Addr, 3)
	d.negotiate(t, virtio.FeatureVersion1)
	drv := vt.NewDriver(m.mem, 8, 0x10000)
	d.setupQueue(t, 0, 8, 1, drv)
	d.setStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 200; i++ {
			dev.QueueNotify(0)
			dev.QueueNotify(1)
		}
	}()
	for i := 0; i < 200; i++ {
		m.rd(d.common+0x14, 1)
		m.rd(d.device, 4)
		m.rd(d.isr, 1)
	}
	wg.Wait()
}

// TestPCICfgWindow reads and writes common config through the
// VIRTIO_PCI_CAP_PCI_CFG capability, as firmware does.
func TestPCICfgWindow(t *testing.T) {
	m := newMachine(t)
	dev, err := virtio.NewPCIDevice(&echoModel{}, m.mem, &router{})
	if err != nil {
		t.Fatal(err)
	}
	slot := m.add(dev)
	capOff := 0
	for ptr := int(m.cfgRead(slot, pci.RegCapPointer, 1)); ptr != 0; ptr = int(m.cfgRead(slot, ptr+1, 1)) {
		if m.cfgRead(slot, ptr, 1) == pci.CapIDVendor && m.cfgRead(slot, ptr+3, 1) == 5 {
			capOff = ptr
		}
	}
	if capOff == 0 {
		t.Fatal("no PCI_CFG capability")
	}
	m.cfgWrite(slot, capOff+4, 1, 0)    // bar
	m.cfgWrite(slot, capOff+8, 4, 0x12) // num_queues
	m.cfgWrite(slot, capOff+12, 4, 2)   // length
	if v := m.cfgRead(slot, capOff+16, 2); v != 2 {
		t.Fatalf("num_queues via PCI_CFG = %d", v)
	}
	m.cfgWrite(slot, capOff+8, 4, 0x14) // device_status
	m.cfgWrite(slot, capOff+12, 4, 1)
	m.cfgWrite(slot, capOff+16, 1, virtio.StatusAcknowledge)
	if v := m.rd(dev.BARs()[0].Addr+0x14, 1); v != virtio.StatusAcknowledge {
		t.Fatalf("status after PCI_CFG write = %#x", v)
	}
	// A width other than the programmed length just hits the register.
	m.cfgRead(slot, capOff+16, 4)
}
