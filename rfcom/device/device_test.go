package device

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"rainforest/ficm/endpoint/endpointtest"
	"rainforest/rfcom/fakesys"
	"rainforest/vmm/shmem/abi"
)

const testAddr = "0000:00:04.0"

// fakeSpec describes one fake device in a fake sysfs tree.
type fakeSpec struct {
	id, peers        uint32
	state, rw, out   uint64
	memSize          int64
	sharedMem        string // path of an existing resource2 to link to
	driver           string // bound driver name, "" for none
	noUIO            bool
	config           []byte // overrides the built config space
	vendor, deviceID string
	class            string // "" for a FICM device
	name             string // region name in the capability
	flags            uint32 // capability flags
}

func defaultSpec(id uint32) fakeSpec {
	return fakeSpec{id: id, peers: 2, state: 4096, rw: 4096, out: 16384, memSize: 65536, driver: DriverName}
}

type fakeTree struct {
	sys, dev string
	info     Info
	fifo     string
}

func buildConfig(state, rw, out uint64) []byte {
	return buildCapConfig(state, rw, out, 0, "ficm")
}

func buildCapConfig(state, rw, out uint64, flags uint32, name string) []byte {
	cfg := make([]byte, 256)
	binary.LittleEndian.PutUint16(cfg[cfgVendor:], abi.VendorID)
	binary.LittleEndian.PutUint16(cfg[cfgDevice:], abi.DeviceID)
	binary.LittleEndian.PutUint16(cfg[cfgCommand:], 0x0002|cmdINTxOff) // memory on, INTx masked
	binary.LittleEndian.PutUint16(cfg[cfgStatus:], statusCapList)
	cfg[cfgCapPtr] = 0x40
	// MSI-X capability first, then the vendor capability.
	cfg[0x40], cfg[0x41] = 0x11, 0x50
	cfg[0x50], cfg[0x51], cfg[0x52] = capIDVendor, 0, abi.CapLength
	binary.LittleEndian.PutUint32(cfg[0x54:], uint32(state))
	binary.LittleEndian.PutUint64(cfg[0x58:], rw)
	binary.LittleEndian.PutUint64(cfg[0x60:], out)
	binary.LittleEndian.PutUint32(cfg[0x50+abi.CapFlags:], flags)
	copy(cfg[0x50+abi.CapName:], name)
	return cfg
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func newFakeTree(t *testing.T, s fakeSpec) *fakeTree {
	t.Helper()
	root := t.TempDir()
	ft := &fakeTree{sys: filepath.Join(root, "sys"), dev: filepath.Join(root, "dev")}
	p := filepath.Join(ft.sys, "bus", "pci", "devices", testAddr)
	if s.vendor == "" {
		s.vendor = "0x110a\n"
	}
	if s.deviceID == "" {
		s.deviceID = "0x4106\n"
	}
	writeFile(t, filepath.Join(p, "vendor"), []byte(s.vendor))
	writeFile(t, filepath.Join(p, "device"), []byte(s.deviceID))
	if s.class == "" {
		s.class = "0xff0001\n"
	}
	writeFile(t, filepath.Join(p, "class"), []byte(s.class))
	cfg := s.config
	if cfg == nil {
		if s.name == "" {
			s.name = "ficm"
		}
		cfg = buildCapConfig(s.state, s.rw, s.out, s.flags, s.name)
	}
	writeFile(t, filepath.Join(p, "config"), cfg)
	regs := make([]byte, abi.RegBARSize)
	binary.LittleEndian.PutUint32(regs[abi.RegID:], s.id)
	binary.LittleEndian.PutUint32(regs[abi.RegMaxPeers:], s.peers)
	writeFile(t, filepath.Join(p, "resource0"), regs)
	if s.sharedMem != "" {
		if err := os.Symlink(s.sharedMem, filepath.Join(p, "resource2")); err != nil {
			t.Fatal(err)
		}
	} else {
		writeFile(t, filepath.Join(p, "resource2"), make([]byte, s.memSize))
	}
	drv := filepath.Join(ft.sys, "bus", "pci", "drivers", DriverName)
	writeFile(t, filepath.Join(drv, "new_id"), nil)
	writeFile(t, filepath.Join(drv, "bind"), nil)
	if s.driver != "" {
		other := filepath.Join(ft.sys, "bus", "pci", "drivers", s.driver)
		if err := os.MkdirAll(other, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(other, filepath.Join(p, "driver")); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(ft.dev, 0o755); err != nil {
		t.Fatal(err)
	}
	if !s.noUIO {
		if err := os.MkdirAll(filepath.Join(p, "uio", "uio0"), 0o755); err != nil {
			t.Fatal(err)
		}
		ft.fifo = filepath.Join(ft.dev, "uio0")
		if err := unix.Mkfifo(ft.fifo, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	infos, err := Find(ft.sys)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 1 {
		t.Fatalf("Find = %+v", infos)
	}
	ft.info = infos[0]
	return ft
}

func (ft *fakeTree) open(t *testing.T) *Device {
	t.Helper()
	d, err := Open(context.Background(), ft.sys, ft.dev, ft.info)
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
	ft := newFakeTree(t, defaultSpec(0))
	// A second matching device and a foreign one.
	base := filepath.Join(ft.sys, "bus", "pci", "devices")
	second := filepath.Join(base, "0000:00:03.0")
	writeFile(t, filepath.Join(second, "vendor"), []byte("0x110a\n"))
	writeFile(t, filepath.Join(second, "device"), []byte("0x4106\n"))
	writeFile(t, filepath.Join(second, "class"), []byte("0xff0000\n"))
	writeFile(t, filepath.Join(second, "resource2"), make([]byte, 8192))
	foreign := filepath.Join(base, "0000:00:01.0")
	writeFile(t, filepath.Join(foreign, "vendor"), []byte("0x1af4\n"))
	writeFile(t, filepath.Join(foreign, "device"), []byte("0x1000\n"))

	infos, err := Find(ft.sys)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 2 || infos[0].Address != "0000:00:03.0" || infos[1].Address != testAddr {
		t.Fatalf("Find = %+v", infos)
	}
	i := infos[1]
	p := filepath.Join(base, testAddr)
	if i.ConfigPath != filepath.Join(p, "config") || i.Resource0 != filepath.Join(p, "resource0") ||
		i.Resource2 != filepath.Join(p, "resource2") || i.Resource2Size != 65536 || i.Protocol() != abi.ProtocolFICM {
		t.Fatalf("info = %+v", i)
	}
	if infos[0].Resource2Size != 8192 || infos[0].Protocol() != 0 {
		t.Fatalf("info = %+v", infos[0])
	}
	if got, err := Find(t.TempDir()); err != nil || len(got) != 0 {
		t.Fatalf("Find(empty) = %v, %v", got, err)
	}
}

func TestOpenLayout(t *testing.T) {
	ft := newFakeTree(t, defaultSpec(1))
	d := ft.open(t)
	if d.ID() != 1 || d.Peers() != 2 || d.UIO() != "uio0" {
		t.Fatalf("ID %d Peers %d UIO %q", d.ID(), d.Peers(), d.UIO())
	}
	l := d.Layout()
	if l.StateTableSize() != 4096 || l.RWOffset() != 4096 || l.OutputOffset(0) != 8192 || l.OutputOffset(1) != 8192+16384 || l.Size() != 40960 {
		t.Fatalf("layout %+v", l)
	}
	if len(d.StateTable()) != 4096 || len(d.RW()) != 4096 || len(d.Memory()) != 40960 {
		t.Fatal("section lengths")
	}
	// Views point at the right offsets of the mapping (and the file).
	own, err := d.Output(1)
	if err != nil || len(own) != 16384 {
		t.Fatalf("Output(1) = %d bytes, %v", len(own), err)
	}
	binary.LittleEndian.PutUint32(own[8:], 0xA1B2C3D4)
	binary.LittleEndian.PutUint32(d.RW()[4:], 0x11223344)
	if fileU32(t, ft.info.Resource2, 8192+16384+8) != 0xA1B2C3D4 || fileU32(t, ft.info.Resource2, 4096+4) != 0x11223344 {
		t.Fatal("views not at layout offsets")
	}
	outs := d.Outputs()
	if len(outs) != 2 || &outs[1][0] != &own[0] || len(outs[0]) != 16384 {
		t.Fatal("Outputs")
	}
	if _, err := d.Output(2); !errors.Is(err, ErrNoPeer) {
		t.Fatalf("Output(2) = %v", err)
	}
	// Open enabled interrupts and unmasked INTx.
	if fileU32(t, ft.info.Resource0, abi.RegIntControl) != 1 {
		t.Fatal("INT_CONTROL not set")
	}
	cfg, _ := os.ReadFile(ft.info.ConfigPath)
	if binary.LittleEndian.Uint16(cfg[cfgCommand:]) != 0x0002 {
		t.Fatalf("command = %#x", binary.LittleEndian.Uint16(cfg[cfgCommand:]))
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if fileU32(t, ft.info.Resource0, abi.RegIntControl) != 0 {
		t.Fatal("Close left interrupts on")
	}
	if err := d.Wait(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Wait after Close = %v", err)
	}
	if err := d.Ring(0, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ring after Close = %v", err)
	}
	if _, err := d.State(0); !errors.Is(err, ErrClosed) {
		t.Fatalf("State after Close = %v", err)
	}
	d.SetState(1)
	d.SetInterrupts(true)
}

func TestOpenValidation(t *testing.T) {
	loop := buildConfig(4096, 0, 4096)
	loop[0x51] = 0x40 // vendor capability id changed below, list loops
	loop[0x50] = 0x05
	noCaps := buildConfig(4096, 0, 4096)
	binary.LittleEndian.PutUint16(noCaps[cfgStatus:], 0)
	badPtr := buildConfig(4096, 0, 4096)
	badPtr[0x41] = 0xFC
	shortCap := buildConfig(4096, 0, 4096)
	shortCap[0x52] = 8
	wrongID := buildConfig(4096, 0, 4096)
	wrongID[0] = 0xF4
	badName := buildCapConfig(4096, 0, 4096, 0, "a\nb")
	unpadded := buildCapConfig(4096, 0, 4096, 0, "ab")
	unpadded[0x50+abi.CapName+5] = 'x'
	cases := []struct {
		name string
		mod  func(*fakeSpec)
		want error
	}{
		{"zero peers", func(s *fakeSpec) { s.peers = 0 }, ErrLayout},
		{"too many peers", func(s *fakeSpec) { s.peers = abi.MaxPeers + 1 }, ErrLayout},
		{"peers exceed BAR", func(s *fakeSpec) { s.peers = 4 }, ErrLayout},
		{"id out of range", func(s *fakeSpec) { s.id = 2 }, ErrLayout},
		{"zero output", func(s *fakeSpec) { s.out = 0 }, ErrLayout},
		{"unaligned output", func(s *fakeSpec) { s.out = 5000 }, ErrLayout},
		{"unaligned rw", func(s *fakeSpec) { s.rw = 100 }, ErrLayout},
		{"small state table", func(s *fakeSpec) { s.state = 0 }, ErrLayout},
		{"huge output", func(s *fakeSpec) { s.out = 1 << 63 }, ErrLayout},
		{"huge rw", func(s *fakeSpec) { s.rw = ^uint64(0) &^ (abi.PageSize - 1) }, ErrLayout},
		{"small BAR", func(s *fakeSpec) { s.memSize = 32768 }, ErrLayout},
		{"capability loop", func(s *fakeSpec) { s.config = loop }, ErrCapability},
		{"no capability list", func(s *fakeSpec) { s.config = noCaps }, ErrCapability},
		{"capability outside config", func(s *fakeSpec) { s.config = badPtr }, ErrCapability},
		{"short capability", func(s *fakeSpec) { s.config = shortCap }, ErrCapability},
		{"truncated config", func(s *fakeSpec) { s.config = buildConfig(4096, 0, 4096)[:0x30] }, ErrCapability},
		{"wrong device", func(s *fakeSpec) { s.config = wrongID }, ErrCapability},
		{"unprintable name", func(s *fakeSpec) { s.config = badName }, ErrCapability},
		{"name not NUL-padded", func(s *fakeSpec) { s.config = unpadded }, ErrCapability},
		{"other driver", func(s *fakeSpec) { s.driver = "virtio-pci" }, ErrDriver},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := defaultSpec(0)
			c.mod(&s)
			ft := newFakeTree(t, s)
			d, err := Open(context.Background(), ft.sys, ft.dev, ft.info)
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
}

func TestBind(t *testing.T) {
	s := defaultSpec(0)
	s.driver = ""
	ft := newFakeTree(t, s)
	ft.open(t)
	b, err := os.ReadFile(filepath.Join(ft.sys, "bus", "pci", "drivers", DriverName, "new_id"))
	if err != nil || string(b) != "110a 4106" {
		t.Fatalf("new_id = %q, %v", b, err)
	}

	// The id is already known to the driver (new_id fails): bind by address.
	ft = newFakeTree(t, s)
	drv := filepath.Join(ft.sys, "bus", "pci", "drivers", DriverName)
	if err := os.Remove(filepath.Join(drv, "new_id")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(drv, "new_id"), 0o755); err != nil {
		t.Fatal(err)
	}
	ft.open(t)
	if b, err := os.ReadFile(filepath.Join(drv, "bind")); err != nil || string(b) != testAddr {
		t.Fatalf("bind = %q, %v", b, err)
	}

	// No uio device ever appears: Open gives up when ctx ends.
	s.noUIO = true
	ft = newFakeTree(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := Open(ctx, ft.sys, ft.dev, ft.info); !errors.Is(err, ErrDriver) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Open without uio = %v", err)
	}
}

func TestRingAndState(t *testing.T) {
	ft := newFakeTree(t, defaultSpec(0))
	d := ft.open(t)
	if err := d.Ring(1, 3); err != nil {
		t.Fatal(err)
	}
	if got := fileU32(t, ft.info.Resource0, abi.RegDoorbell); got != 0x0001_0003 {
		t.Fatalf("DOORBELL = %#x", got)
	}
	d.SetState(5)
	if got := fileU32(t, ft.info.Resource0, abi.RegState); got != 5 {
		t.Fatalf("STATE = %#x", got)
	}
	d.SetInterrupts(false)
	if got := fileU32(t, ft.info.Resource0, abi.RegIntControl); got != 0 {
		t.Fatalf("INT_CONTROL = %#x", got)
	}
	if err := d.Ring(2, 0); !errors.Is(err, ErrNoPeer) {
		t.Fatalf("Ring(2) = %v", err)
	}
	if err := d.Ring(0, abi.MaxVector+1); !errors.Is(err, ErrVector) {
		t.Fatalf("Ring(vector) = %v", err)
	}
	// The state table is written by the VMM; emulate it through the file.
	f, err := os.OpenFile(ft.info.Resource2, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{7, 0, 0, 0}, 4); err != nil {
		t.Fatal(err)
	}
	if st, err := d.State(1); err != nil || st != 7 {
		t.Fatalf("State(1) = %d, %v", st, err)
	}
	if _, err := d.State(-1); !errors.Is(err, ErrNoPeer) {
		t.Fatalf("State(-1) = %v", err)
	}
}

func TestWait(t *testing.T) {
	ft := newFakeTree(t, defaultSpec(0))
	d := ft.open(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := d.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait = %v", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatal("Wait overran its deadline")
	}

	// An interrupt: the kernel masked INTx, INT_STATUS has vector 2.
	cfg, err := os.OpenFile(ft.info.ConfigPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer cfg.Close()
	if _, err := cfg.WriteAt([]byte{0x02, 0x04}, cfgCommand); err != nil {
		t.Fatal(err)
	}
	reg, err := word(d.regs, abi.RegIntStatus)
	if err != nil {
		t.Fatal(err)
	}
	reg.Store(1 << 2)
	w, err := os.OpenFile(ft.fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write([]byte{1, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	status, err := d.WaitStatus(context.Background())
	if err != nil || status != 1<<2 {
		t.Fatalf("WaitStatus = %#x, %v", status, err)
	}
	var b [2]byte
	if _, err := cfg.ReadAt(b[:], cfgCommand); err != nil || binary.LittleEndian.Uint16(b[:]) != 0x0002 {
		t.Fatalf("command after Wait = %x, %v", b, err)
	}
}

// An idle Wait sleeps in one poll(2) call, with no periodic wake-up, and
// still ends at once when its context ends or the device is closed.
func TestWaitIdle(t *testing.T) {
	ft := newFakeTree(t, defaultSpec(0))
	d := ft.open(t)
	waitPolls := func(n uint64) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); d.uioDev.w.Polls() < n; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d poll calls, want %d", d.uioDev.w.Polls(), n)
			}
		}
	}
	returned := func(errc <-chan error) error {
		t.Helper()
		select {
		case err := <-errc:
			return err
		case <-time.After(time.Second):
			t.Fatal("Wait did not return within 1 s")
			return nil
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- d.Wait(ctx) }()
	waitPolls(1)
	time.Sleep(300 * time.Millisecond)
	if n := d.uioDev.w.Polls(); n != 1 {
		t.Errorf("%d poll calls in 300 ms of an idle Wait, want 1", n)
	}
	cancel()
	if err := returned(errc); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait after cancel = %v", err)
	}
	go func() { errc <- d.Wait(context.Background()) }()
	waitPolls(2)
	w := d.uioDev.w
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := returned(errc); !errors.Is(err, ErrClosed) {
		t.Fatalf("Wait after Close = %v", err)
	}
	if n := w.Polls(); n != 2 {
		t.Errorf("%d poll calls, want 2", n)
	}
}

func TestEndpointExchange(t *testing.T) {
	a := newFakeTree(t, defaultSpec(0))
	sb := defaultSpec(1)
	sb.sharedMem = a.info.Resource2
	b := newFakeTree(t, sb)
	da, db := a.open(t), b.open(t)

	opts := EndpointOptions{Slots: 64, PollRounds: 4, RequireFICM: true}
	ea, err := da.NewEndpoint(opts)
	if err != nil {
		t.Fatal(err)
	}
	eb, err := db.NewEndpoint(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	vmm, err := fakesys.StartVMM(fakesys.ShmemRegisters(), []fakesys.Peer{
		{ID: da.ID(), Resource0: a.info.Resource0, UIO: a.fifo},
		{ID: db.ID(), Resource0: b.info.Resource0, UIO: b.fifo},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer vmm.Stop()

	const n = 2000
	if err := endpointtest.Echo(ctx, ea, eb, 1, n); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d messages echoed, %d doorbells delivered", n, vmm.Rung())
}

func TestEndpointConfigErrors(t *testing.T) {
	ft := newFakeTree(t, defaultSpec(0))
	d := ft.open(t)
	if _, err := d.EndpointConfig(EndpointOptions{Slots: 1024}); !errors.Is(err, ErrLayout) {
		t.Fatalf("oversized rings = %v", err)
	}
	if _, err := d.EndpointConfig(EndpointOptions{Slots: 64, Vector: -1}); !errors.Is(err, ErrVector) {
		t.Fatalf("bad vector = %v", err)
	}
	cfg, err := d.EndpointConfig(EndpointOptions{Slots: 64, UseStateTable: true})
	if err != nil || cfg.State == nil || cfg.State.Alive(1) || len(cfg.Sections) != 2 {
		t.Fatalf("EndpointConfig = %+v, %v", cfg, err)
	}
	if err := cfg.Doorbell.Ring(1); err != nil || fileU32(t, ft.info.Resource0, abi.RegDoorbell) != 0x0001_0000 {
		t.Fatalf("doorbell = %v", err)
	}
}

func TestNameFlagsAndNoInterrupts(t *testing.T) {
	s := defaultSpec(1)
	s.driver = ""
	s.noUIO = true
	s.class = "0xff0002\n"
	s.name = "shared.seg-1"
	s.flags = abi.CapFlagRWReadOnly
	ft := newFakeTree(t, s)
	if ft.info.Name != "shared.seg-1" || !ft.info.RWReadOnly() || ft.info.Protocol() != abi.ProtocolSegment {
		t.Fatalf("Find info = %+v", ft.info)
	}
	d, err := Open(context.Background(), ft.sys, ft.dev, ft.info, WithoutInterrupts())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Name() != "shared.seg-1" || !d.RWReadOnly() || d.Flags() != abi.CapFlagRWReadOnly || d.UIO() != "" || d.Info().Name != d.Name() {
		t.Fatalf("Name %q RWReadOnly %v UIO %q", d.Name(), d.RWReadOnly(), d.UIO())
	}
	if len(d.RW()) != 4096 {
		t.Fatalf("RW %d bytes", len(d.RW()))
	}
	// No driver was bound and interrupts were left alone.
	b, err := os.ReadFile(filepath.Join(ft.sys, "bus", "pci", "drivers", DriverName, "new_id"))
	if err != nil || len(b) != 0 {
		t.Fatalf("new_id = %q, %v", b, err)
	}
	if fileU32(t, ft.info.Resource0, abi.RegIntControl) != 0 {
		t.Fatal("INT_CONTROL set")
	}
	if err := d.Wait(context.Background()); !errors.Is(err, ErrNoInterrupts) {
		t.Fatalf("Wait = %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Wait(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Wait after Close = %v", err)
	}
}

func TestEndpointSectionOffset(t *testing.T) {
	ft := newFakeTree(t, defaultSpec(0))
	d := ft.open(t)
	cfg, err := d.EndpointConfig(EndpointOptions{Slots: 8, SectionOffset: 4096})
	if err != nil {
		t.Fatal(err)
	}
	out0, _ := d.Output(0)
	out1, _ := d.Output(1)
	if len(cfg.Sections) != 2 || &cfg.Sections[0][0] != &out0[4096] || &cfg.Sections[1][0] != &out1[4096] || len(cfg.Sections[1]) != len(out1)-4096 {
		t.Fatal("sections not at the offset")
	}
	for _, off := range []int{-64, 100, 16384 + 64} {
		if _, err := d.EndpointConfig(EndpointOptions{Slots: 8, SectionOffset: off}); !errors.Is(err, ErrLayout) {
			t.Errorf("offset %d = %v", off, err)
		}
	}
	// 2 peers, 16 slots: an 8 KiB section fits the 16 KiB output after
	// 8192 bytes, but not after 12288.
	if _, err := d.EndpointConfig(EndpointOptions{Slots: 16, SectionOffset: 8192}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.EndpointConfig(EndpointOptions{Slots: 16, SectionOffset: 12288}); !errors.Is(err, ErrLayout) {
		t.Fatalf("offset 12288 = %v", err)
	}
}
