package vmmctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"rainforest/rfm/region"
	"rainforest/vmm/config"
	"rainforest/vmm/devices/shmemdev"
	"rainforest/vmm/shmem/abi"
)

// handler is a fake VMM: disks attach unless the path says otherwise, and
// detach needs release() or fails when its context ends.
type handler struct {
	mu      sync.Mutex
	devices []Device
	release chan struct{}
	granted []*os.File
	// backing is the first byte of the last attached disk's file.
	backing string
	// pins are the two vCPUs' cores.
	pins []VCPUPin
	// mem is the hotplug memory: a guest that plugs at most 4 blocks.
	mem Memory
}

const fakeBlock = 2 << 20

// SetMemory plays a guest that plugs up to 4 blocks of a 16-block region
// at once and then stalls until ctx ends.
func (h *handler) SetMemory(ctx context.Context, requested uint64) (Memory, error) {
	h.mu.Lock()
	if requested%fakeBlock != 0 || requested > 16*fakeBlock {
		h.mu.Unlock()
		return Memory{}, fmt.Errorf("%w: requested %d", ErrInvalid, requested)
	}
	h.mem = Memory{Requested: requested, Plugged: min(requested, 4*fakeBlock), RegionSize: 16 * fakeBlock, BlockSize: fakeBlock}
	st := h.mem
	h.mu.Unlock()
	if st.Plugged != st.Requested {
		<-ctx.Done()
	}
	return st, nil
}

func (h *handler) Memory() (Memory, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.mem, nil
}

func (h *handler) AttachDisk(_ context.Context, d config.Disk, backing *os.File) (Device, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if backing != nil {
		b := make([]byte, 1)
		backing.ReadAt(b, 0)
		backing.Close()
		h.backing = string(b)
	}
	if strings.Contains(d.Path, "missing") {
		return Device{}, fmt.Errorf("%w: %s: no such file", ErrInvalid, d.Path)
	}
	for _, x := range h.devices {
		if x.ID == d.ID {
			return Device{}, fmt.Errorf("%w: %q", ErrExists, d.ID)
		}
	}
	dev := Device{ID: d.ID, Kind: "disk", Slot: 3 + len(h.devices), Path: d.Path, ReadOnly: d.ReadOnly}
	h.devices = append(h.devices, dev)
	return dev, nil
}

func (h *handler) Grant(_ context.Context, r config.Region, files []*os.File) (Device, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.granted = files
	return Device{ID: "region/" + r.Name, Kind: "region", Name: r.Name, Slot: 9}, nil
}

func (h *handler) Detach(ctx context.Context, id string) error {
	if id == "nope" {
		return fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	select {
	case <-h.release:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %q is still in use", ErrNotReleased, id)
	}
}

func (h *handler) Devices() []Device {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Device(nil), h.devices...)
}

func (h *handler) Export() ([]config.Region, []*os.File) { return nil, nil }

// SetCPUs plays a machine of two vCPUs on a host of cores 0-3.
func (h *handler) SetCPUs(cores []int) ([]VCPUPin, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(cores) > 2 {
		return nil, fmt.Errorf("%w: %d cores for 2 vCPUs", ErrInvalid, len(cores))
	}
	for _, c := range cores {
		if c < 0 || c > 3 {
			return nil, fmt.Errorf("%w: core %d is not online", ErrInvalid, c)
		}
	}
	h.pins = []VCPUPin{{VCPU: 0, Core: cores[0], TID: 100}, {VCPU: 1, Core: cores[0], TID: 101}}
	if len(cores) > 1 {
		h.pins[1].Core = cores[1]
	}
	return append([]VCPUPin(nil), h.pins...), nil
}

func (h *handler) VCPUs() []VCPUPin {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]VCPUPin(nil), h.pins...)
}

