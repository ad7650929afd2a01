package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"rainforest/vmm/eventfd"
	"rainforest/vmm/guestmem"
	"rainforest/vmm/pci"
)

// PCI identity of modern (non-transitional) virtio devices.
const (
	PCIVendorID       = 0x1AF4
	PCIDeviceIDBase   = 0x1040 // + device type
	PCIRevision       = 1
	PCISubsystemVenID = 0x1AF4
	PCISubsystemID    = 0x1100
)

// Layout of BAR 0, the single 64-bit memory BAR of a PCIDevice. All
// structures are 4 KiB aligned.
const (
	BARIndex = 0

	CommonCfgOffset = 0x0000 // struct virtio_pci_common_cfg
	CommonCfgLen    = 0x38
	ISROffset       = 0x1000 // ISR status byte (read clears)
	ISRLen          = 4
	DeviceCfgOffset = 0x2000 // device-specific config, up to 4 KiB
	DeviceCfgLen    = 0x1000
	NotifyOffset    = 0x3000 // queue q at NotifyOffset + q*NotifyOffMultiplier
	NotifyLenMax    = 0x1000
	MSIXTableOffset = 0x4000
	MSIXPBAOffset   = 0x5000
	BARSize         = 0x8000

	NotifyOffMultiplier = 4

	// NoVector is VIRTIO_MSI_NO_VECTOR.
	NoVector = 0xFFFF

	// MaxQueues is the most queues a PCIDevice supports (one MSI-X
	// vector each plus one for config changes, table within 4 KiB).
	MaxQueues = 255
)

// virtio_pci_cap cfg_type values.
const (
	capCommonCfg = 1
	capNotifyCfg = 2
	capISRCfg    = 3
	capDeviceCfg = 4
	capPCICfg    = 5
)

// ISR bits.
const (
	isrQueue  = 1
	isrConfig = 2
)

// ErrBadModel reports a DeviceModel the transport cannot present.
var ErrBadModel = errors.New("virtio: unsupported device model")

type queueState struct {
	max, size            uint16
	enabled              bool
	desc, driver, device uint64
	vector               atomic.Uint32
	q                    *Queue
}

// PCIDevice is the modern virtio-pci transport for one DeviceModel. It
// implements pci.Device and pci.INTxDevice; everything is in BAR 0 (see the
// *Offset constants). Interrupts go out as MSI-X messages while the driver
// has MSI-X enabled, otherwise on INTA#: the line is asserted while the ISR
// status is non-zero, and reading the ISR clears it and lowers the line.
// Queue notifications arrive either as MMIO writes to the notify area or,
// when the VMM registered ioeventfds at NotifyAddrs, as calls to
// QueueNotify from the VMM's ioeventfd goroutine.
type PCIDevice struct {
	model DeviceModel
	mem   *guestmem.Memory
	cfg   *pci.ConfigSpace
	msix  *pci.MSIX
	intx  *pci.INTxSource
	// pciCfgCap is the offset of the VIRTIO_PCI_CAP_PCI_CFG capability,
	// a window into BAR 0 through config space.
	pciCfgCap int

	mu           sync.RWMutex // QueueNotify holds it shared
	devFeatSel   uint32
	drvFeatSel   uint32
	drvFeatures  uint64
	status       uint8
	queueSel     uint16
	queues       []*queueState
	active       bool
	configVector atomic.Uint32
	isrMu        sync.Mutex // orders ISR changes with the INTx level
	isr          uint8
	generation   atomic.Uint32
	needsReset   atomic.Bool
	// kicks are the queues' notify eventfds, for an ExternalQueues
	// model (UseKickEventFDs); router is the MSI-X router, whose vector
	// eventfds are the queues' calls when it has them.
	kicks  []*eventfd.EventFD
	router pci.MSIRouter
}

var (
	_ pci.INTxDevice = (*PCIDevice)(nil)
	_ Doorbells      = (*PCIDevice)(nil)
)

