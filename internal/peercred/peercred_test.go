package peercred

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"rainforest/internal/peercred/peercredtest"
)

func TestMain(m *testing.M) {
	peercredtest.Main()
	os.Exit(m.Run())
}

// socketpair returns both ends of a connected Unix stream pair.
func socketpair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

func TestOfSocketpair(t *testing.T) {
	a, _ := socketpair(t)
	c, err := Of(a)
	if err != nil {
		t.Fatal(err)
	}
	if c.PID != int32(os.Getpid()) || c.UID != uint32(os.Geteuid()) || c.GID != uint32(os.Getegid()) {
		t.Errorf("Of = %+v, want pid %d uid %d gid %d", c, os.Getpid(), os.Geteuid(), os.Getegid())
	}
	groups, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	var want []uint32
	for _, g := range groups {
		want = append(want, uint32(g))
	}
	if c.Groups == nil || !slices.Equal(slices.Sorted(slices.Values(c.Groups)), slices.Sorted(slices.Values(want))) {
		t.Errorf("Groups = %v, want %v", c.Groups, want)
	}
	if s := c.String(); !strings.HasPrefix(s, "uid ") || !strings.Contains(s, " pid ") {
		t.Errorf("String = %q", s)
	}
	if _, err := Of(&net.TCPConn{}); err == nil {
		t.Error("Of of a closed TCP conn: no error")
	}
}

func TestPolicyCheck(t *testing.T) {
	withGroup := Policy{Owner: 1000, Group: 990, GroupName: "rainforest"}
	noGroup := Policy{Owner: 1000, Group: NoGroup, GroupName: "rainforest"}
	for _, c := range []struct {
		name string
		p    Policy
		cred Cred
		ok   bool
	}{
		{"root", withGroup, Cred{UID: 0, GID: 5, PID: 1}, true},
		{"owner", withGroup, Cred{UID: 1000, GID: 1000}, true},
		{"primary gid", withGroup, Cred{UID: 2000, GID: 990}, true},
		{"supplementary", withGroup, Cred{UID: 2000, GID: 2000, Groups: []uint32{4, 990}}, true},
		{"stranger", withGroup, Cred{UID: 2000, GID: 2000, Groups: []uint32{4, 24}}, false},
		{"stranger without groups", withGroup, Cred{UID: 2000, GID: 2000}, false},
		{"group gone: root", noGroup, Cred{UID: 0}, true},
		{"group gone: member by gid 990", noGroup, Cred{UID: 2000, GID: 990, Groups: []uint32{990}}, false},
		{"gid 0 is not root", Policy{Owner: 0, Group: NoGroup}, Cred{UID: 5, GID: 0, Groups: []uint32{0}}, false},
	} {
		err := c.p.Check(c.cred)
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrRefused)) {
			t.Errorf("%s: Check(%+v) = %v, want ok %v", c.name, c.cred, err, c.ok)
		}
	}
	err := noGroup.Check(Cred{UID: 2000})
	if err == nil || !strings.Contains(err.Error(), `group "rainforest" does not exist`) {
		t.Errorf("refusal without the group: %v", err)
	}
	err = withGroup.Check(Cred{UID: 2000})
	if err == nil || !strings.Contains(err.Error(), `uid 2000 is neither root nor a member of group "rainforest" (gid 990)`) {
		t.Errorf("refusal: %v", err)
	}
}

func TestServicePolicy(t *testing.T) {
	p, err := ServicePolicy("no-such-group-rainforest-test")
	if err != nil || p.Group != NoGroup || p.Owner != uint32(os.Geteuid()) {
		t.Errorf("unknown group: %+v, %v", p, err)
	}
	if _, err := LookupGroup("no-such-group-rainforest-test"); !errors.Is(err, ErrNoSuchGroup) {
		t.Errorf("LookupGroup unknown: %v", err)
	}
	if p, err := ServicePolicy(""); err != nil || p.Group != NoGroup {
		t.Errorf("no group: %+v, %v", p, err)
	}
	if gid, err := LookupGroup("root"); err == nil {
		if p, err := ServicePolicy("root"); err != nil || p.Group != gid {
			t.Errorf("group root: %+v, %v", p, err)
		}
	}
}

