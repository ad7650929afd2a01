package ivshmem_test

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"rainforest/ficm/endpoint/endpointtest"
	"rainforest/rfcom/device"
	"rainforest/rfcom/fakesys"
	"rainforest/rfcom/ivshmem"
	"rainforest/rfcom/ivshmem/ivshmemfake"
)

const (
	addr    = "0000:00:05.0"
	memSize = 1 << 20
)

func newTree(t *testing.T) *fakesys.Tree {
	t.Helper()
	tr, err := fakesys.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func add(t *testing.T, tr *fakesys.Tree, d ivshmemfake.Device) string {
	t.Helper()
	mem, err := ivshmemfake.Add(tr, d)
	if err != nil {
		t.Fatal(err)
	}
	return mem
}

func find(t *testing.T, tr *fakesys.Tree) ivshmem.Info {
	t.Helper()
	infos, err := ivshmem.Find(tr.Sys)
	if err != nil || len(infos) != 1 {
		t.Fatalf("Find = %+v, %v", infos, err)
	}
	return infos[0]
}

func open(t *testing.T, tr *fakesys.Tree, info ivshmem.Info) *ivshmem.Device {
	t.Helper()
	d, err := ivshmem.Open(context.Background(), tr.Sys, tr.Dev, info)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

func fileU32(t *testing.T, path string, off int) uint32 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint32(b[off:])
}

func TestFind(t *testing.T) {
	tr := newTree(t)
	add(t, tr, ivshmemfake.Device{Address: addr, ID: 1, MemSize: memSize})
	add(t, tr, ivshmemfake.Device{Address: "0000:00:03.0", MemSize: 8192, NoBAR1: true})
	// Foreign and odd functions are skipped.
	for name, files := range map[string]map[string]string{
		"0000:00:01.0": {"vendor": "0x110a\n", "device": "0x4106\n"},
		"0000:00:02.0": {"vendor": "garbage", "device": "0x1110\n"},
		"0000:00:06.0": {"vendor": "0x1af4\n"},
	} {
		for f, c := range files {
			p := filepath.Join(tr.Path(name), f)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	infos, err := ivshmem.Find(tr.Sys)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 2 || infos[0].Address != "0000:00:03.0" || infos[1].Address != addr {
		t.Fatalf("Find = %+v", infos)
	}
	i := infos[1]
	p := tr.Path(addr)
	if i.Path != p || i.ConfigPath != filepath.Join(p, "config") || i.Resource0 != filepath.Join(p, "resource0") ||
		i.Resource2 != filepath.Join(p, "resource2") || i.Resource0Size != 256 || i.Resource2Size != memSize || !i.Doorbell {
		t.Fatalf("info = %+v", i)
	}
	if infos[0].Doorbell || infos[0].Resource2Size != 8192 {
		t.Fatalf("plain info = %+v", infos[0])
	}
	if got, err := ivshmem.Find(t.TempDir()); err != nil || len(got) != 0 {
		t.Fatalf("Find(empty) = %v, %v", got, err)
	}
	// A matching function without its memory BAR is an error.
	if err := os.Remove(filepath.Join(p, "resource2")); err != nil {
		t.Fatal(err)
	}
	if _, err := ivshmem.Find(tr.Sys); err == nil {
		t.Fatal("Find without resource2 succeeded")
	}
}

func TestOpen(t *testing.T) {
	tr := newTree(t)
	add(t, tr, ivshmemfake.Device{Address: addr, ID: 3, MemSize: memSize, UIO: true, Unbound: true})
	info := find(t, tr)
	d := open(t, tr, info)
	if d.ID() != 3 || d.UIO() != "uio0" || !d.Interrupts() || len(d.Memory()) != memSize || len(d.BoardPage()) != 4096 {
		t.Fatalf("ID %d UIO %q Interrupts %v memory %d", d.ID(), d.UIO(), d.Interrupts(), len(d.Memory()))
	}
	// Bound through new_id, INTx unmasked, every interrupt source enabled.
	b, err := os.ReadFile(filepath.Join(tr.Sys, "bus", "pci", "drivers", "uio_pci_generic", "new_id"))
	if err != nil || string(b) != "1af4 1110" {
		t.Fatalf("new_id = %q, %v", b, err)
	}
	cfg, _ := os.ReadFile(info.ConfigPath)
	if cmd := binary.LittleEndian.Uint16(cfg[4:]); cmd != 0x0002 {
		t.Fatalf("command = %#x", cmd)
	}
	if fileU32(t, info.Resource0, ivshmem.RegIntrMask) != 0xFFFF_FFFF {
		t.Fatal("IntrMask not set")
	}
	// Memory is the file.
	binary.LittleEndian.PutUint32(d.Memory()[8192:], 0xA1B2C3D4)
	if fileU32(t, info.Resource2, 8192) != 0xA1B2C3D4 {
		t.Fatal("memory not mapped")
	}
	if err := d.Ring(1, 2); err != nil || fileU32(t, info.Resource0, ivshmem.RegDoorbell) != 0x0001_0002 {
		t.Fatalf("Ring = %v, Doorbell %#x", err, fileU32(t, info.Resource0, ivshmem.RegDoorbell))
	}
	for _, c := range []struct{ peer, vector int }{{-1, 0}, {0x10000, 0}, {0, -1}, {0, 0x10000}} {
		if err := d.Ring(c.peer, c.vector); !errors.Is(err, ivshmem.ErrNoPeer) && !errors.Is(err, ivshmem.ErrVector) {
			t.Errorf("Ring(%d, %d) = %v", c.peer, c.vector, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := d.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait = %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if fileU32(t, info.Resource0, ivshmem.RegIntrMask) != 0 {
		t.Fatal("Close left IntrMask set")
	}
	if err := d.Wait(context.Background()); !errors.Is(err, ivshmem.ErrClosed) {
		t.Fatalf("Wait after Close = %v", err)
	}
	if err := d.Ring(0, 0); !errors.Is(err, ivshmem.ErrClosed) {
		t.Fatalf("Ring after Close = %v", err)
	}
	if d.Memory() != nil || d.BoardPage() != nil || d.Interrupts() {
		t.Fatal("views after Close")
	}
	if _, err := d.NewEndpoint(2, 64); !errors.Is(err, ivshmem.ErrClosed) {
		t.Fatalf("NewEndpoint after Close = %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestWaitINTx(t *testing.T) {
	tr := newTree(t)
	add(t, tr, ivshmemfake.Device{Address: addr, MemSize: memSize, UIO: true})
	info := find(t, tr)
	d := open(t, tr, info)
	cfg, err := os.OpenFile(info.ConfigPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer cfg.Close()
	// The kernel masked INTx on the interrupt.
	if _, err := cfg.WriteAt([]byte{0x02, 0x04}, 4); err != nil {
		t.Fatal(err)
	}
	w, err := os.OpenFile(filepath.Join(tr.Dev, "uio0"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write([]byte{1, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	if err := d.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	var b [2]byte
	if _, err := cfg.ReadAt(b[:], 4); err != nil || binary.LittleEndian.Uint16(b[:]) != 0x0002 {
		t.Fatalf("command after Wait = %x, %v", b, err)
	}
}

func TestNoInterrupts(t *testing.T) {
	// ivshmem-doorbell: interrupt pin 0 (MSI-X only).
	tr := newTree(t)
	add(t, tr, ivshmemfake.Device{Address: addr, MemSize: memSize, NoPin: true, UIO: true})
	info := find(t, tr)
	d := open(t, tr, info)
	if d.Interrupts() {
		t.Fatal("Interrupts without a pin")
	}
	if err := d.Wait(context.Background()); !errors.Is(err, ivshmem.ErrNoInterrupts) {
		t.Fatalf("Wait = %v", err)
	}
	// WithoutInterrupts.
	tr = newTree(t)
	add(t, tr, ivshmemfake.Device{Address: addr, MemSize: memSize, UIO: true})
	info = find(t, tr)
	d, err := ivshmem.Open(context.Background(), tr.Sys, tr.Dev, info, ivshmem.WithoutInterrupts())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Interrupts() || !errors.Is(d.Wait(context.Background()), ivshmem.ErrNoInterrupts) {
		t.Fatal("interrupts WithoutInterrupts")
	}
}

func TestOpenValidation(t *testing.T) {
	cases := []struct {
		name string
		dev  ivshmemfake.Device
		mod  func(t *testing.T, tr *fakesys.Tree)
		want error
	}{
		{"revision 0", ivshmemfake.Device{Revision0: true}, nil, ivshmem.ErrDevice},
		{"small register BAR", ivshmemfake.Device{RegSize: 16}, nil, ivshmem.ErrLayout},
		{"empty memory", ivshmemfake.Device{MemSize: -1}, nil, ivshmem.ErrLayout},
		{"one page of memory", ivshmemfake.Device{MemSize: 4096}, nil, ivshmem.ErrLayout},
		{"unaligned memory", ivshmemfake.Device{MemSize: 3*4096 + 8}, nil, ivshmem.ErrLayout},
		{"IVPosition out of range", ivshmemfake.Device{ID: 0x10000}, nil, ivshmem.ErrLayout},
		{"truncated config", ivshmemfake.Device{}, func(t *testing.T, tr *fakesys.Tree) {
			if err := os.Truncate(filepath.Join(tr.Path(addr), "config"), 0x30); err != nil {
				t.Fatal(err)
			}
		}, ivshmem.ErrDevice},
		{"wrong identity", ivshmemfake.Device{}, func(t *testing.T, tr *fakesys.Tree) {
			f, err := os.OpenFile(filepath.Join(tr.Path(addr), "config"), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt([]byte{0x0a, 0x11}, 0); err != nil {
				t.Fatal(err)
			}
		}, ivshmem.ErrDevice},
		{"other driver", ivshmemfake.Device{Unbound: true}, func(t *testing.T, tr *fakesys.Tree) {
			other := filepath.Join(tr.Sys, "bus", "pci", "drivers", "ivshmem")
			if err := os.MkdirAll(other, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(other, filepath.Join(tr.Path(addr), "driver")); err != nil {
				t.Fatal(err)
			}
		}, device.ErrDriver},
		{"memory BAR is a directory", ivshmemfake.Device{}, func(t *testing.T, tr *fakesys.Tree) {
			p := filepath.Join(tr.Path(addr), "resource2")
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}, ivshmem.ErrLayout},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tr := newTree(t)
			c.dev.Address = addr
			c.dev.UIO = true
			switch c.dev.MemSize {
			case 0:
				c.dev.MemSize = memSize
			case -1:
				c.dev.MemSize = 0
			}
			add(t, tr, c.dev)
			info := ivshmem.Info{Address: addr, Path: tr.Path(addr), ConfigPath: filepath.Join(tr.Path(addr), "config"),
				Resource0: filepath.Join(tr.Path(addr), "resource0"), Resource2: filepath.Join(tr.Path(addr), "resource2")}
			if c.mod != nil {
				c.mod(t, tr)
			}
			d, err := ivshmem.Open(context.Background(), tr.Sys, tr.Dev, info)
			if !errors.Is(err, c.want) {
				if d != nil {
					d.Close()
				}
				t.Fatalf("Open = %v, want %v", err, c.want)
			}
			if d != nil {
				t.Fatal("Open returned a device with an error")
			}
			t.Log(err)
		})
	}
	// No uio device ever appears: Open gives up when ctx ends.
	tr := newTree(t)
	add(t, tr, ivshmemfake.Device{Address: addr, MemSize: memSize})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := ivshmem.Open(ctx, tr.Sys, tr.Dev, find(t, tr)); !errors.Is(err, device.ErrDriver) {
		t.Fatalf("Open without uio = %v", err)
	}
}

func TestEndpointConfig(t *testing.T) {
	tr := newTree(t)
	add(t, tr, ivshmemfake.Device{Address: addr, ID: 1, MemSize: 64 << 10, UIO: true})
	info := find(t, tr)
	d := open(t, tr, info)
	cfg, err := d.EndpointConfig(2, 16)
	if err != nil {
		t.Fatal(err)
	}
	size := cfg.Layout.SectionSize()
	mem := d.Memory()
	if cfg.Self != 1 || cfg.State != nil || len(cfg.Sections) != 2 || &cfg.Sections[0][0] != &mem[4096] ||
		&cfg.Sections[1][0] != &mem[4096+size] || len(cfg.Sections[1]) != size {
		t.Fatalf("config %+v", cfg)
	}
	if err := cfg.Doorbell.Ring(0); err != nil || fileU32(t, info.Resource0, ivshmem.RegDoorbell) != 0 {
		t.Fatalf("doorbell = %v", err)
	}
	for _, c := range []struct{ peers, slots int }{{1, 16}, {0x10001, 16}, {2, 3}, {2, 1024}, {64, 64}} {
		if _, err := d.EndpointConfig(c.peers, c.slots); !errors.Is(err, ivshmem.ErrLayout) {
			t.Errorf("EndpointConfig(%d, %d) = %v", c.peers, c.slots, err)
		}
	}
	// This peer must be in the group.
	tr = newTree(t)
	add(t, tr, ivshmemfake.Device{Address: addr, ID: 2, MemSize: 64 << 10, UIO: true})
	d = open(t, tr, find(t, tr))
	if _, err := d.NewEndpoint(2, 16); !errors.Is(err, ivshmem.ErrNoPeer) {
		t.Fatalf("id 2 of 2 = %v", err)
	}
}

// twoPeers opens two fake functions with ids 0 and 1 on one memory file,
// and a fake VMM delivering their doorbells.
func twoPeers(t *testing.T) (a, b *ivshmem.Device, vmm *fakesys.VMM) {
	t.Helper()
	ta, tb := newTree(t), newTree(t)
	mem := add(t, ta, ivshmemfake.Device{Address: addr, ID: 0, MemSize: memSize, UIO: true})
	add(t, tb, ivshmemfake.Device{Address: addr, ID: 1, UIO: true, SharedMemory: mem})
	ia, ib := find(t, ta), find(t, tb)
	a, b = open(t, ta, ia), open(t, tb, ib)
	vmm, err := ivshmemfake.StartVMM([]ivshmemfake.Peer{
		{Resource0: ia.Resource0, UIO: filepath.Join(ta.Dev, "uio0")},
		{Resource0: ib.Resource0, UIO: filepath.Join(tb.Dev, "uio0")},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(vmm.Stop)
	return a, b, vmm
}

func TestEchoExchange(t *testing.T) {
	da, db, vmm := twoPeers(t)
	ea, err := da.NewEndpoint(2, 64)
	if err != nil {
		t.Fatal(err)
	}
	eb, err := db.NewEndpoint(2, 64)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const n = 2000
	if err := endpointtest.Echo(ctx, ea, eb, 0x80, n); err != nil {
		t.Fatal(err)
	}
	if vmm.Rung() == 0 {
		t.Fatal("no doorbell was rung")
	}
	t.Logf("%d messages echoed, %d doorbells delivered", n, vmm.Rung())
}