// vectorEventFDs is an MSI router whose vectors are eventfds wired to the
// guest (interrupt.MSIXGroup).
type vectorEventFDs interface {
	EventFD(vector int) *eventfd.EventFD
}

// NewPCIDevice wraps model in the virtio-pci transport. mem is guest
// memory for the virtqueues; router delivers this function's MSI-X
// vectors (queue q uses whatever vector the driver programs; typically
// the config vector is 0 and queue q is q+1 under Linux).
func NewPCIDevice(model DeviceModel, mem *guestmem.Memory, router pci.MSIRouter) (*PCIDevice, error) {
	nq := model.NumQueues()
	if nq < 1 || nq > MaxQueues {
		return nil, fmt.Errorf("%w: %d queues", ErrBadModel, nq)
	}
	d := &PCIDevice{model: model, mem: mem, router: router}
	for i := 0; i < nq; i++ {
		m := model.QueueMax(i)
		if m == 0 || m > MaxQueueSize || m&(m-1) != 0 {
			return nil, fmt.Errorf("%w: queue %d max size %d", ErrBadModel, i, m)
		}
		d.queues = append(d.queues, &queueState{max: m})
	}
	d.cfg = pci.NewConfigSpace(pci.Header{
		VendorID:          PCIVendorID,
		DeviceID:          PCIDeviceIDBase + model.Type(),
		Revision:          PCIRevision,
		Class:             classOf(model.Type()),
		SubsystemVendorID: PCISubsystemVenID,
		SubsystemID:       PCISubsystemID,
	})
	if err := d.cfg.AddMemBAR(BARIndex, BARSize, true, false); err != nil {
		return nil, err
	}
	caps := []struct {
		typ      byte
		off, len uint32
	}{
		{capCommonCfg, CommonCfgOffset, CommonCfgLen},
		{capNotifyCfg, NotifyOffset, uint32(nq * NotifyOffMultiplier)},
		{capISRCfg, ISROffset, ISRLen},
		{capDeviceCfg, DeviceCfgOffset, DeviceCfgLen},
	}
	for _, c := range caps {
		body := make([]byte, 14, 18)
		body[0] = 16 // cap_len including vndr and next
		body[1] = c.typ
		body[2] = BARIndex
		binary.LittleEndian.PutUint32(body[6:], c.off)
		binary.LittleEndian.PutUint32(body[10:], c.len)
		if c.typ == capNotifyCfg {
			body[0] = 20
			body = binary.LittleEndian.AppendUint32(body, NotifyOffMultiplier)
		}
		if _, err := d.cfg.AddVendorCapability(body, nil); err != nil {
			return nil, err
		}
	}
	// VIRTIO_PCI_CAP_PCI_CFG: bar, offset, length and data writable.
	body := make([]byte, 18)
	body[0], body[1] = 20, capPCICfg
	wmask := make([]byte, 18)
	wmask[2] = 0xFF
	for i := 6; i < 18; i++ {
		wmask[i] = 0xFF
	}
	off, err := d.cfg.AddVendorCapability(body, wmask)
	if err != nil {
		return nil, err
	}
	d.pciCfgCap = off
	msix, err := pci.NewMSIX(d.cfg, nq+1, BARIndex, MSIXTableOffset, MSIXPBAOffset, router)
	if err != nil {
		return nil, err
	}
	d.msix = msix
	d.intx = pci.NewINTxSource(d.cfg, msix)
	d.resetLocked()
	return d, nil
}

func classOf(t uint16) uint32 {
	switch t {
	case TypeNet:
		return 0x020000
	case TypeBlock:
		return 0x018000
	case TypeConsole:
		return 0x078000
	}
	return 0xFF0000
}

// Model returns the device model.
func (d *PCIDevice) Model() DeviceModel { return d.model }

// NumQueues returns the number of queues.
func (d *PCIDevice) NumQueues() int { return len(d.queues) }

