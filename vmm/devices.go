package vmm

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"rainforest/vmm/acpi"
	"rainforest/vmm/bus"
	"rainforest/vmm/pci"
	"rainforest/vmm/virtio"
	"rainforest/vmm/virtio/blk"
	"rainforest/vmm/virtio/console"
)

// setupPCI creates PCI bus 0 (config mechanism #1, whose port range also
// holds the 0xCF9 reset register) with a virtio-blk function per disk and a
// virtio-console. Functions with an interrupt pin get their INTx line wired
// to the IOAPIC as the ACPI _PRT describes it (acpi.PCIINTxGSI: INTA# of
// slot S is GSI 16 + S%8, level-triggered), driven with KVM_IRQ_LINE.
func (m *Machine) setupPCI(ctx context.Context, cfg *LinuxConfig) error {
	if err := m.EnsurePCI(); err != nil {
		return err
	}
	for i, d := range cfg.Disks {
		model, err := blk.Open(d.Path, blk.Options{ReadOnly: d.ReadOnly, ID: fmt.Sprintf("rf-disk%d", i)})
		if err != nil {
			return fmt.Errorf("disk %d: %w", i, err)
		}
		m.AddCloser(model.Close)
		if err := m.AddVirtio(ctx, model); err != nil {
			return fmt.Errorf("disk %s: %w", d.Path, err)
		}
	}
	out := cfg.Console
	if out == nil {
		out = io.Discard
	}
	return m.AddVirtio(ctx, console.New(out, console.Options{}))
}

// virtioFunction is a virtio-pci function on the machine's PCI bus with the
// doorbells of its queues.
type virtioFunction struct {
	dev   *virtio.PCIDevice
	mu    sync.Mutex
	bells []*Doorbell
}

// AddVirtio puts a virtio device model on the PCI bus: its BARs on the MMIO
// bus, an ioeventfd doorbell per queue notify register (served by a
// goroutine owned by the machine), MSI-X vectors as irqfds and INTA# as a
// level-triggered IOAPIC input (used when the guest leaves MSI-X off).
func (m *Machine) AddVirtio(ctx context.Context, model virtio.DeviceModel) error {
	router := &msiRouter{m: m}
	dev, err := virtio.NewPCIDevice(model, m.Mem, router)
	if err != nil {
		return err
	}
	slot, bars, err := m.pci.Add(-1, dev)
	if err != nil {
		return err
	}
	for _, b := range bars {
		if err := m.MMIO.Insert(pci.BARRegion(dev, b.Index), b.Addr, b.Size); err != nil {
			return fmt.Errorf("slot %d BAR %d: %w", slot, b.Index, err)
		}
	}
	fn := &virtioFunction{dev: dev}
	evs := make([]*EventFD, 0, dev.NumQueues())
	for _, addr := range dev.NotifyAddrs() {
		db, err := m.NewDoorbell(addr, 2, false, nil)
		if err != nil {
			return err
		}
		fn.bells = append(fn.bells, db)
		evs = append(evs, db.EventFD())
	}
	m.functions = append(m.functions, fn)
	m.goroutine(func() {
		for {
			ready, err := WaitEvents(ctx, m.stopEv, evs)
			if err != nil {
				return
			}
			for _, q := range ready {
				dev.QueueNotify(q)
			}
		}
	})
	m.log.Debug("pci device", "slot", slot, "type", model.Type())
	return nil
}

// moveBAR follows a guest BAR reprogramming: the MMIO range and the queue
// doorbells move to the new address.
func (m *Machine) moveBAR(slot int, dev pci.Device, b pci.BAR, oldAddr uint64) {
	if oldAddr != 0 {
		m.MMIO.Remove(oldAddr)
	}
	if b.Addr != 0 {
		if err := m.MMIO.Insert(pci.BARRegion(dev, b.Index), b.Addr, b.Size); err != nil {
			m.log.Warn("guest moved a BAR onto another device", "slot", slot, "bar", b.Index, "addr", fmt.Sprintf("%#x", b.Addr), "err", err)
		}
	}
	for _, fn := range m.functions {
		if pci.Device(fn.dev) != dev || b.Index != virtio.BARIndex {
			continue
		}
		fn.mu.Lock()
		for q, addr := range fn.dev.NotifyAddrs() {
			if err := fn.bells[q].Move(m, addr); err != nil {
				m.log.Warn("move queue doorbell", "slot", slot, "queue", q, "err", err)
			}
		}
		fn.mu.Unlock()
	}
}

