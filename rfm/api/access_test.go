package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"rainforest/internal/peercred"
	"rainforest/internal/peercred/peercredtest"
	"rainforest/rfm/supervisor"
)

func TestMain(m *testing.M) {
	peercredtest.Main()
	os.Exit(m.Run())
}

// ownPolicy allows root and this process's uid.
func ownPolicy() peercred.Policy {
	return peercred.Policy{Owner: uint32(os.Geteuid()), Group: peercred.NoGroup}
}

type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// serve serves a fake backend on a socket in dir under policy.
func serve(t *testing.T, dir string, policy peercred.Policy) (string, *fakeBackend, *logBuffer) {
	t.Helper()
	b := &fakeBackend{subos: map[string]supervisor.Info{"web": {Name: "web"}}}
	path := filepath.Join(dir, "rfm.sock")
	logs := &logBuffer{}
	ln, err := Listen(path, policy, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, b) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return path, b, logs
}

// A peer the policy does not allow gets a JSON 403 saying why, the
// backend never hears of it, and the refusal is logged with its uid and
// pid. Before, anyone who could reach the socket was served.
func TestRefusedPeer(t *testing.T) {
	if os.Geteuid() == 0 {
		refusedStranger(t)
		return
	}
	// Not root: a policy for another owner and no group refuses us.
	self := os.Geteuid()
	path, b, logs := serve(t, t.TempDir(), peercred.Policy{Owner: uint32(self + 1), Group: peercred.NoGroup})
	_, err := NewClient(path).List(context.Background())
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusForbidden || !strings.Contains(ae.Body.Error, "uid "+strconv.Itoa(self)+" is neither root nor uid") {
		t.Fatalf("List as a stranger: %v", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.creates != 0 {
		t.Errorf("backend reached")
	}
	if got := logs.String(); !strings.Contains(got, "level=WARN") || !strings.Contains(got, "uid="+strconv.Itoa(self)) || !strings.Contains(got, "pid="+strconv.Itoa(os.Getpid())) {
		t.Errorf("log: %q", got)
	}
}

// refusedStranger: as root, a child running as nobody is refused.
func refusedStranger(t *testing.T) {
	dir := peercredtest.Dir(t)
	path, _, logs := serve(t, dir, peercred.Policy{Owner: 0, Group: peercred.NoGroup})
	// This tests the server's check, not the file's mode.
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	out, err := peercredtest.Dial(t, "unix", path, peercredtest.Nobody, peercredtest.Nobody,
		[]byte("GET /v1/subos HTTP/1.1\r\nHost: rfm\r\nConnection: close\r\n\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	head, body, _ := strings.Cut(string(out), "\r\n\r\n")
	if !strings.HasPrefix(head, "HTTP/1.1 403 ") || !strings.Contains(head, "Content-Type: application/json") {
		t.Fatalf("response %q", out)
	}
	var eb ErrorBody
	if err := json.Unmarshal([]byte(body), &eb); err != nil || !strings.Contains(eb.Error, "uid 65534 is neither root nor uid 0") {
		t.Errorf("body %q: %v", body, err)
	}
	if got := logs.String(); !strings.Contains(got, "uid=65534") {
		t.Errorf("log: %q", got)
	}
	// Root is served.
	if _, err := NewClient(path).List(context.Background()); err != nil {
		t.Errorf("List as root: %v", err)
	}
}

// Members of the group are served; the audit actor is the kernel's view
// of the peer.
func TestGroupMemberServed(t *testing.T) {
	path, b, _ := serve(t, t.TempDir(), peercred.Policy{Owner: uint32(os.Geteuid()) + 1, Group: os.Getegid(), GroupName: "g"})
	if _, err := NewClient(path).Create(context.Background(), supervisor.Spec{Name: "db"}); err != nil {
		t.Fatal(err)
	}
	want := "uid " + strconv.Itoa(os.Geteuid()) + " pid " + strconv.Itoa(os.Getpid())
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.actors) != 1 || b.actors[0] != want {
		t.Errorf("actors %q, want %q", b.actors, want)
	}
}

// The socket file has its mode from birth whatever the umask: 0660 with
// the group when the policy has one, else 0600.
func TestListenMode(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	gid := os.Getegid()
	for _, c := range []struct {
		policy peercred.Policy
		mode   os.FileMode
		gid    int
	}{
		{ownPolicy(), 0o600, -1},
		{peercred.Policy{Owner: 0, Group: gid, GroupName: "g"}, 0o660, gid},
	} {
		path := filepath.Join(t.TempDir(), "rfm.sock")
		ln, err := Listen(path, c.policy, nil)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != c.mode || (c.gid >= 0 && int(fi.Sys().(*syscall.Stat_t).Gid) != c.gid) {
			t.Errorf("policy %v: mode %v gid %d, want %v", c.policy, fi.Mode(), fi.Sys().(*syscall.Stat_t).Gid, c.mode)
		}
		ln.Close()
	}
}