// NotifyOffsetOf returns queue q's notify address relative to BAR 0.
func (d *PCIDevice) NotifyOffsetOf(q int) uint64 {
	return NotifyOffset + uint64(q)*NotifyOffMultiplier
}

// NotifyAddrs returns, per queue, the guest physical address of its
// notify register given BAR 0's current address. The VMM may register an
// ioeventfd (2-byte write, any value) at each and call QueueNotify(q) when
// it fires; it re-registers after a BAR move.
func (d *PCIDevice) NotifyAddrs() []uint64 {
	var base uint64
	for _, b := range d.cfg.BARs() {
		if b.Index == BARIndex {
			base = b.Addr
		}
	}
	out := make([]uint64, len(d.queues))
	for i := range out {
		out[i] = base + d.NotifyOffsetOf(i)
	}
	return out
}

// ReadConfig implements pci.Device.
func (d *PCIDevice) ReadConfig(offset int, data []byte) {
	if bar, off, ok := d.pciCfgWindow(offset, len(data)); ok {
		d.ReadBAR(bar, off, data)
		return
	}
	d.cfg.Read(offset, data)
}

// WriteConfig implements pci.Device.
func (d *PCIDevice) WriteConfig(offset int, data []byte) {
	if bar, off, ok := d.pciCfgWindow(offset, len(data)); ok {
		d.WriteBAR(bar, off, data)
		return
	}
	d.cfg.Write(offset, data)
	_ = d.msix.ControlWritten() // a router error leaves the vector unrouted; nothing to tell the guest
	d.intx.Update()
}

// ConnectINTx implements pci.INTxDevice: line is the function's INTA#.
func (d *PCIDevice) ConnectINTx(line pci.INTx) { d.intx.Connect(line) }

// INTxAsserted reports whether the function drives INTA# high.
func (d *PCIDevice) INTxAsserted() bool { return d.intx.Asserted() }

// pciCfgWindow reports whether an access of n bytes at offset is to
// pci_cfg_data of the PCI_CFG capability with the programmed length, and
// where in which BAR it goes.
func (d *PCIDevice) pciCfgWindow(offset, n int) (int, uint64, bool) {
	if offset != d.pciCfgCap+16 {
		return 0, 0, false
	}
	var hdr [16]byte
	d.cfg.Read(d.pciCfgCap, hdr[:])
	bar := int(hdr[4])
	off := uint64(binary.LittleEndian.Uint32(hdr[8:]))
	length := binary.LittleEndian.Uint32(hdr[12:])
	if uint32(n) != length || (n != 1 && n != 2 && n != 4) || off%uint64(n) != 0 {
		return 0, 0, false
	}
	return bar, off, true
}

// BARs implements pci.Device.
func (d *PCIDevice) BARs() []pci.BAR { return d.cfg.BARs() }

// ReadBAR implements pci.Device.
func (d *PCIDevice) ReadBAR(bar int, offset uint64, data []byte) {
	clear(data)
	if bar != BARIndex || offset >= BARSize || uint64(len(data)) > BARSize-offset {
		return
	}
	switch {
	case offset < ISROffset:
		d.mu.Lock()
		img := d.commonLocked()
		d.mu.Unlock()
		copyOut(data, img[:], offset)
	case offset < DeviceCfgOffset:
		if offset == ISROffset && len(data) > 0 {
			data[0] = d.takeISR()
		}
	case offset < NotifyOffset:
		d.mu.Lock()
		d.model.ReadConfig(offset-DeviceCfgOffset, data)
		d.mu.Unlock()
	case offset < MSIXTableOffset:
	case offset < MSIXPBAOffset:
		d.msix.ReadTable(offset-MSIXTableOffset, data)
	default:
		d.msix.ReadPBA(offset-MSIXPBAOffset, data)
	}
}