func writeStatus(t *testing.T, root string, pid int, body string) {
	t.Helper()
	dir := filepath.Join(root, strconv.Itoa(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "status"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Allow decides from the numbers, then from /proc/<pid>/status's Groups
// line, and only while that process has the peer's uid.
func TestAllowProc(t *testing.T) {
	root := t.TempDir()
	writeStatus(t, root, 1, "Name:\tx\nUid:\t2000\t2000\t2000\t2000\nGid:\t2000\t2000\t2000\t2000\nGroups:\t4 990 \n")
	writeStatus(t, root, 2, "Name:\tx\nUid:\t3000\t3000\t3000\t3000\nGroups:\t990\n")                      // another user now
	writeStatus(t, root, 3, "Name:\tx\nUid:\t2000\t2000\t2000\t2000\n"+strings.Repeat("Pad:\t0\n", 20000)) // Groups cut off
	writeStatus(t, root, 4, "Name:\tx\nUid:\t2000\t2000\t2000\t2000\nGroups:\t4 x\n")
	p := Policy{Owner: 1000, Group: 990, GroupName: "rainforest"}
	for _, c := range []struct {
		name     string
		uid, gid uint32
		pid      int32
		ok       bool
	}{
		{"root", 0, 0, 9, true},
		{"owner", 1000, 1000, 9, true},
		{"primary gid", 2000, 990, 9, true},
		{"supplementary", 2000, 2000, 1, true},
		{"pid now another user's", 2000, 2000, 2, false},
		{"status too long", 2000, 2000, 3, false},
		{"malformed groups", 2000, 2000, 4, false},
		{"no such pid", 2000, 2000, 8, false},
		{"pid 0", 2000, 2000, 0, false},
	} {
		if got := p.allowProc(root, c.uid, c.gid, c.pid); got != c.ok {
			t.Errorf("%s: allow = %v, want %v", c.name, got, c.ok)
		}
	}
	if (Policy{Owner: 1000, Group: NoGroup}).allowProc(root, 2000, 2000, 1) {
		t.Error("no group: allowed by supplementary groups")
	}
	// The real /proc: this process is allowed by its own groups.
	groups, _ := os.Getgroups()
	if len(groups) > 0 {
		self := Policy{Owner: 123456, Group: groups[0], GroupName: "g"}
		if os.Geteuid() != 0 && !self.Allow(uint32(os.Geteuid()), 123456, int32(os.Getpid())) {
			t.Error("Allow with the real /proc refused this process")
		}
	}
}

// The socket file is born with at most the owner's bits, even under a
// umask that masks nothing, and ends with the mode and group asked for.
func TestListenBornMode(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := t.TempDir()
	gid := os.Getegid()
	for _, c := range []struct {
		network string
		mode    os.FileMode
		gid     int
	}{
		{"unix", 0o600, -1},
		{"unix", 0o660, gid},
		{"unixpacket", 0o600, -1},
	} {
		path := filepath.Join(dir, "s.sock")
		var born os.FileMode
		ln, err := listen(c.network, path, c.mode, c.gid, func() {
			fi, err := os.Lstat(path)
			if err != nil {
				t.Error(err)
				return
			}
			born = fi.Mode()
		})
		if err != nil {
			t.Fatal(err)
		}
		if born.Perm() != c.mode.Perm()&0o700 || born&os.ModeSocket == 0 {
			t.Errorf("%s %v: born %v, want %v", c.network, c.mode, born, c.mode&0o700)
		}
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != c.mode || (c.gid >= 0 && int(st.Gid) != c.gid) {
			t.Errorf("%s: mode %v gid %d, want %v gid %d", c.network, fi.Mode(), st.Gid, c.mode, c.gid)
		}
		conn, err := net.Dial(c.network, path)
		if err != nil {
			t.Errorf("%s: dial: %v", c.network, err)
		} else {
			conn.Close()
		}
		ln.Close()
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: socket file left after Close: %v", c.network, err)
		}
	}
	// Through the exported entry point, under the same umask.
	path := filepath.Join(dir, "e.sock")
	ln, err := ListenUnix(path, 0o600, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("ListenUnix: %v, %v", fi.Mode(), err)
	}
	if _, err := ListenUnix(path, 0o600, -1); err == nil {
		t.Error("Listen over an existing file: no error")
	}
	if _, err := Listen("udp", filepath.Join(dir, "x"), 0o600, -1); err == nil {
		t.Error("Listen udp: no error")
	}
}

// A connection from another uid (a real child process) is seen as such
// and refused by a policy that allows root and the owner only.
func TestStrangerRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a child as another user")
	}
	dir := peercredtest.Dir(t)
	path := filepath.Join(dir, "s.sock")
	ln, err := ListenUnix(path, 0o666, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := Policy{Owner: 0, Group: NoGroup}
	got := make(chan Cred, 1)
	go func() {
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		defer c.Close()
		cred, err := Of(c)
		if err != nil {
			c.Write([]byte("error " + err.Error()))
			return
		}
		got <- cred
		if err := p.Check(cred); err != nil {
			c.Write([]byte("refused: " + err.Error()))
			return
		}
		c.Write([]byte("ok"))
	}()
	out, err := peercredtest.Dial(t, "unix", path, peercredtest.Nobody, peercredtest.Nobody, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(out, []byte("refused: ")) {
		t.Errorf("child got %q, want a refusal", out)
	}
	cred := <-got
	if cred.UID != peercredtest.Nobody || cred.GID != peercredtest.Nobody || len(cred.Groups) != 0 || cred.PID <= 0 || cred.PID == int32(os.Getpid()) {
		t.Errorf("child's credentials %+v", cred)
	}
}

func TestRefusalsBounded(t *testing.T) {
	var buf bytes.Buffer
	r := NewRefusals(slog.New(slog.NewTextHandler(&buf, nil)))
	now := time.Unix(1000, 0)
	r.now = func() time.Time { return now }
	for range refusalBurst + 5 {
		r.Refused("API socket", Cred{UID: 7, PID: 9}, ErrRefused)
	}
	if n := strings.Count(buf.String(), "\n"); n != refusalBurst {
		t.Errorf("%d lines logged, want %d", n, refusalBurst)
	}
	if !strings.Contains(buf.String(), "API socket: peer refused") || !strings.Contains(buf.String(), "uid=7") || !strings.Contains(buf.String(), "pid=9") {
		t.Errorf("log: %s", buf.String())
	}
	buf.Reset()
	now = now.Add(refusalWindow)
	r.Refused("API socket", Cred{UID: 7, PID: 9}, ErrRefused)
	if !strings.Contains(buf.String(), "not_logged_before=5") {
		t.Errorf("next window: %s", buf.String())
	}
}

func TestConsolePolicy(t *testing.T) {
	p := ConsolePolicy(990, "rainforest")
	if !p.Allow(0, 0, 1) || p.Allow(1000, 1000, 0) || !p.Allow(1000, 990, 0) {
		t.Errorf("console policy %v: root, stranger, member by gid decided wrong", p)
	}
	if ConsolePolicy(NoGroup, "").Allow(1000, 990, 0) {
		t.Error("without a group a non-root peer may attach")
	}
}
