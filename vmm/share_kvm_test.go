package vmm

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"rainforest/vmm/config"
	"rainforest/vmm/devices/virtiodev"
	"rainforest/vmm/pci"
	"rainforest/vmm/ram"
	"rainforest/vmm/testguest"
	"rainforest/vmm/vhostuser"
	vut "rainforest/vmm/vhostuser/vhostusertest"
	"rainforest/vmm/virtio"
	vt "rainforest/vmm/virtio/virtiotest"
)

// sameFile reports whether two of this process's descriptors are the same
// open file (kcmp KCMP_FILE).
func sameFile(t *testing.T, a, b int) bool {
	t.Helper()
	pid := uintptr(os.Getpid())
	r, _, errno := unix.Syscall6(unix.SYS_KCMP, pid, pid, 0 /* KCMP_FILE */, uintptr(a), uintptr(b), 0)
	if errno != 0 {
		t.Skipf("kcmp: %v", errno)
	}
	return r == 0
}

// pciConfig reads and writes slot's configuration space through the
// configuration ports, as the guest does.
type pciConfig struct {
	m    *Machine
	slot int
}

func (c pciConfig) addr(off int) {
	var a [4]byte
	binary.LittleEndian.PutUint32(a[:], 1<<31|uint32(c.slot)<<11|uint32(off&^3))
	c.m.PIO.Write(pci.ConfigPortBase, a[:])
}

func (c pciConfig) read(off, n int) uint32 {
	c.addr(off)
	var b [4]byte
	c.m.PIO.Read(pci.ConfigPortBase+4+uint64(off&3), b[:n])
	return binary.LittleEndian.Uint32(b[:])
}

func (c pciConfig) write(off, n int, v uint32) {
	c.addr(off)
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	c.m.PIO.Write(pci.ConfigPortBase+4+uint64(off&3), b[:n])
}

func (m *Machine) mmioWrite(addr uint64, n int, v uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	m.MMIO.Write(addr, b[:n])
}

