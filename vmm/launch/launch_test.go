package launch

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"rainforest/rfm/vmmctl"
	"rainforest/vmm"
	"rainforest/vmm/config"
	"rainforest/vmm/consolelog"
	"rainforest/vmm/ram"
	"rainforest/vmm/virtio/mem"
)

// The document becomes the machine's configuration: the default command
// line plus the appended part, disks with their ids, the console where the
// document says.
func TestLinuxConfig(t *testing.T) {
	var out bytes.Buffer
	doc := &config.Document{Version: config.Version, Name: "web", Kernel: "/k", Cores: []int{2, 3}, MaxVCPUs: 4, Memory: 64 << 20,
		PageSize: "4k", Append: "rf.cat=/x", Disks: []config.Disk{{Path: "/a"}, {ID: "data", Path: "/b", Direct: true}},
		Console: config.Console{Socket: "/run/web.sock"}, CPUProfile: "nested-safe"}
	cfg, done, err := linuxConfig(doc, Options{Stdout: &out}, Logger(doc, &out))
	if err != nil {
		t.Fatal(err)
	}
	done()
	if cfg.Cmdline != vmm.DefaultCmdline()+" rf.cat=/x" || cfg.PageSize != ram.Page4K || cfg.Profile != vmm.ProfileNestedSafe {
		t.Errorf("cmdline %q page size %v profile %v", cfg.Cmdline, cfg.PageSize, cfg.Profile)
	}
	if !slices.Equal(cfg.HostCores, []int{2, 3}) || cfg.MaxVCPUs != 4 {
		t.Errorf("host cores %v, max vCPUs %d; want [2 3], 4", cfg.HostCores, cfg.MaxVCPUs)
	}
	if len(cfg.Disks) != 2 || cfg.Disks[0].ID != "disk0" || cfg.Disks[1].ID != "data" || !cfg.Disks[1].Direct {
		t.Errorf("disks %+v", cfg.Disks)
	}
	if cfg.Console != &out || cfg.ConsoleSocket != "/run/web.sock" {
		t.Errorf("console %v socket %q", cfg.Console, cfg.ConsoleSocket)
	}
	// A console file is opened, capped (consolelog) and closed by the
	// returned func.
	logPath := filepath.Join(t.TempDir(), "web.log")
	doc.Console = config.Console{Mode: config.ConsoleFile, Path: logPath, LogSize: consolelog.MinMaxSize}
	doc.Cmdline = "console=ttyS0"
	cfg, done, err = linuxConfig(doc, Options{}, Logger(doc, &out))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := cfg.Console.(*consolelog.Writer); !ok || cfg.Cmdline != "console=ttyS0 rf.cat=/x" {
		t.Errorf("console %T cmdline %q", cfg.Console, cfg.Cmdline)
	}
	for range 4096 {
		cfg.Console.Write([]byte("0123456789abcdef"))
	}
	done()
	if fi, err := os.Stat(logPath); err != nil || fi.Size() > consolelog.MinMaxSize {
		t.Errorf("console file not capped: %v %v", fi.Size(), err)
	}
	// A regular file as stdout (the supervisor's log) is capped too.
	stdout, err := os.OpenFile(filepath.Join(t.TempDir(), "stdout"), os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer stdout.Close()
	doc.Console = config.Console{}
	cfg, done, err = linuxConfig(doc, Options{Stdout: stdout}, Logger(doc, &out))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := cfg.Console.(*consolelog.Writer); !ok {
		t.Errorf("stdout file console %T", cfg.Console)
	}
	done()
	doc.Console = config.Console{Mode: config.ConsoleFile, Path: "/nonexistent/dir/web.log"}
	if _, _, err := linuxConfig(doc, Options{}, Logger(doc, &out)); err == nil || !strings.Contains(err.Error(), "console") {
		t.Errorf("unopenable console file: %v", err)
	}
	// The logger honours the document's level and names the subOS.
	out.Reset()
	doc.LogLevel = "debug"
	Logger(doc, &out).Debug("hello")
	if !strings.Contains(out.String(), "subos=web") {
		t.Errorf("log line %q", out.String())
	}
}

// Named descriptors replace the paths: /dev/kvm, kernel, disks, the
// console log and the console listener.
func TestLinuxConfigNamedFiles(t *testing.T) {
	dir := t.TempDir()
	open := func(name string) *os.File {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "c.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	lf, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var out bytes.Buffer
	doc := &config.Document{Version: config.Version, Name: "web", Kernel: "/nonexistent/k", Cores: []int{0}, Memory: 64 << 20,
		Disks:  []config.Disk{{Path: "/nonexistent/a"}, {ID: "data", Path: "/nonexistent/b"}},
		Shares: []config.Share{{Tag: "home", Socket: "/nonexistent/vfs"}, {ID: "src", Tag: "src"}},
		Nets: []config.Net{{MAC: "52:54:00:00:00:01", Tap: "rf0"}, {ID: "back", MAC: "52:54:00:00:00:02"},
			{ID: "lan", MAC: "02:00:00:00:00:02", Loop: &config.Loop{Network: "lan0", Self: 1,
				Members: []config.LoopMember{{Name: "db", MAC: "02:00:00:00:00:01"}, {Name: "web", MAC: "02:00:00:00:00:02"}}}}},
		Console: config.Console{Mode: config.ConsoleFile, Path: "/nonexistent/log", Socket: "/nonexistent/sock"}}
	kernel, log, data, share, tun := open("k"), open("log"), open("b"), open("share"), open("tun")
	named := map[string]*os.File{config.FileKernel: kernel, config.FileConsoleLog: log,
		config.DiskFile("data"): data, config.FileConsoleSocket: lf, config.ShareFile("src"): share, config.NetFile("back"): tun}
	var loopFiles []*os.File
	for k := range 2 {
		lane, bell := open(fmt.Sprintf("lane%d", k)), open(fmt.Sprintf("bell%d", k))
		named[config.LoopLaneFile("lan", k)], named[config.LoopBellFile("lan", k)] = lane, bell
		loopFiles = append(loopFiles, lane, bell)
	}
	cfg, done, err := linuxConfig(doc, Options{Named: named}, Logger(doc, &out))
	if err != nil {
		t.Fatal(err)
	}
	// The console log descriptor is written through the capped writer.
	if _, capped := cfg.Console.(*consolelog.Writer); cfg.KernelFile != kernel || !capped || cfg.DiskFiles["data"] != data || cfg.DiskFiles["disk0"] != nil {
		t.Errorf("kernel %v console %v disks %v", cfg.KernelFile, cfg.Console, cfg.DiskFiles)
	}
	// Nets get their ids, and the TAP descriptor of the one that has one.
	if len(cfg.Nets) != 3 || cfg.Nets[0].ID != "net0" || cfg.NetFiles["back"].Tap != tun || cfg.NetFiles["net0"].Tap != nil {
		t.Errorf("nets %+v files %v", cfg.Nets, cfg.NetFiles)
	}
	// A loop member's lanes and doorbells, in member order.
	if lf := cfg.NetFiles["lan"].Loop; len(lf.Lanes) != 2 || len(lf.Bells) != 2 || lf.Lanes[0] != loopFiles[0] ||
		lf.Bells[0] != loopFiles[1] || lf.Lanes[1] != loopFiles[2] || lf.Bells[1] != loopFiles[3] {
		t.Errorf("loop files %+v", lf)
	}
	if cfg.ConsoleListener == nil || cfg.ConsoleSocket != "" {
		t.Errorf("console listener %v socket %q", cfg.ConsoleListener, cfg.ConsoleSocket)
	}
	// Shares get their ids; the one with a descriptor goes to the machine.
	if len(cfg.Shares) != 2 || cfg.Shares[0].ID != "share0" || cfg.ShareFiles["src"] != share || cfg.ShareFiles["share0"] != nil {
		t.Errorf("shares %+v files %v", cfg.Shares, cfg.ShareFiles)
	}
	share.Close()
	if len(named) != 0 {
		t.Errorf("files left over: %v", named)
	}
	cfg.ConsoleListener.Close()
	data.Close()
	tun.Close()
	done()
	if _, err := kernel.Stat(); err == nil {
		t.Error("kernel file left open by the closer")
	}
}

// The limits follow the document: vCPUs raise RLIMIT_NOFILE, a writable
// disk larger than the log bounds raises RLIMIT_FSIZE, a read-only one
// does not.
func TestJailLimits(t *testing.T) {
	doc := &config.Document{Cores: []int{0, 1}, Disks: []config.Disk{{ID: "big", Path: "/b"}, {ID: "ro", Path: "/r", ReadOnly: true}}}
	if NoFileLimit(doc) <= NoFileLimit(&config.Document{Cores: []int{0}}) {
		t.Error("NOFILE does not grow with vCPUs")
	}
	if NoFileLimit(doc) < 31*253 {
		t.Errorf("NOFILE %d below 31 slots of full regions", NoFileLimit(doc))
	}
	dir := t.TempDir()
	big, _ := os.Create(filepath.Join(dir, "big"))
	defer big.Close()
	ro, _ := os.Create(filepath.Join(dir, "ro"))
	defer ro.Close()
	base := uint64(ConsoleLogBound + VMMLogBound)
	if got := FileSizeLimit(map[string]*os.File{"big": big}, doc); got != base {
		t.Errorf("small disk: FSIZE %d, want %d", got, base)
	}
	ro.Truncate(int64(base) * 4)
	if got := FileSizeLimit(map[string]*os.File{"big": big, "ro": ro}, doc); got != base {
		t.Errorf("large read-only disk: FSIZE %d, want %d", got, base)
	}
	big.Truncate(int64(base) * 2)
	if got := FileSizeLimit(map[string]*os.File{"big": big}, doc); got != base*2 {
		t.Errorf("large writable disk: FSIZE %d, want %d", got, base*2)
	}
}

// The vsock section reaches the machine; a jailed VMM gets its listener
// as a descriptor and dials no host paths.
func TestLinuxConfigVsock(t *testing.T) {
	var out bytes.Buffer
	sock := filepath.Join(t.TempDir(), "v.sock")
	doc := &config.Document{Version: config.Version, Name: "web", Kernel: "/k", Cores: []int{2}, Memory: 64 << 20,
		Vsock: &config.Vsock{CID: 3, Socket: sock}}
	cfg, done, err := linuxConfig(doc, Options{Stdout: &out}, Logger(doc, &out))
	if err != nil {
		t.Fatal(err)
	}
	done()
	if cfg.Vsock == nil || cfg.Vsock.CID != 3 || cfg.VsockListener != nil || cfg.VsockNoDial {
		t.Fatalf("vsock %+v, listener %v, no dial %v", cfg.Vsock, cfg.VsockListener, cfg.VsockNoDial)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	doc.Jail = &config.Jail{Root: "/j", UID: 1, GID: 1}
	cfg, done, err = linuxConfig(doc, Options{Stdout: &out, Named: map[string]*os.File{config.FileVsockSocket: f}}, Logger(doc, &out))
	if err != nil {
		t.Fatal(err)
	}
	done()
	if cfg.VsockListener == nil || !cfg.VsockNoDial {
		t.Fatalf("jailed: listener %v, no dial %v", cfg.VsockListener, cfg.VsockNoDial)
	}
	cfg.VsockListener.Close()
}

// The document's hotplug memory reaches the machine; the machine's
// refusals of a memory request are the protocol's ErrInvalid.
func TestLinuxConfigHotplugMemory(t *testing.T) {
	var out bytes.Buffer
	doc := &config.Document{Version: config.Version, Name: "web", Kernel: "/k", Cores: []int{2}, Memory: 64 << 20,
		HotplugMemory: 1 << 30}
	cfg, done, err := linuxConfig(doc, Options{Stdout: &out}, Logger(doc, &out))
	if err != nil {
		t.Fatal(err)
	}
	done()
	if cfg.HotplugMemory != 1<<30 {
		t.Errorf("hotplug memory %d", cfg.HotplugMemory)
	}
	for _, err := range []error{vmm.ErrNoHotplugMemory, fmt.Errorf("x: %w", mem.ErrRequested)} {
		if got := memoryError(err); !errors.Is(got, vmmctl.ErrInvalid) || !errors.Is(got, err) {
			t.Errorf("memoryError(%v) = %v", err, got)
		}
	}
	if got := memoryState(vmm.MemoryState{Addr: 1 << 32, RegionSize: 8, BlockSize: 2, Requested: 6, Plugged: 4}); got != (vmmctl.Memory{Requested: 6, Plugged: 4, RegionSize: 8, BlockSize: 2}) {
		t.Errorf("memoryState = %+v", got)
	}
}
