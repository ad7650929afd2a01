package main

import (
	"bufio"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"rainforest/net/uplink"
)

// rfm uplink as the supervisor runs it: bad input, a port in use, and a
// clean end when the VMM's socket closes or SIGTERM comes.
func TestUplinkCommand(t *testing.T) {
	bin := rfmBinary(t)
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	heldPort := strconv.Itoa(held.Addr().(*net.TCPAddr).Port)
	sock := filepath.Join(t.TempDir(), "frames.sock")
	ns := []string{"--nameserver", "127.0.0.1"}

	t.Run("bad input", func(t *testing.T) {
		cases := []struct {
			args []string
			want string
		}{
			{nil, "--frame-fd or --frame-socket"},
			{[]string{"--frame-fd", "0", "--frame-socket", sock}, "--frame-fd or --frame-socket"},
			{[]string{"--frame-socket", sock, "--subnet", "10.0.2.0"}, "--subnet"},
			{[]string{"--frame-socket", sock, "--subnet", "10.0.0.0/30"}, "want an IPv4 network from /8 to /29"},
			{[]string{"--frame-socket", sock, "--publish", "80"}, "--publish"},
			{[]string{"--frame-socket", sock, "--publish", "8080:80/sctp"}, "neither tcp nor udp"},
			{[]string{"--frame-socket", sock, "--nameserver", "resolver"}, "--nameserver"},
			{[]string{"--frame-socket", sock, "--guest", "10.0.3.15"}, "guest address 10.0.3.15"},
			{[]string{"--frame-socket", sock, "--mac", "nope"}, "--mac"},
			{[]string{"--frame-socket", sock, "--mtu", "100"}, "MTU 100"},
			{[]string{"--frame-socket", sock, "--log-level", "loud"}, "--log-level"},
			{[]string{"--frame-fd", "0"}, "--frame-fd: frame socket"},
		}
		for _, c := range cases {
			args := append([]string{"uplink"}, c.args...)
			if !strings.Contains(strings.Join(c.args, " "), "--nameserver") {
				args = append(args, ns...)
			}
			out, err := exec.Command(bin, args...).CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Errorf("%v: %v, want status 2:\n%s", c.args, err, out)
				continue
			}
			if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); len(lines) != 1 || !strings.Contains(lines[0], c.want) {
				t.Errorf("%v: want one line naming %q, got:\n%s", c.args, c.want, out)
			}
		}
		if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the frame socket path is left behind: %v", err)
		}
	})

	t.Run("completion", func(t *testing.T) {
		r := runRFM(t, bin, nil, "__completeNoDesc", "uplink", "--log-level", "")
		if got := strings.Fields(strings.Split(r.stdout, ":")[0]); r.status != 0 || strings.Join(got, " ") != "debug info warn error" {
			t.Errorf("status %d, completions %q", r.status, got)
		}
	})

	t.Run("port in use", func(t *testing.T) {
		out, err := exec.Command(bin, append([]string{"uplink", "--frame-socket", sock, "--publish", "127.0.0.1:" + heldPort + ":80"}, ns...)...).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != exitConflict {
			t.Fatalf("%v, want status %d:\n%s", err, exitConflict, out)
		}
		if !strings.Contains(string(out), "host port "+heldPort+"/tcp is already in use") {
			t.Errorf("the error does not name the port:\n%s", out)
		}
	})

	// start runs rfm uplink on the socket path and waits for "ready".
	start := func(t *testing.T, extra ...string) (*exec.Cmd, *strings.Builder) {
		t.Helper()
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		args := append([]string{"uplink", "--frame-socket", sock, "--ready-fd", "3", "--log-level", "info"}, ns...)
		cmd := exec.Command(bin, append(args, extra...)...)
		cmd.ExtraFiles = []*os.File{w}
		stderr := &strings.Builder{}
		cmd.Stderr = stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		w.Close()
		line, err := bufio.NewReader(r).ReadString('\n')
		if line != "ready\n" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("ready fd: %q, %v\n%s", line, err, stderr)
		}
		return cmd, stderr
	}

	t.Run("the VMM closes", func(t *testing.T) {
		cmd, stderr := start(t)
		c, err := uplink.DialSeqpacket(t.Context(), sock)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if err := cmd.Wait(); err != nil {
			t.Fatalf("%v\n%s", err, stderr)
		}
		if !strings.Contains(stderr.String(), "uplink stopped") {
			t.Errorf("no final log line:\n%s", stderr)
		}
	})

	t.Run("SIGTERM", func(t *testing.T) {
		free, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := strconv.Itoa(free.Addr().(*net.TCPAddr).Port)
		free.Close()
		// Waiting for the VMM's connection, then while serving it.
		for _, connect := range []bool{false, true} {
			cmd, stderr := start(t, "--publish", "127.0.0.1:"+port+":80")
			if connect {
				c, err := uplink.DialSeqpacket(t.Context(), sock)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
			}
			cmd.Process.Signal(syscall.SIGTERM)
			if err := cmd.Wait(); err != nil {
				t.Fatalf("connected %v: %v\n%s", connect, err, stderr)
			}
			l, err := net.Listen("tcp", "127.0.0.1:"+port)
			if err != nil {
				t.Fatalf("connected %v: the published port is still held: %v", connect, err)
			}
			l.Close()
			if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("connected %v: the frame socket path is left behind: %v", connect, err)
			}
		}
	})
}