// WriteBAR implements pci.Device.
func (d *PCIDevice) WriteBAR(bar int, offset uint64, data []byte) {
	if bar != BARIndex || offset >= BARSize || uint64(len(data)) > BARSize-offset {
		return
	}
	switch {
	case offset < ISROffset:
		d.writeCommon(offset, data)
	case offset < DeviceCfgOffset:
	case offset < NotifyOffset:
		d.mu.Lock()
		d.model.WriteConfig(offset-DeviceCfgOffset, data)
		d.mu.Unlock()
	case offset < MSIXTableOffset:
		rel := offset - NotifyOffset
		if rel%NotifyOffMultiplier == 0 {
			d.QueueNotify(int(rel / NotifyOffMultiplier))
		}
	case offset < MSIXPBAOffset:
		_ = d.msix.WriteTable(offset-MSIXTableOffset, data) // see WriteConfig
	default:
		d.msix.WritePBA(offset-MSIXPBAOffset, data)
	}
}

func copyOut(data, img []byte, offset uint64) {
	for i := range data {
		if o := offset + uint64(i); o < uint64(len(img)) {
			data[i] = img[o]
		}
	}
}

// QueueNotify tells the device model that the driver notified queue q. It
// is ignored before DRIVER_OK, for queues the driver did not enable, and
// for q out of range.
func (d *PCIDevice) QueueNotify(q int) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if !d.active || q < 0 || q >= len(d.queues) || d.queues[q].q == nil {
		return
	}
	d.model.QueueNotify(q)
}

const commonImageLen = 0x40

func (d *PCIDevice) commonLocked() [commonImageLen]byte {
	var b [commonImageLen]byte
	le := binary.LittleEndian
	le.PutUint32(b[0x00:], d.devFeatSel)
	if d.devFeatSel < 2 {
		le.PutUint32(b[0x04:], uint32(d.offeredFeatures()>>(32*d.devFeatSel)))
	}
	le.PutUint32(b[0x08:], d.drvFeatSel)
	if d.drvFeatSel < 2 {
		le.PutUint32(b[0x0C:], uint32(d.drvFeatures>>(32*d.drvFeatSel)))
	}
	le.PutUint16(b[0x10:], uint16(d.configVector.Load()))
	le.PutUint16(b[0x12:], uint16(len(d.queues)))
	st := d.status
	if d.needsReset.Load() {
		st |= StatusDeviceNeedsReset
	}
	b[0x14] = st
	b[0x15] = byte(d.generation.Load())
	le.PutUint16(b[0x16:], d.queueSel)
	if qs := d.selected(); qs != nil {
		le.PutUint16(b[0x18:], qs.size)
		le.PutUint16(b[0x1A:], uint16(qs.vector.Load()))
		if qs.enabled {
			le.PutUint16(b[0x1C:], 1)
		}
		le.PutUint16(b[0x1E:], d.queueSel) // queue_notify_off
		le.PutUint64(b[0x20:], qs.desc)
		le.PutUint64(b[0x28:], qs.driver)
		le.PutUint64(b[0x30:], qs.device)
	}
	return b
}

func (d *PCIDevice) selected() *queueState {
	if int(d.queueSel) < len(d.queues) {
		return d.queues[d.queueSel]
	}
	return nil
}

func (d *PCIDevice) offeredFeatures() uint64 {
	if x, ok := d.model.(ExternalQueues); ok {
		return d.model.Features() | TransportFeatures&x.ServedTransportFeatures()
	}
	return d.model.Features() | TransportFeatures
}

