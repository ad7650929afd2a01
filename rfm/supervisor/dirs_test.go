package supervisor

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// New creates missing directories owner-only (the run directory 0750 with
// the socket group), and refuses ones another user could write to, naming
// the directory, the problem and the fix.
func TestDirectoriesChecked(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	base := t.TempDir()
	cfg := func(state, run string, group int) Config {
		return Config{StateDir: state, RunDir: run, SocketGroup: group, Inventory: testInventory(), Actuator: &fakeActuator{}, Launcher: &fakeLauncher{}}
	}
	gid := os.Getegid()
	if gid == 0 {
		gid = 65534 // root may give the directory any group
	}
	state, run := filepath.Join(base, "new", "state"), filepath.Join(base, "new", "run")
	s, err := New(cfg(state, run, gid))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	for dir, want := range map[string]os.FileMode{state: 0o700, run: 0o750} {
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", dir, fi.Mode().Perm(), want)
		}
	}
	if fi, _ := os.Stat(run); int(fi.Sys().(*syscall.Stat_t).Gid) != gid {
		t.Errorf("run directory group %d, want %d", fi.Sys().(*syscall.Stat_t).Gid, gid)
	}
	run2 := filepath.Join(base, "new", "run2")
	if s, err := New(cfg(state, run2, 0)); err != nil {
		t.Fatal(err)
	} else {
		s.Close()
	}
	if fi, _ := os.Stat(run2); fi.Mode().Perm() != 0o700 {
		t.Errorf("run directory without a group: mode %v", fi.Mode().Perm())
	}

	writable := filepath.Join(base, "writable")
	os.Mkdir(writable, 0o777)
	os.Chmod(writable, 0o777)
	groupWritable := filepath.Join(base, "gw")
	os.Mkdir(groupWritable, 0o770)
	link := filepath.Join(base, "link")
	os.Symlink(run, link)
	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o600)
	for _, c := range []struct {
		state, run, want string
	}{
		{writable, run, "state directory " + writable + " has mode 0777: writable by group or others; fix with: chmod go-w"},
		{state, groupWritable, "run directory " + groupWritable + " has mode 0770"},
		{state, link, "run directory " + link + " is a symbolic link"},
		{file, run, "state directory " + file + " is not a directory"},
	} {
		_, err := New(cfg(c.state, c.run, 0))
		if !errors.Is(err, ErrUnsafeDir) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%s, %s) = %v, want %q", c.state, c.run, err, c.want)
		}
	}
	if os.Geteuid() == 0 {
		other := filepath.Join(base, "other")
		os.Mkdir(other, 0o700)
		os.Chown(other, 65534, 65534)
		_, err := New(cfg(state, other, 0))
		if !errors.Is(err, ErrUnsafeDir) || !strings.Contains(err.Error(), "is owned by uid 65534, not by the supervisor's uid 0; fix with: chown 0 "+other) {
			t.Errorf("run directory of another user: %v", err)
		}
	}
}

func TestGroupReachProblem(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o700)
	if p := groupReachProblem(dir, os.Getegid()); !strings.Contains(p, "cannot reach") {
		t.Errorf("0700: %q", p)
	}
	os.Chmod(dir, 0o750)
	if p := groupReachProblem(dir, os.Getegid()); p != "" {
		t.Errorf("0750: %q", p)
	}
}