// The launch document and its files arrive; later requests reach the
// handler and come back with their errors classified.
func TestLaunchAndRequests(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.ctl")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := &config.Document{Version: config.Version, Name: "web", Kernel: "/k", Cores: []int{1}, Memory: 64 << 20,
		Regions: []config.Region{{Name: "seg", Protocol: 2, Peers: 2, RWSize: 4096, OutputSize: 4096, Vectors: 1, Self: 1}}}
	all := tempFiles(t, 5)
	files, table := LaunchFiles(all[:3], map[string]*os.File{config.FileKernel: all[3]})
	doc.Files = table
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := SendLaunch(c, doc, files[:2]); err == nil {
		t.Fatal("launch with too few files sent")
	}
	if err := SendLaunch(c, doc, files); err != nil {
		t.Fatal(err)
	}
	l, err := AcceptLaunch(ln, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if l.From.PID != int32(os.Getpid()) || l.From.UID != uint32(os.Geteuid()) {
		t.Errorf("launch from %+v, want this process", l.From)
	}
	if l.Config.Name != "web" || len(l.Files) != 3 || len(l.Named) != 1 {
		t.Fatalf("launch %+v with %d files, named %v", l.Config, len(l.Files), l.Named)
	}
	b := make([]byte, 1)
	if _, err := l.Named[config.FileKernel].ReadAt(b, 0); err != nil || string(b) != "d" {
		t.Errorf("named kernel file reads %q, %v", b, err)
	}
	l.Named[config.FileKernel].Close()
	for _, f := range l.Files {
		f.Close()
	}
	if err := l.Reply(nil); err != nil {
		t.Fatal(err)
	}
	if m, _, err := Recv(c); err != nil || m.Error != "" {
		t.Fatalf("launch reply %+v %v", m, err)
	}

	h := &handler{release: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		Serve(ctx, ln, l.From.UID, h, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	defer func() { cancel(); <-served }()

	bg := context.Background()
	// The listener was made here, so this process serves it.
	vm := VMM{Path: path, PID: os.Getpid()}
	d, err := AttachDisk(bg, vm, config.Disk{ID: "data", Path: "/d.img", ReadOnly: true}, all[4])
	if err != nil || d.Slot != 3 || !d.ReadOnly {
		t.Fatalf("AttachDisk = %+v, %v", d, err)
	}
	h.mu.Lock()
	if h.backing != "e" {
		t.Errorf("disk backing reads %q, want the file sent", h.backing)
	}
	h.mu.Unlock()
	if _, err := AttachDisk(bg, vm, config.Disk{ID: "data", Path: "/e.img"}, nil); !errors.Is(err, ErrExists) {
		t.Errorf("second disk data: %v", err)
	}
	if _, err := AttachDisk(bg, vm, config.Disk{ID: "x", Path: "/missing.img"}, nil); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing disk: %v", err)
	}
	devs, err := Devices(bg, vm)
	if err != nil || len(devs) != 1 || devs[0].ID != "data" {
		t.Errorf("Devices = %+v, %v", devs, err)
	}
	if err := Detach(bg, vm, "nope", time.Second); !errors.Is(err, ErrNotFound) {
		t.Errorf("detach of an unknown device: %v", err)
	}
	if err := Detach(bg, vm, "data", 50*time.Millisecond); !errors.Is(err, ErrNotReleased) {
		t.Errorf("detach the guest ignores: %v", err)
	}
	h.release <- struct{}{}
	if err := Detach(bg, vm, "data", 5*time.Second); err != nil {
		t.Errorf("detach: %v", err)
	}
	if err := Detach(bg, vm, "data", 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("detach without a timeout: %v", err)
	}
	r := config.Region{Name: "seg2", Protocol: 2, Peers: 2, RWSize: 4096, OutputSize: 4096, Vectors: 1, Self: 0}
	if _, err := Grant(bg, vm, r, tempFiles(t, 2)); !errors.Is(err, ErrInvalid) {
		t.Errorf("grant with too few files: %v", err)
	}
	if d, err := Grant(bg, vm, r, tempFiles(t, 3)); err != nil || d.Name != "seg2" {
		t.Errorf("Grant = %+v, %v", d, err)
	}
	h.mu.Lock()
	if len(h.granted) != 3 {
		t.Errorf("handler got %d files", len(h.granted))
	}
	for _, f := range h.granted {
		f.Close()
	}
	h.mu.Unlock()
	pins, err := SetCPUs(bg, vm, []int{3, 1})
	if want := []VCPUPin{{0, 3, 100}, {1, 1, 101}}; err != nil || !reflect.DeepEqual(pins, want) {
		t.Errorf("SetCPUs = %+v, %v; want %+v", pins, err, want)
	}
	if pins, err := VCPUs(bg, vm); err != nil || len(pins) != 2 || pins[0].Core != 3 {
		t.Errorf("VCPUs = %+v, %v", pins, err)
	}
	if _, err := SetCPUs(bg, vm, []int{3, 1, 2}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "3 cores for 2 vCPUs") {
		t.Errorf("SetCPUs of too many cores: %v", err)
	}
	if _, err := SetCPUs(bg, vm, nil); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "set_cpus with 0 cores") {
		t.Errorf("SetCPUs of no cores: %v", err)
	}
	if pins, _ := VCPUs(bg, vm); pins[0].Core != 3 || pins[1].Core != 1 {
		t.Errorf("refused SetCPUs changed the pinning: %+v", pins)
	}
	st, err := SetMemory(bg, vm, 2*fakeBlock)
	if want := (Memory{Requested: 2 * fakeBlock, Plugged: 2 * fakeBlock, RegionSize: 16 * fakeBlock, BlockSize: fakeBlock}); err != nil || *st != want {
		t.Errorf("SetMemory = %+v, %v; want %+v", st, err, want)
	}
	// A guest that stops short: the reply is the partial state, no error.
	st, err = SetMemoryWait(bg, vm, 6*fakeBlock, 20*time.Millisecond)
	if err != nil || st.Requested != 6*fakeBlock || st.Plugged != 4*fakeBlock {
		t.Errorf("SetMemoryWait = %+v, %v; want 4 of 6 blocks", st, err)
	}
	if st, err := MemoryState(bg, vm); err != nil || st.Plugged != 4*fakeBlock || st.Requested != 6*fakeBlock {
		t.Errorf("MemoryState = %+v, %v", st, err)
	}
	if _, err := SetMemory(bg, vm, fakeBlock+1); !errors.Is(err, ErrInvalid) {
		t.Errorf("SetMemory of a partial block: %v", err)
	}
	if _, _, err := Call(bg, vm, Message{Op: OpSetMemory, TimeoutMS: -1}, nil); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "timeout") {
		t.Errorf("set_memory with a negative timeout: %v", err)
	}
	if _, _, err := Call(bg, vm, Message{Op: "reboot"}, nil); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `unknown operation "reboot"`) {
		t.Errorf("unknown operation: %v", err)
	}
}