// UseKickEventFDs gives the transport the queues' notify eventfds (one per
// queue, registered as ioeventfds by the VMM), for an ExternalQueues model
// to hand on (Doorbells.Kick). Call it before the function is on the bus;
// the caller keeps them open until the device is removed.
func (d *PCIDevice) UseKickEventFDs(evs []*eventfd.EventFD) error {
	if len(evs) != len(d.queues) {
		return fmt.Errorf("%w: %d kick eventfds for %d queues", ErrBadModel, len(evs), len(d.queues))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.kicks = append([]*eventfd.EventFD(nil), evs...)
	return nil
}

// Kick implements Doorbells.
func (d *PCIDevice) Kick(q int) *eventfd.EventFD {
	if q < 0 || q >= len(d.kicks) {
		return nil
	}
	return d.kicks[q]
}

// Call implements Doorbells: while MSI-X is enabled, the eventfd of the
// vector the driver gave queue q, when the router has one.
func (d *PCIDevice) Call(q int) *eventfd.EventFD {
	if q < 0 || q >= len(d.queues) || !d.msix.Enabled() {
		return nil
	}
	v := d.queues[q].vector.Load()
	r, ok := d.router.(vectorEventFDs)
	if v == NoVector || !ok {
		return nil
	}
	return r.EventFD(int(v))
}

// commonField is one register of the common config, written as a whole
// after the guest's bytes are merged into the current image.
type commonField struct {
	off, size uint64
}

var commonFields = [...]commonField{
	{0x00, 4}, {0x08, 4}, {0x0C, 4}, {0x10, 2}, {0x14, 1}, {0x16, 2},
	{0x18, 2}, {0x1A, 2}, {0x1C, 2},
	{0x20, 4}, {0x24, 4}, {0x28, 4}, {0x2C, 4}, {0x30, 4}, {0x34, 4},
}

func (d *PCIDevice) writeCommon(offset uint64, data []byte) {
	kick := false
	d.mu.Lock()
	img := d.commonLocked()
	for i, v := range data {
		if o := offset + uint64(i); o < commonImageLen {
			img[o] = v
		}
	}
	end := offset + uint64(len(data))
	for _, f := range commonFields {
		if f.off < end && offset < f.off+f.size {
			var v uint64
			for i := f.size; i > 0; i-- {
				v = v<<8 | uint64(img[f.off+i-1])
			}
			if d.setFieldLocked(f.off, v) {
				kick = true
			}
		}
	}
	d.mu.Unlock()
	if kick {
		for q := range d.queues {
			d.QueueNotify(q)
		}
	}
}

// setFieldLocked applies one common-config register; it reports whether the
// device just became active.
func (d *PCIDevice) setFieldLocked(off, v uint64) bool {
	qs := d.selected()
	writableQueue := qs != nil && !qs.enabled && d.status&StatusDriverOK == 0
	switch off {
	case 0x00:
		d.devFeatSel = uint32(v)
	case 0x08:
		d.drvFeatSel = uint32(v)
	case 0x0C:
		if d.status&StatusFeaturesOK == 0 && d.drvFeatSel < 2 {
			sh := 32 * d.drvFeatSel
			d.drvFeatures = d.drvFeatures&^(0xFFFF_FFFF<<sh) | v<<sh
		}
	case 0x10:
		d.configVector.Store(d.vectorOrNone(v))
	case 0x14:
		return d.setStatusLocked(uint8(v))
	case 0x16:
		d.queueSel = uint16(v)
	case 0x18:
		if writableQueue {
			qs.size = uint16(v)
		}
	case 0x1A:
		if qs != nil {
			qs.vector.Store(d.vectorOrNone(v))
		}
	case 0x1C:
		if writableQueue && v == 1 {
			qs.enabled = true
		}
	case 0x20, 0x24, 0x28, 0x2C, 0x30, 0x34:
		if !writableQueue {
			return false
		}
		p := [...]*uint64{&qs.desc, &qs.driver, &qs.device}[(off-0x20)/8]
		if off%8 == 0 {
			*p = *p&^0xFFFF_FFFF | v
		} else {
			*p = *p&0xFFFF_FFFF | v<<32
		}
	}
	return false
}

func (d *PCIDevice) vectorOrNone(v uint64) uint32 {
	if v < uint64(d.msix.Vectors()) {
		return uint32(v)
	}
	return NoVector
}

func (d *PCIDevice) setStatusLocked(v uint8) bool {
	if v == 0 {
		d.resetLocked()
		return false
	}
	v &^= StatusDeviceNeedsReset
	old := d.status
	if v&StatusFeaturesOK != 0 && old&StatusFeaturesOK == 0 {
		f := d.drvFeatures
		if f&^d.offeredFeatures() != 0 || f&FeatureVersion1 == 0 {
			v &^= StatusFeaturesOK
		}
	}
	d.status = v
	if v&StatusDriverOK == 0 || old&StatusDriverOK != 0 || d.active {
		return false
	}
	if v&StatusFeaturesOK == 0 {
		d.NeedsReset()
		return false
	}
	return d.activateLocked()
}

func (d *PCIDevice) activateLocked() bool {
	a := Activation{Mem: d.mem, Features: d.drvFeatures, Queues: make([]*Queue, len(d.queues)), IRQ: d, Doorbells: d}
	for i, qs := range d.queues {
		if !qs.enabled {
			continue
		}
		if qs.size > qs.max {
			d.NeedsReset()
			return false
		}
		q, err := NewQueue(d.mem, QueueConfig{Size: qs.size, Desc: qs.desc, Driver: qs.driver, Device: qs.device}, d.drvFeatures)
		if err != nil {
			d.NeedsReset()
			return false
		}
		a.Queues[i] = q
	}
	if err := d.model.Activate(a); err != nil {
		d.NeedsReset()
		return false
	}
	for i, q := range a.Queues {
		d.queues[i].q = q
	}
	d.active = true
	return true
}

func (d *PCIDevice) resetLocked() {
	if d.active {
		d.model.Reset()
	}
	d.active = false
	d.devFeatSel, d.drvFeatSel, d.drvFeatures = 0, 0, 0
	d.status = 0
	d.queueSel = 0
	d.needsReset.Store(false)
	d.isrMu.Lock()
	d.isr = 0
	d.intx.SetPending(false)
	d.isrMu.Unlock()
	d.configVector.Store(NoVector)
	for _, qs := range d.queues {
		qs.size = qs.max
		qs.enabled = false
		qs.desc, qs.driver, qs.device = 0, 0, 0
		qs.vector.Store(NoVector)
		qs.q = nil
	}
}

// UsedBuffer implements Interrupts.
func (d *PCIDevice) UsedBuffer(q int) error {
	if q < 0 || q >= len(d.queues) {
		return fmt.Errorf("%w: queue %d", ErrBadModel, q)
	}
	d.raiseISR(isrQueue)
	return d.signal(d.queues[q].vector.Load())
}

// ConfigChanged implements Interrupts.
func (d *PCIDevice) ConfigChanged() error {
	d.generation.Add(1)
	d.raiseISR(isrConfig)
	return d.signal(d.configVector.Load())
}

// NeedsReset implements Interrupts.
func (d *PCIDevice) NeedsReset() {
	d.needsReset.Store(true)
	d.raiseISR(isrConfig)
	_ = d.signal(d.configVector.Load()) // best effort: the status bit is set either way
}

// raiseISR sets ISR bits; the INTx condition is "ISR non-zero".
func (d *PCIDevice) raiseISR(bits uint8) {
	d.isrMu.Lock()
	defer d.isrMu.Unlock()
	d.isr |= bits
	d.intx.SetPending(true)
}

// takeISR returns and clears the ISR status, lowering INTA#.
func (d *PCIDevice) takeISR() uint8 {
	d.isrMu.Lock()
	defer d.isrMu.Unlock()
	v := d.isr
	d.isr = 0
	d.intx.SetPending(false)
	return v
}

// signal sends vector's MSI-X message when MSI-X is enabled. With MSI-X
// disabled the interrupt went out on INTA# (raiseISR) and vector is
// ignored; with MSI-X enabled and vector NoVector nothing is sent.
func (d *PCIDevice) signal(vector uint32) error {
	if vector == NoVector || !d.msix.Enabled() {
		return nil
	}
	if err := d.msix.Signal(int(vector)); err != nil {
		if errors.Is(err, pci.ErrMSIXDisabled) {
			return nil // disabled since the check: INTA# carries it
		}
		return fmt.Errorf("virtio: interrupt: %w", err)
	}
	return nil
}
