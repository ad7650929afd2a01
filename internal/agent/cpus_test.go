package agent

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"rainforest/internal/agentproto"
)

// fakeCPUs is a guest's sysfs CPU directory under a temporary root:
// present and online lists, and each CPU's online file holding its state
// ("0" or "1"), or a directory where it is "refuse" (writing fails, as a
// CPU the kernel will not change). online is the list as the kernel
// shows it after the change (the fake has no kernel to update it).
func fakeCPUs(t *testing.T, present, online string, states map[int]string) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "devices/system/cpu")
	write := func(path, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(s+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dir, "present"), present)
	write(filepath.Join(dir, "online"), online)
	if err := os.MkdirAll(filepath.Join(dir, "cpu0"), 0o755); err != nil { // no online file, as on x86
		t.Fatal(err)
	}
	for cpu, state := range states {
		path := filepath.Join(dir, "cpu"+strconv.Itoa(cpu), "online")
		if state == "refuse" {
			if err := os.MkdirAll(path, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		write(path, state)
	}
	return root
}

// cpuStates reads the fake's per-CPU states back.
func cpuStates(t *testing.T, root string, cpus ...int) []string {
	t.Helper()
	var out []string
	for _, cpu := range cpus {
		b, err := os.ReadFile(filepath.Join(root, "devices/system/cpu", "cpu"+strconv.Itoa(cpu), "online"))
		if err != nil {
			out = append(out, "?")
			continue
		}
		out = append(out, strings.TrimSpace(string(b)))
	}
	return out
}

// setCPUsVia runs SetCPUs against an agent serving sysfs root over
// net.Pipe.
func setCPUsVia(t *testing.T, root string, n int) ([]int, error) {
	t.Helper()
	agentEnd, hostEnd := net.Pipe()
	defer hostEnd.Close()
	s := NewServer(Config{Software: "rf-agent test", Proc: os.DirFS("/proc"), SysRoot: root})
	done := make(chan error, 1)
	go func() { done <- s.ServeConn(context.Background(), agentEnd) }()
	online, err := SetCPUs(t.Context(), hostEnd, n)
	if serr := <-done; serr != nil {
		t.Errorf("ServeConn: %v", serr)
	}
	return online, err
}

// CPUs go online lowest first and offline highest first, only those that
// must change; CPU 0 has no online file and is never touched.
func TestSetCPUs(t *testing.T) {
	root := fakeCPUs(t, "0-3", "0-2", map[int]string{1: "0", 2: "0", 3: "0"})
	online, err := setCPUsVia(t, root, 3)
	if err != nil || !reflect.DeepEqual(online, []int{0, 1, 2}) {
		t.Errorf("grow to 3: %v, %v", online, err)
	}
	if got := cpuStates(t, root, 1, 2, 3); !reflect.DeepEqual(got, []string{"1", "1", "0"}) {
		t.Errorf("grow to 3: cpu1-3 %v", got)
	}

	root = fakeCPUs(t, "0-3", "0-1", map[int]string{1: "1", 2: "1", 3: "1"})
	online, err = setCPUsVia(t, root, 2)
	if err != nil || !reflect.DeepEqual(online, []int{0, 1}) {
		t.Errorf("shrink to 2: %v, %v", online, err)
	}
	if got := cpuStates(t, root, 1, 2, 3); !reflect.DeepEqual(got, []string{"1", "0", "0"}) {
		t.Errorf("shrink to 2: cpu1-3 %v", got)
	}

	root = fakeCPUs(t, "0", "0", nil)
	if online, err := setCPUsVia(t, root, 1); err != nil || !reflect.DeepEqual(online, []int{0}) {
		t.Errorf("one CPU of one: %v, %v", online, err)
	}
}

// The first CPU that refuses stops the change; the host gets the kernel's
// error and the online list.
func TestSetCPUsRefused(t *testing.T) {
	for _, c := range []struct {
		name           string
		present, after string
		states         map[int]string
		n              int
		want           string
		wantOnline     []int
		wantStates     []string // cpu1-3 after
	}{
		{"grow past a refusing CPU", "0-3", "0-1", map[int]string{1: "0", 2: "refuse", 3: "0"}, 4,
			"onlining cpu2", []int{0, 1}, []string{"1", "?", "0"}},
		{"shrink past a refusing CPU", "0-3", "0-2", map[int]string{1: "1", 2: "refuse", 3: "1"}, 1,
			"offlining cpu2", []int{0, 1, 2}, []string{"1", "?", "0"}},
		{"more CPUs than present", "0-3", "0-3", map[int]string{1: "0", 2: "0", 3: "0"}, 6,
			"cpu4 is not present (present: 0-3)", []int{0, 1, 2, 3}, []string{"1", "1", "1"}},
		{"the kernel shows others online", "0-3", "0-3", map[int]string{1: "1", 2: "1", 3: "1"}, 2,
			"CPUs 0-3 are online after the change, not 0-1", []int{0, 1, 2, 3}, []string{"1", "0", "0"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := fakeCPUs(t, c.present, c.after, c.states)
			online, err := setCPUsVia(t, root, c.n)
			if !errors.Is(err, ErrCPURefused) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("err %v, want ErrCPURefused saying %q", err, c.want)
			}
			if !reflect.DeepEqual(online, c.wantOnline) {
				t.Errorf("online %v, want %v", online, c.wantOnline)
			}
			if got := cpuStates(t, root, 1, 2, 3); !reflect.DeepEqual(got, c.wantStates) {
				t.Errorf("cpu1-3 %v, want %v", got, c.wantStates)
			}
		})
	}
}

// A request out of range is refused before anything is sent; an agent
// of protocol 1.0 is not sent what it does not know; the context ends a
// wait for an agent that does not answer.
func TestSetCPUsClient(t *testing.T) {
	agentEnd, hostEnd := net.Pipe()
	defer agentEnd.Close()
	defer hostEnd.Close()
	for _, n := range []int{0, -1, agentproto.MaxCPUs + 1} {
		if _, err := SetCPUs(context.Background(), hostEnd, n); !errors.Is(err, agentproto.ErrMalformed) {
			t.Errorf("SetCPUs(%d): %v, want ErrMalformed", n, err)
		}
	}

	// fakeAgent says hello with minor, reads the host's hello and
	// request, and then calls then.
	fakeAgent := func(minor uint32, then func()) net.Conn {
		agentEnd, hostEnd := net.Pipe()
		t.Cleanup(func() { hostEnd.Close() })
		go func() {
			defer agentEnd.Close()
			pc := agentproto.NewConn(agentEnd)
			h := agentproto.NewHello("rf-agent old")
			h.ProtocolMinor = minor
			if pc.Send(h) != nil {
				return
			}
			for {
				m, err := pc.Recv()
				if err != nil {
					return
				}
				if m.Type() == agentproto.TypeCPUs {
					then()
				}
			}
		}()
		return hostEnd
	}
	asked := make(chan struct{}, 1)
	c := fakeAgent(0, func() { asked <- struct{}{} })
	if _, err := SetCPUs(t.Context(), c, 2); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), `protocol 1.0 ("rf-agent old")`) {
		t.Errorf("old agent: %v", err)
	}
	c.Close()
	select {
	case <-asked:
		t.Error("an agent of protocol 1.0 was sent cpus")
	default:
	}

	ctx, cancel := context.WithCancel(t.Context())
	c = fakeAgent(agentproto.ProtocolMinor, cancel)
	if _, err := SetCPUs(ctx, c, 2); !errors.Is(err, context.Canceled) {
		t.Errorf("agent that never answers: %v, want context.Canceled", err)
	}
}