// A launch that is not one, or carries a bad document, is answered with
// the error and refused.
func TestAcceptLaunchRefuses(t *testing.T) {
	for name, send := range map[string]func(c *netConn) error{
		"not a launch": func(c *netConn) error { return Send(c.UnixConn, Message{Op: OpDevices}, nil) },
		"old version": func(c *netConn) error {
			return Send(c.UnixConn, Message{Op: OpLaunch, Config: []byte(`{"version": 7}`)}, nil)
		},
		"files do not match": func(c *netConn) error {
			doc := `{"version":1,"name":"a","kernel":"/k","cores":[0],"memory":4194304,"regions":[{"name":"r","protocol":2,"peers":2,"output_size":4096,"vectors":1,"self":0}]}`
			return Send(c.UnixConn, Message{Op: OpLaunch, Config: []byte(doc)}, tempFiles(t, 1))
		},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "vm.ctl")
			ln, err := Listen(path)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			c, err := Dial(path)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := send(&netConn{c}); err != nil {
				t.Fatal(err)
			}
			if _, err := AcceptLaunch(ln, 5*time.Second); err == nil {
				t.Fatal("accepted")
			}
			m, _, err := Recv(c)
			if err != nil || m.Error == "" || m.Code != "invalid" {
				t.Fatalf("reply %+v, %v", m, err)
			}
		})
	}
}

type netConn struct{ *net.UnixConn }

// The region's files become a device configuration: the region mapped,
// this peer's eventfds as its vectors, every other peer's as doorbell
// targets; Remove gives the mapping and the files back.
func TestMembership(t *testing.T) {
	l, err := region.FICMLayout(4)
	if err != nil {
		t.Fatal(err)
	}
	r, err := region.Create(region.Spec{Name: "ficm", Protocol: abi.ProtocolFICM, Layout: l, Vectors: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	files := func() []*os.File {
		var fs []*os.File
		for _, f := range append([]*os.File{r.MemFile()}, r.Bells()...) {
			fd, err := FD(f)
			if err != nil {
				t.Fatal(err)
			}
			d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			fs = append(fs, os.NewFile(uintptr(d), "dup"))
		}
		return fs
	}
	reg := config.Region{Name: "ficm", Protocol: abi.ProtocolFICM, Peers: 4, OutputSize: l.OutputSize, Vectors: 2, Self: 2}
	var ms Membership
	defer ms.Close()
	c, err := ms.Add(reg, files())
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != 2 || len(c.Incoming) != 2 || len(c.Peers) != 3 || c.Identity.Name != "ficm" || uint64(len(c.Region)) != l.Size() {
		t.Fatalf("config %+v", c)
	}
	for _, p := range c.Peers {
		if p.Peer == 2 || len(p.Vectors) != 2 {
			t.Errorf("peer %+v", p)
		}
	}
	if c.DoorbellLimit != shmemdev.DefaultDoorbellLimit() {
		t.Errorf("doorbell limit %+v, want the default", c.DoorbellLimit)
	}
	copy(r.Memory()[l.Size()-4:], "same")
	if string(c.Region[l.Size()-4:]) != "same" {
		t.Error("mapping does not share the region's memory")
	}
	if _, err := ms.Add(reg, files()); !errors.Is(err, ErrExists) {
		t.Errorf("second membership of ficm: %v", err)
	}
	regions, out := ms.Export()
	if len(regions) != 1 || len(out) != reg.Files() {
		t.Errorf("export %v with %d files", regions, len(out))
	}
	bad := reg
	bad.Name = "big"
	bad.OutputSize = l.OutputSize * 64 // beyond even a 2 MiB hugetlb memfd
	if _, err := ms.Add(bad, files()); err == nil || !strings.Contains(err.Error(), "layout needs") {
		t.Errorf("short memory: %v", err)
	}
	if _, err := ms.Add(reg, files()[:3]); err == nil {
		t.Error("missing descriptors accepted")
	}
	bad = reg
	bad.Name = "odd"
	bad.OutputSize = 100
	if _, err := ms.Add(bad, files()); err == nil {
		t.Error("bad layout accepted")
	}
	if err := ms.Remove("ficm"); err != nil {
		t.Fatal(err)
	}
	if err := ms.Remove("ficm"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Remove: %v", err)
	}
	if len(ms.Regions()) != 0 {
		t.Error("region still held")
	}
}