// A share's queues bypass the VMM: the back end gets the guest RAM's memfd
// in the memory table, the guest's notify write signals the back end's
// kick through KVM (the ioeventfd itself), and the back end's call
// interrupts the guest through KVM (the MSI-X vector's irqfd itself).
func TestKVMShareQueuesBypassTheVMM(t *testing.T) {
	needKVM(t)
	// The back end outlives the machine (cleanups run last first), as a
	// virtiofsd its supervisor stops after the VMM.
	b, err := vut.New(vut.Config{Features: virtio.FeatureVersion1 | vhostuser.FeatureProtocolFeatures,
		Protocol: vhostuser.ProtocolMQ | vhostuser.ProtocolReplyAck, Queues: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	m := newTestMachine(t, onlineCores(t, 1), ram.Page4K, testguest.MinMemory)
	// A back end that is not there is an error naming the share, and
	// leaves no device.
	if _, err := m.AddShare(t.Context(), config.Share{ID: "gone", Tag: "gone", Socket: filepath.Join(t.TempDir(), "none")}, nil); err == nil || !strings.Contains(err.Error(), "share gone") {
		t.Fatalf("share without a back end: %v", err)
	}
	if _, ok := m.DeviceSlots()["gone"]; ok {
		t.Fatal("a share without a back end was plugged")
	}
	uc := b.FrontEnd()
	f, err := uc.File()
	uc.Close()
	if err != nil {
		t.Fatal(err)
	}
	slot, err := m.AddShare(t.Context(), config.Share{ID: "share0", Tag: "home"}, f)
	if err != nil {
		t.Fatal(err)
	}
	cfg := pciConfig{m, slot}
	if id := cfg.read(pci.RegDeviceID, 2); id != virtio.PCIDeviceIDBase+uint32(virtio.TypeFS) {
		t.Fatalf("device id %#x", id)
	}
	bar0 := uint64(cfg.read(pci.RegBAR0, 4))&^0xF | uint64(cfg.read(pci.RegBAR0+4, 4))<<32
	cfg.write(pci.RegCommand, 2, pci.CommandMemory|pci.CommandBusMaster)
	msix := 0
	for ptr := int(cfg.read(pci.RegCapPointer, 1)); ptr != 0; ptr = int(cfg.read(ptr+1, 1)) {
		if cfg.read(ptr, 1) == pci.CapIDMSIX {
			msix = ptr
		}
	}
	// MSI-X: vector v sends 0x40+v to the boot CPU.
	for v := range 3 {
		e := bar0 + virtio.MSIXTableOffset + uint64(16*v)
		m.mmioWrite(e, 4, 0xFEE0_0000)
		m.mmioWrite(e+8, 4, uint64(0x40+v))
		m.mmioWrite(e+12, 4, 0)
	}
	cfg.write(msix+2, 2, 0x8000)
	// The device's configuration: the tag.
	var tag [4]byte
	m.MMIO.Read(bar0+virtio.DeviceCfgOffset, tag[:])
	if string(tag[:]) != "home" {
		t.Fatalf("tag %q", tag)
	}
	// virtio_pci_modern's bring-up.
	common := bar0 + virtio.CommonCfgOffset
	m.mmioWrite(common+0x14, 1, virtio.StatusAcknowledge|virtio.StatusDriver)
	m.mmioWrite(common+0x08, 4, 1)
	m.mmioWrite(common+0x0C, 4, 1) // VERSION_1
	m.mmioWrite(common+0x14, 1, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK)
	m.mmioWrite(common+0x10, 2, 0)
	drivers := []*vt.Driver{vt.NewDriver(m.Mem, 16, 0x100000), vt.NewDriver(m.Mem, 16, 0x110000)}
	for q, drv := range drivers {
		m.mmioWrite(common+0x16, 2, uint64(q))
		m.mmioWrite(common+0x18, 2, 16)
		m.mmioWrite(common+0x20, 8, drv.Desc)
		m.mmioWrite(common+0x28, 8, drv.Avail)
		m.mmioWrite(common+0x30, 8, drv.Used)
		m.mmioWrite(common+0x1A, 2, uint64(q+1))
		m.mmioWrite(common+0x1C, 2, 1)
	}
	m.mmioWrite(common+0x14, 1, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK|virtio.StatusDriverOK)
	var st [1]byte
	m.MMIO.Read(common+0x14, st[:])
	if st[0]&virtio.StatusDeviceNeedsReset != 0 || st[0]&virtio.StatusDriverOK == 0 {
		t.Fatalf("status %#x after DRIVER_OK", st[0])
	}

	// What the back end got: the guest RAM's memfd, and per queue the
	// transport's own kick and call eventfds.
	fn := m.chassis.Device(slot).(*virtiodev.Device).Function()
	kicks, calls := map[uint32]int{}, map[uint32]int{}
	for _, msg := range b.Received() {
		switch msg.Request {
		case vhostuser.SetMemTable:
			table, err := vhostuser.ParseMemoryTable(msg.Payload)
			if err != nil || len(table) != len(m.Mem.Regions()) {
				t.Fatalf("memory table %+v %v", table, err)
			}
			for _, fd := range msg.FDs {
				if !sameFile(t, fd, int(m.ram.File.Fd())) {
					t.Fatal("the memory table's descriptor is not the guest RAM's memfd")
				}
			}
		case vhostuser.SetVringKick, vhostuser.SetVringCall:
			idx, _, err := vhostuser.ParseVringFile(msg.Payload)
			if err != nil || len(msg.FDs) != 1 {
				t.Fatalf("%v: %v, %d descriptors", msg.Request, err, len(msg.FDs))
			}
			if msg.Request == vhostuser.SetVringKick {
				kicks[idx] = msg.FDs[0]
			} else {
				calls[idx] = msg.FDs[0]
			}
		}
	}
	for q := range 2 {
		if !sameFile(t, kicks[uint32(q)], fn.Kick(q).Fd()) {
			t.Fatalf("queue %d: the back end's kick is not the ioeventfd", q)
		}
		if !sameFile(t, calls[uint32(q)], fn.Call(q).Fd()) {
			t.Fatalf("queue %d: the back end's call is not the vector's irqfd", q)
		}
	}

	// DRIVER_OK kicked every queue once (buffers the driver may have
	// queued before); start from zero.
	for _, fd := range kicks {
		var n [8]byte
		_, _ = unix.Read(fd, n[:])
	}
	// The guest notifies queue 1 (a 16-bit write, as Linux's vp_notify),
	// then waits for queue 1's interrupt (vector 2: 0x42).
	var c testguest.Code
	c.MovRAX(fn.NotifyAddrs()[1]).MovRBX(1).Store16()
	c.MovRBX(1).Report(0)
	c.WaitNonZero(testguest.CounterFor(0x42))
	c.MovRBX(2).Report(0)
	c.Spin()
	rec, _ := startGuest(t, m, c.Bytes())
	rec.wait(t, 1)
	var n [8]byte
	if _, err := unix.Read(kicks[1], n[:]); err != nil || binary.LittleEndian.Uint64(n[:]) != 1 {
		t.Fatalf("the back end's kick: %v, count %d", err, binary.LittleEndian.Uint64(n[:]))
	}
	if err := vut.Signal(calls[1]); err != nil {
		t.Fatal(err)
	}
	if ws := rec.wait(t, 2); ws[1].value != 2 {
		t.Fatalf("second report %d", ws[1].value)
	}
}
