// Package peercredtest runs a client of a Unix socket service as another
// user, for tests of whom a service refuses: the test binary re-executes
// itself (copied where that user may run it) with other credentials,
// connects, sends a request and returns what the server answered.
package peercredtest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Nobody is the uid and gid tests run strangers as.
const Nobody = 65534

const envDial = "PEERCREDTEST_DIAL" // network:path, in the child

// maxReply bounds what the child reads.
const maxReply = 1 << 20

// Main plays the child when the process is one that Dial started: it
// dials, sends its standard input as one write, prints what the server
// wrote until it closed the connection, and exits. Call it first in
// TestMain; otherwise it returns.
func Main() {
	target := os.Getenv(envDial)
	if target == "" {
		return
	}
	network, path, _ := strings.Cut(target, ":")
	if err := dial(network, path); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

func dial(network, path string) error {
	req, err := io.ReadAll(io.LimitReader(os.Stdin, maxReply))
	if err != nil {
		return err
	}
	c, err := net.Dial(network, path)
	if err != nil {
		return err
	}
	defer c.Close()
	// Only a bound against a hung test, not a measurement.
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	if len(req) > 0 {
		if _, err := c.Write(req); err != nil && !isClosed(err) {
			return err
		}
	}
	buf := make([]byte, maxReply)
	n := 0
	for n < len(buf) {
		m, err := c.Read(buf[n:])
		n += m
		if err != nil || (m == 0 && network == "unixpacket") {
			if err != nil && err != io.EOF && !isClosed(err) {
				return err
			}
			break
		}
	}
	_, err = os.Stdout.Write(buf[:n])
	return err
}

// isClosed: the server closed the connection on the child, which is how
// refusals look.
func isClosed(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// Dir returns a new directory that every user may enter (removed when the
// test ends), for sockets that Dial's child must reach.
func Dir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "peercredtest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// Dial connects to the socket at path (network "unix" or "unixpacket")
// from a child process running as uid and gid (no supplementary groups),
// sends request and returns what the server wrote before closing the
// connection; err carries the child's complaint. Only root can run it:
// call it after checking os.Geteuid() == 0.
func Dial(t testing.TB, network, path string, uid, gid uint32, request []byte) ([]byte, error) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := Dir(t)
	bin := filepath.Join(dir, "child.test")
	copyFile(t, self, bin)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), envDial+"="+network+":"+path)
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(request)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%w: %s", err, strings.TrimSpace(errOut.String()))
	}
	return out.Bytes(), nil
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
