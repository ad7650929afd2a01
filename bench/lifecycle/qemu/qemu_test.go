package qemu

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"rainforest/bench/hotplug/qmp"
	"rainforest/bench/internal/fakeqemu"
	"rainforest/bench/internal/guestconsole"

	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	if fakeqemu.Requested() {
		os.Exit(fakeqemu.Main())
	}
	os.Exit(m.Run())
}

var testMarkers = Markers{Init: "INIT", Ready: "READY", CPUOnline: "CPU-UP", CPURefused: "CPU-REFUSED"}

// config runs the fake QEMU with o.
func config(t *testing.T, o fakeqemu.Options) Config {
	t.Helper()
	o.QMPSocket = filepath.Join(t.TempDir(), "qmp.sock")
	argv, env := fakeqemu.Command(o)
	k, v, _ := strings.Cut(env, "=")
	t.Setenv(k, v)
	return Config{Argv: argv, QMPSocket: o.QMPSocket, Markers: testMarkers, Resize: true, MemoryStep: 512 << 20, Timeout: time.Minute}
}

func TestCycle(t *testing.T) {
	cfg := config(t, fakeqemu.Options{Boot: []string{"bios", "INIT", "READY"}, CPUOnline: "CPU-UP", MemoryEvents: 3})
	var echo strings.Builder
	cfg.Echo = &echo
	// The fake's process stands for the new vCPU's thread: pin it to a
	// core this test may use.
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	for c := 0; c < 1024 && cfg.OnlineCores == nil; c++ {
		if set.IsSet(c) {
			cfg.OnlineCores = []int{c}
		}
	}
	// A socket left by an earlier run is removed.
	if err := os.WriteFile(cfg.QMPSocket, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s := Cycle(t.Context(), cfg, 4)
	if !s.OK() || s.System != System || s.Run != 4 {
		t.Fatalf("sample %+v", s)
	}
	for name, d := range map[string]time.Duration{"create return": s.CreateReturn, "create init": s.CreateInit, "cpu online": s.CPUOnline,
		"cpu offline": s.CPUOffline, "mem online": s.MemOnline, "mem offline": s.MemOffline, "destroy return": s.DestroyReturn, "destroy": s.Destroy} {
		if d <= 0 {
			t.Errorf("%s not measured: %+v", name, s)
		}
	}
	// The commands in order; the memory's size is checked once QEMU
	// said it got there.
	var cmds []string
	for _, l := range strings.Split(echo.String(), "\n") {
		if _, c, ok := strings.Cut(l, "fakeqemu: "); ok {
			cmds = append(cmds, c)
		}
	}
	want := "qmp_capabilities query-hotpluggable-cpus device_add query-cpus-fast device_del query-hotpluggable-cpus qom-set qom-get qom-set qom-get quit"
	if strings.Join(cmds, " ") != want {
		t.Errorf("commands\n%s\nwant\n%s", strings.Join(cmds, " "), want)
	}
	if !strings.HasPrefix(echo.String(), "[qemu#4] bios\n") {
		t.Errorf("echo %q", echo.String())
	}
}

func TestCycleWithoutResizes(t *testing.T) {
	cfg := config(t, fakeqemu.Options{Boot: []string{"INIT"}})
	cfg.Resize, cfg.MemoryStep = false, 0
	s := Cycle(t.Context(), cfg, 1)
	if !s.OK() || s.CreateInit <= 0 || s.CPUOnline != 0 || s.MemOnline != 0 || s.Destroy <= 0 {
		t.Errorf("sample %+v", s)
	}
}

func TestCycleFailures(t *testing.T) {
	// QEMU exits at once: create fails with its stderr.
	cfg := config(t, fakeqemu.Options{ExitAtOnce: true, Stderr: "qemu: -device virtio-mem-pci: no"})
	if s := Cycle(t.Context(), cfg, 1); !strings.HasPrefix(s.Error, "create: ") || !strings.Contains(s.Error, "virtio-mem-pci: no") {
		t.Errorf("exit at once: %+v", s)
	}
	// The guest refuses the CPU.
	cfg = config(t, fakeqemu.Options{Boot: []string{"INIT", "READY"}, CPUOnline: "CPU-REFUSED"})
	if s := Cycle(t.Context(), cfg, 2); !strings.Contains(s.Error, "cpu online: ") || !strings.Contains(s.Error, ErrGuestRefused.Error()) || s.CreateInit <= 0 {
		t.Errorf("refused: %+v", s)
	}
	// The guest never boots: bounded by the timeout (which a loaded
	// machine may reach before QMP answers).
	cfg = config(t, fakeqemu.Options{Boot: []string{"bios"}})
	cfg.Timeout = 50 * time.Millisecond
	if s := Cycle(t.Context(), cfg, 3); !strings.HasPrefix(s.Error, "create: ") || s.CreateInit != 0 {
		t.Errorf("no boot: %+v", s)
	}
	// A canceled run.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	cfg = config(t, fakeqemu.Options{Boot: []string{"INIT"}})
	if s := Cycle(ctx, cfg, 4); s.OK() {
		t.Errorf("canceled: %+v", s)
	}
}

func TestDeviceAddArgs(t *testing.T) {
	raw := json.RawMessage(`[{"props":{"core-id":1,"thread-id":0,"node-id":0,"socket-id":0},"vcpus-count":1,"type":"host-x86_64-cpu"},` +
		`{"props":{"core-id":0,"thread-id":0,"node-id":0,"socket-id":0},"vcpus-count":1,"qom-path":"/machine/unattached/device[0]","type":"host-x86_64-cpu"}]`)
	args, err := deviceAddArgs(raw)
	if err != nil {
		t.Fatal(err)
	}
	if args["driver"] != "host-x86_64-cpu" || args["id"] != CPUID || args["core-id"] != float64(1) || args["socket-id"] != float64(0) || len(args) != 6 {
		t.Errorf("args %v", args)
	}
	if _, err := deviceAddArgs(json.RawMessage(`[{"props":{},"type":"x","qom-path":"/a"}]`)); err == nil || !strings.Contains(err.Error(), "maxcpus") {
		t.Errorf("no free slot: %v", err)
	}
	if _, err := deviceAddArgs(json.RawMessage(`{}`)); err == nil {
		t.Error("bad answer accepted")
	}
	tid, err := vcpuThread(json.RawMessage(`[{"cpu-index":0,"qom-path":"/machine/unattached/device[0]","thread-id":10},`+
		`{"cpu-index":1,"qom-path":"/machine/peripheral/cpu1","thread-id":11}]`), "/machine/peripheral/cpu1")
	if tid != 11 || err != nil {
		t.Errorf("vcpu thread %d: %v", tid, err)
	}
	if _, err := vcpuThread(json.RawMessage(`[{"qom-path":"/machine/unattached/device[0]","thread-id":10}]`), "/machine/peripheral/cpu1"); err == nil {
		t.Error("thread of an absent vCPU")
	}
	match := isDeviceOrPart("cpu1")
	for data, want := range map[string]bool{
		`{"device":"cpu1","path":"/machine/peripheral/cpu1"}`:   true,
		`{"path":"/machine/peripheral/cpu1/lapic"}`:             true,
		`{"path":"/machine/peripheral/cpu10"}`:                  false,
		`{"device":"vmem0","path":"/machine/peripheral/vmem0"}`: false,
		`[]`: false,
	} {
		if match(json.RawMessage(data)) != want {
			t.Errorf("isDeviceOrPart(%s) = %v", data, !want)
		}
	}
}

// TestGuestCommand runs the guest's command with a stand-in online file:
// it says it is ready, waits for the file, onlines the CPU and says so,
// or says the kernel refused.
func TestGuestCommand(t *testing.T) {
	// The guest's shell is busybox ash; bash reads the same.
	var sh []string
	for _, c := range [][]string{{"busybox", "sh"}, {"bash"}} {
		if p, err := exec.LookPath(c[0]); err == nil {
			sh = append([]string{p}, c[1:]...)
			break
		}
	}
	if sh == nil {
		t.Skip("no busybox or bash")
	}
	cmd := GuestCommand("/sys/x", "/tmp/w")
	if strings.Contains(cmd, `"`) {
		t.Errorf("the command has a double quote: %s", cmd)
	}
	for _, m := range []string{MarkerReady, MarkerCPUOnline, MarkerCPURefused} {
		if strings.Contains(cmd, m) {
			t.Errorf("the command holds %s: %s", m, cmd)
		}
	}
	for _, tc := range []struct {
		name   string
		online func(path string) error
		want   string
	}{
		{"online", func(p string) error { return os.WriteFile(p, []byte("0"), 0o644) }, MarkerCPUOnline},
		{"refused", func(p string) error { return os.Mkdir(p, 0o755) }, MarkerCPURefused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			online := filepath.Join(dir, "online")
			c := exec.Command(sh[0], append(sh[1:], "-c", GuestCommand(online, filepath.Join(dir, "w")))...)
			out, err := c.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			c.Stderr = io.Discard
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
			defer c.Wait()
			con := guestconsole.Watch(out, []string{MarkerReady, MarkerCPUOnline, MarkerCPURefused}, nil, "")
			defer func() { <-con.Closed() }()
			if _, err := con.Wait(t.Context(), MarkerReady, time.Time{}); err != nil {
				t.Fatal(err)
			}
			if err := tc.online(online); err != nil {
				t.Fatal(err)
			}
			if _, err := con.Wait(t.Context(), tc.want, time.Time{}); err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(online); tc.want == MarkerCPUOnline && string(b) != "1\n" {
				t.Errorf("online file %q", b)
			}
		})
	}
}

