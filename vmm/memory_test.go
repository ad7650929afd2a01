package vmm

import (
	"bytes"
	"errors"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"rainforest/vmm/layout"
	"rainforest/vmm/ram"
)

// TestMemoryBacking plugs, writes and unplugs part of a 4 KiB-page memfd:
// the unplugged range reads zeros and its pages are gone from the file.
func TestMemoryBacking(t *testing.T) {
	const size, block = 16 << 20, 2 << 20
	r, err := ram.Allocate(ram.Options{Name: "rf-test-hotplug", Size: size, PageSize: ram.Page4K, Node: -1, NoReserve: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b := memoryBacking{r}
	blocks := func() int64 {
		var st syscall.Stat_t
		if err := syscall.Fstat(int(r.File.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		return st.Blocks
	}
	if n := blocks(); n != 0 {
		t.Fatalf("%d blocks allocated before any plug", n)
	}
	if err := b.Plug(2*block, 3*block); err != nil {
		t.Fatal(err)
	}
	plugged := blocks()
	if plugged < 3*block/512 {
		t.Fatalf("%d 512-byte blocks after plugging %d bytes", plugged, 3*block)
	}
	data := r.Data[2*block : 5*block]
	for i := range data {
		data[i] = byte(i%251) + 1
	}
	if err := b.Unplug(3*block, block); err != nil {
		t.Fatal(err)
	}
	if n := blocks(); n > plugged-block/512 {
		t.Fatalf("%d blocks after unplugging one block, %d before", n, plugged)
	}
	// The unplugged block is inaccessible now (reading it would fault;
	// populating it fails), its neighbours are not.
	if err := unix.Madvise(r.Data[3*block:4*block], unix.MADV_POPULATE_READ); err == nil {
		t.Fatal("the unplugged block can be read")
	}
	if err := unix.Madvise(r.Data[2*block:3*block], unix.MADV_POPULATE_READ); err != nil {
		t.Fatalf("the plugged block cannot be read: %v", err)
	}
	if r.Data[2*block] != 1 || r.Data[4*block] == 0 {
		t.Fatal("unplug touched its neighbours")
	}
	// Re-plugged memory reads zeros.
	if err := b.Plug(3*block, block); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r.Data[3*block:4*block], make([]byte, block)) {
		t.Fatal("re-plugged block does not read zeros")
	}
	if err := b.Unplug(2*block, 3*block); err != nil {
		t.Fatal(err)
	}
	if n := blocks(); n != 0 {
		t.Fatalf("%d blocks left after unplugging everything", n)
	}
	for _, bad := range [][2]uint64{{1, block}, {0, 1}, {size - block, 2 * block}, {^uint64(0) &^ 4095, 4096}} {
		if err := b.Unplug(bad[0], bad[1]); !errors.Is(err, ram.ErrSize) {
			t.Errorf("Unplug(%#x, %#x): %v", bad[0], bad[1], err)
		}
		if err := b.Plug(bad[0], bad[1]); !errors.Is(err, ram.ErrSize) {
			t.Errorf("Plug(%#x, %#x): %v", bad[0], bad[1], err)
		}
	}
}

func TestHotplugPlacement(t *testing.T) {
	for _, c := range []struct{ mem, want uint64 }{
		{512 << 20, 1 << 32},
		{layout.LowRAMEnd, 1 << 32},
		{layout.LowRAMEnd + 1<<20, 5 << 30},
		{4 << 30, 5 << 30},
		{64 << 30, 65 << 30},
	} {
		if got := layout.HotplugBase(c.mem); got != c.want {
			t.Errorf("HotplugBase(%#x) = %#x, want %#x", c.mem, got, c.want)
		}
	}
	if got := MemoryCmdline(BootCmdline("console=ttyS0", 1, 2)); !strings.HasSuffix(got, "maxcpus=1 memhp_default_state=online_movable") {
		t.Errorf("cmdline %q", got)
	}
}

func TestNoHotplugMemory(t *testing.T) {
	m := &Machine{}
	if err := m.SetMemory(0); !errors.Is(err, ErrNoHotplugMemory) {
		t.Error(err)
	}
	if _, err := m.MemoryState(); !errors.Is(err, ErrNoHotplugMemory) {
		t.Error(err)
	}
}
