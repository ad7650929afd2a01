package share_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"rainforest/rfm/share"
	"rainforest/vmm/vhostuser"
	"rainforest/vmm/virtio/fs"
)

// TestRealVirtiofsd starts the machine's virtiofsd as the supervisor does
// (Find, Socket, Args; the read-only view as its source) and runs the
// vhost-user handshake with it on the front end's end of the socket.
func TestRealVirtiofsd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("virtiofsd's sandbox needs root")
	}
	bin, err := share.Find(t.Context())
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	view := filepath.Join(t.TempDir(), "view")
	if err := share.ReadOnlyView(dir, view); err != nil {
		t.Skipf("no bind mounts here: %v", err)
	}
	defer share.RemoveView(view)
	sockDir, err := os.MkdirTemp("", "rfsh") // short: sun_path
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	ln, conn, err := share.Socket(filepath.Join(sockDir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cmd := exec.Command(bin.Path, bin.Args(3, view, true, share.DefaultSandbox())...)
	cmd.ExtraFiles = []*os.File{ln}
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ln.Close()
	done := make(chan struct{})
	go func() { // owner: the test; ends when virtiofsd does
		cmd.Wait()
		close(done)
	}()
	defer func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("virtiofsd %s: %s", bin.Path, log.String())
		}
	}()
	c, err := net.FileConn(conn)
	conn.Close() // c has its own descriptor
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), vhostuser.DefaultTimeout)
	defer cancel()
	d, err := fs.New(ctx, vhostuser.New(c.(*net.UnixConn), vhostuser.Options{}), fs.Options{Tag: "t"})
	if err != nil {
		t.Fatalf("handshake with virtiofsd: %v", err)
	}
	t.Logf("%s (rust %v): features %#x", bin.Path, bin.Rust, d.BackEnd().Features)
	// Closing the front end's end, its only one, ends virtiofsd.
	d.Close()
	<-done
}