func TestSizeReached(t *testing.T) {
	start := time.Unix(100, 500) // 100 s and 0.5 µs: QEMU stamps whole microseconds
	match := sizeReached(512<<20, start)
	ev := func(data string, at time.Time) qmp.Event {
		return qmp.Event{Name: "MEMORY_DEVICE_SIZE_CHANGE", Data: json.RawMessage(data), Emitted: at}
	}
	at := time.Unix(101, 0)
	for _, tc := range []struct {
		e    qmp.Event
		want bool
	}{
		{ev(`{"id":"vmem0","size":536870912,"qom-path":"/machine/peripheral/vmem0"}`, at), true},
		{ev(`{"size":536870912,"qom-path":"/machine/peripheral/vmem0"}`, at), true},                 // no id
		{ev(`{"id":"vmem0","size":536870912,"qom-path":"/machine/peripheral/vmem0"}`, start), true}, // the same microsecond
		{ev(`{"id":"vmem0","size":268435456}`, at), false},                                          // on the way
		{ev(`{"id":"vmem0","size":536870912}`, time.Unix(99, 0)), false},                            // before the request
		{ev(`{"id":"vmem0","size":536870912}`, time.Time{}), false},                                 // no stamp
		{ev(`{"id":"other","size":536870912,"qom-path":"/machine/peripheral/other"}`, at), false},
		{ev(`{"id":"vmem0"}`, at), false},
	} {
		if got := match(tc.e); got != tc.want {
			t.Errorf("%s at %v: %v, want %v", tc.e.Data, tc.e.Emitted, got, tc.want)
		}
	}
	if !sizeReached(0, start)(ev(`{"id":"vmem0","size":0}`, at)) {
		t.Error("size 0 not matched")
	}
}

// TestCycleMemoryNeverThere: a guest that never plugs fails the memory
// online within the timeout, saying what size QEMU has.
func TestCycleMemoryNeverThere(t *testing.T) {
	cfg := config(t, fakeqemu.Options{Boot: []string{"INIT", "READY"}})
	cfg.Resize, cfg.Timeout = false, 2*time.Second
	s := Cycle(t.Context(), cfg, 1)
	if !strings.Contains(s.Error, "memory online: no size change of vmem0 to 536870912 bytes") || !strings.Contains(s.Error, "qom-get size: 0") {
		t.Errorf("sample %+v", s)
	}
}
