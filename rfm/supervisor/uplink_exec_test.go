package supervisor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// An uplink that fails to start is reported with what it said.
func TestExecUplinkFailure(t *testing.T) {
	script := filepath.Join(t.TempDir(), "rfm")
	os.WriteFile(script, []byte("#!/bin/sh\necho 'rfm: host port 8080/tcp is already in use' >&2\nexit 4\n"), 0o755)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	f := os.NewFile(uintptr(fds[1]), "frames")
	defer f.Close()
	var joined int
	_, err = ExecUplink{RFM: script}.StartUplink(nil, f, func(pid int) error { joined = pid; return nil })
	if err == nil || !strings.Contains(err.Error(), "already in use") || joined == 0 {
		t.Errorf("StartUplink of a failing uplink: %v (joined %d)", err, joined)
	}
}
