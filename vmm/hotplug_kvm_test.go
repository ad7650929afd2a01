package vmm

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"rainforest/vmm/devices/shmemdev"
	"rainforest/vmm/layout"
	"rainforest/vmm/platform/hotplug"
	"rainforest/vmm/ram"
	"rainforest/vmm/shmem"
	"rainforest/vmm/shmem/abi"
	"rainforest/vmm/testguest"
	"rainforest/vmm/virtio/blk"
)

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// hotplugReg reads a hotplug controller register as the guest's AML does.
func hotplugReg(m *Machine, off uint64) uint32 {
	var b [4]byte
	m.PIO.Read(layout.PCIHotplugPort+off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

// guestEject writes slot's bit to the eject register, as the guest's _EJ0
// does once it has released the device.
func guestEject(m *Machine, slot int) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], 1<<slot)
	m.PIO.Write(layout.PCIHotplugPort+hotplug.RegEject, b[:])
}

// A disk and a shared-memory function hot-added to a running machine are
// announced to the guest; a removal the guest does not answer fails by
// name and leaves the device working; once the guest releases them, every
// memory slot, GSI, route, irqfd, ioeventfd and file descriptor they took
// is back.
func TestKVMHotplugGivesEverythingBack(t *testing.T) {
	needKVM(t)
	l := abi.Layout{Peers: 2, RWSize: 8192, OutputSize: 4096}
	region := sharedPage(t, int(l.Size()))
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	m := newTestMachine(t, onlineCores(t, 1), ram.Page4K, testguest.MinMemory)
	var c testguest.Code
	c.MovRBX(1).Report(0).Spin()
	rec, _ := startGuest(t, m, c.Bytes())
	rec.wait(t, 1)
	baseUse, baseFDs := m.VM().Usage(), openFDs(t)

	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	model, err := blk.New(f, blk.Options{ID: "hot"})
	if err != nil {
		t.Fatal(err)
	}
	diskSlot, err := m.AddVirtio("hot", model, f)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.AddVirtio("hot", model, nil); !errors.Is(err, ErrDeviceExists) {
		t.Errorf("second device with id hot: %v", err)
	}
	seg, err := m.AddSharedMemory(shmemdev.Config{ID: 0, Layout: l, Region: region, Vectors: 2, Identity: shmem.Identity{Protocol: abi.ProtocolSegment, Name: "seg"}})
	if err != nil {
		t.Fatal(err)
	}
	up := hotplugReg(m, hotplug.RegUp)
	if up != 1<<diskSlot|1<<seg.Slot() {
		t.Fatalf("UP register %#x, want slots %d and %d", up, diskSlot, seg.Slot())
	}
	use := m.VM().Usage()
	if use.GSIs <= baseUse.GSIs || use.Slots <= baseUse.Slots || use.IOEventFDs <= baseUse.IOEventFDs {
		t.Fatalf("hot-added devices hold nothing? %+v vs %+v", use, baseUse)
	}

	// The guest does not let go: a clear error, the device stays.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	err = m.RemoveDevice(ctx, "hot")
	cancel()
	if !errors.Is(err, ErrNotReleased) {
		t.Fatalf("removal the guest ignored: %v", err)
	}
	if _, ok := m.DeviceSlots()["hot"]; !ok || m.VM().Usage() != use {
		t.Fatalf("a refused removal changed the machine: %v %+v", m.DeviceSlots(), m.VM().Usage())
	}
	if err := m.RemoveDevice(context.Background(), "nope"); !errors.Is(err, ErrNoDevice) {
		t.Errorf("removal of an unknown device: %v", err)
	}

	// The guest releases both.
	for _, d := range []struct {
		id   string
		slot int
	}{{"hot", diskSlot}, {RegionDeviceID("seg"), seg.Slot()}} {
		done := make(chan error, 1)
		go func() { done <- m.RemoveDevice(context.Background(), d.id) }()
		deadline := time.Now().Add(10 * time.Second)
		for hotplugReg(m, hotplug.RegDown)&(1<<d.slot) == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("no eject request for slot %d", d.slot)
			}
			time.Sleep(time.Millisecond)
		}
		guestEject(m, d.slot)
		if err := <-done; err != nil {
			t.Fatalf("remove %s: %v", d.id, err)
		}
	}
	if len(m.DeviceSlots()) != 0 {
		t.Errorf("devices left: %v", m.DeviceSlots())
	}
	if got := m.VM().Usage(); got != baseUse {
		t.Errorf("after hot-remove the VM holds %+v, before hot-add %+v", got, baseUse)
	}
	if got := openFDs(t); got != baseFDs {
		t.Errorf("%d descriptors open after hot-remove, %d before hot-add", got, baseFDs)
	}
	// The guest may also release a device nobody asked for.
	slot, err := m.AddVirtio("again", model, nil)
	if err != nil {
		t.Fatal(err)
	}
	guestEject(m, slot)
	if r := m.Released(); len(r) != 1 || r[0] != "again" {
		t.Errorf("released %v", r)
	}
}