// msiRouter delivers one PCI function's MSI-X vectors through irqfds: each
// vector gets a GSI routed to its current message, created on first use.
type msiRouter struct {
	m       *Machine
	mu      sync.Mutex
	vectors map[int]*MSIVector
}

var _ pci.MSIRouter = (*msiRouter)(nil)

func (r *msiRouter) Route(vector int, msg pci.MSIMessage, masked bool) error {
	if masked {
		return nil // the device holds pending bits while masked
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if v, ok := r.vectors[vector]; ok {
		return r.m.RouteMSI(v, msg.Addr, msg.Data)
	}
	v, err := r.m.NewMSIVector(msg.Addr, msg.Data)
	if err != nil {
		return err
	}
	if r.vectors == nil {
		r.vectors = map[int]*MSIVector{}
	}
	r.vectors[vector] = v
	return nil
}

func (r *msiRouter) Fire(vector int) error {
	r.mu.Lock()
	v, ok := r.vectors[vector]
	r.mu.Unlock()
	if !ok {
		return fmt.Errorf("MSI-X vector %d fired before the guest programmed it", vector)
	}
	return v.Fire()
}

// pciINTxLines are the PCI INTx inputs of the IOAPIC (GSIs
// acpi.PCIINTxGSIBase..+PCIINTxGSICount). Several functions may share a
// GSI; the line is the wired OR of their levels, so KVM_IRQ_LINE is issued
// only when the number of asserting functions goes from 0 to 1 or back.
//
// KVM_IRQ_LINE keeps the level in the kernel until changed, which gives
// level-triggered semantics (re-delivery after EOI while still asserted)
// without an irqfd; a resampling irqfd (KVM_IRQFD_FLAG_RESAMPLE) would save
// the ioctl on the vCPU thread but is not used.
type pciINTxLines struct {
	setLine   func(gsi uint32, high bool) error // kvm.VM.IRQLine
	log       *slog.Logger
	mu        sync.Mutex
	asserting map[uint32]int // GSI -> functions driving it high
}

func newPCIINTxLines(setLine func(gsi uint32, high bool) error, log *slog.Logger) *pciINTxLines {
	return &pciINTxLines{setLine: setLine, log: log, asserting: map[uint32]int{}}
}

// route implements pci.INTxRouter.
func (l *pciINTxLines) route(slot, pin int) (pci.INTx, uint8, error) {
	gsi, ok := acpi.PCIINTxGSI(slot, pin)
	if !ok {
		return nil, 0, fmt.Errorf("no INTx route for slot %d pin %d", slot, pin)
	}
	return &pciINTxLine{lines: l, gsi: gsi}, uint8(gsi), nil
}

// pciINTxLine is one function's INTx output onto a shared GSI.
type pciINTxLine struct {
	lines *pciINTxLines
	gsi   uint32
	high  bool // guarded by lines.mu
}

// SetLevel implements pci.INTx.
func (f *pciINTxLine) SetLevel(high bool) {
	l := f.lines
	l.mu.Lock()
	defer l.mu.Unlock()
	if f.high == high {
		return
	}
	f.high = high
	n := l.asserting[f.gsi]
	if high {
		n++
	} else {
		n--
	}
	l.asserting[f.gsi] = n
	if (high && n == 1) || (!high && n == 0) {
		if err := l.setLine(f.gsi, high); err != nil {
			l.log.Warn("PCI INTx line", "gsi", f.gsi, "err", err)
		}
	}
}

var _ bus.Device = (*pci.Bus)(nil)
