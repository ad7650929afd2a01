package fs_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"rainforest/vmm/eventfd"
	"rainforest/vmm/guestmem"
	"rainforest/vmm/vhostuser"
	"rainforest/vmm/virtio"
	"rainforest/vmm/virtio/fs"
	vt "rainforest/vmm/virtio/virtiotest"
)

// virtiofsdCommand returns the command serving dir on socket with the
// machine's virtiofsd: the Rust one (Debian's virtiofsd package,
// /usr/libexec/virtiofsd) runs without a sandbox as any user, QEMU's
// (qemu-system-common, /usr/lib/qemu/virtiofsd) needs root for its chroot
// sandbox. It skips the test when there is none it can run.
func virtiofsdCommand(t *testing.T, socket, dir string) *exec.Cmd {
	t.Helper()
	for _, path := range []string{"/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"} {
		if _, err := os.Stat(path); err != nil {
			continue
		}
		help, _ := exec.Command(path, "--help").CombinedOutput()
		if bytes.Contains(help, []byte("--shared-dir")) {
			return exec.Command(path, "--socket-path", socket, "--shared-dir", dir, "--sandbox", "none", "--cache", "never")
		}
		if os.Geteuid() != 0 {
			t.Logf("%s (QEMU's virtiofsd) needs root for its sandbox", path)
			continue
		}
		return exec.Command(path, "--socket-path="+socket, "-o", "source="+dir, "-o", "sandbox=chroot", "-o", "cache=none")
	}
	t.Skip("no virtiofsd to run (install Debian's virtiofsd package, or qemu-system-common and run as root)")
	return nil
}

// startVirtiofsd runs virtiofsd on a new directory and connects to it.
// exited is closed when it exits; kill kills it.
func startVirtiofsd(t *testing.T) (cn *vhostuser.Conn, kill func() error, exited <-chan struct{}) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hello"), []byte("hi"), 0o644); err != nil {
		t.Fatal(err)
	}
	sockDir, err := os.MkdirTemp("", "vfs") // short: sun_path holds 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	socket := filepath.Join(sockDir, "sock")
	cmd := virtiofsdCommand(t, socket, dir)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { // owner: the test; it ends when virtiofsd does
		cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("virtiofsd: %s", log.String())
		}
	})
	// virtiofsd creates its socket once it is ready.
	for {
		if _, err := os.Stat(socket); err == nil {
			break
		}
		select {
		case <-done:
			t.Fatalf("virtiofsd exited before listening: %s", log.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	cn, err = vhostuser.Dial(t.Context(), socket, vhostuser.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return cn, cmd.Process.Kill, done
}

// FUSE_INIT, as the guest's virtio-fs driver sends it first.
const (
	fuseInit       = 26
	fuseInHeader   = 40
	fuseOutHeader  = 16
	fuseInitInSize = 64
)

func TestRealVirtiofsd(t *testing.T) {
	cn, kill, exited := startVirtiofsd(t)
	d, err := fs.New(t.Context(), cn, fs.Options{Tag: "rf-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	be := d.BackEnd()
	t.Logf("virtiofsd: features %#x protocol %#x queues %d", be.Features, be.Protocol, be.Queues)
	if be.Protocol&vhostuser.ProtocolReplyAck == 0 {
		t.Log("virtiofsd does not acknowledge requests: the activation below is not confirmed step by step")
	}

	// Guest memory on a memfd, as the VMM's RAM.
	memfd, err := unix.MemfdCreate("guest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(memfd), "guest")
	defer f.Close()
	const size = 4 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	data, err := unix.Mmap(memfd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(data)
	mem, err := guestmem.New(guestmem.Region{GPA: 0, Data: data, File: f})
	if err != nil {
		t.Fatal(err)
	}
	features := virtio.FeatureVersion1 | d.ServedTransportFeatures()
	drivers := []*vt.Driver{vt.NewDriver(mem, 16, 0x10000), vt.NewDriver(mem, 16, 0x20000)}
	var queues []*virtio.Queue
	for _, drv := range drivers {
		q, err := virtio.NewQueue(mem, drv.Config(), features)
		if err != nil {
			t.Fatal(err)
		}
		queues = append(queues, q)
	}
	bells := &doorbells{kicks: newEvents(t, 2), calls: newEvents(t, 2)}
	if err := d.Activate(virtio.Activation{Mem: mem, Features: features, Queues: queues, IRQ: &vt.IRQ{}, Doorbells: bells}); err != nil {
		t.Fatalf("activate on virtiofsd: %v", err)
	}

	// FUSE_INIT on the request queue: virtiofsd reads it from guest
	// memory, answers in it, and signals the call eventfd.
	const in, out = 0x40000, 0x41000
	req := make([]byte, fuseInHeader+fuseInitInSize)
	le := binary.LittleEndian
	le.PutUint32(req[0:], uint32(len(req)))
	le.PutUint32(req[4:], fuseInit)
	le.PutUint64(req[8:], 2) // unique
	le.PutUint32(req[fuseInHeader:], 7)
	le.PutUint32(req[fuseInHeader+4:], 31)
	le.PutUint32(req[fuseInHeader+8:], 128<<10)
	if err := mem.WriteAt(req, in); err != nil {
		t.Fatal(err)
	}
	drv := drivers[1]
	head := drv.AddChain(vt.Buf{Addr: in, Len: uint32(len(req))}, vt.Buf{Addr: out, Len: 256, Write: true})
	if err := bells.kicks[1].Signal(); err != nil {
		t.Fatal(err)
	}
	stop, err := eventfd.New()
	if err != nil {
		t.Fatal(err)
	}
	defer stop.Close()
	go func() { // owner: the test; ends at the latest when virtiofsd exits
		<-exited
		stop.Signal()
	}()
	// libvhost-user signals a call eventfd when it is given one (for
	// reconnections): wait until an interrupt comes with the answer.
	var id uint16
	var n uint32
	for {
		if _, err := eventfd.Wait(stop, bells.calls[1:]); err != nil {
			t.Fatalf("no interrupt from virtiofsd: %v", err)
		}
		var ok bool
		if id, n, ok = drv.TakeUsed(); ok {
			break
		}
	}
	if id != head || n < fuseOutHeader+8 {
		t.Fatalf("used element %d of %d bytes", id, n)
	}
	reply, _ := mem.Slice(out, uint64(n))
	if le.Uint32(reply[0:]) != n || int32(le.Uint32(reply[4:])) != 0 || le.Uint64(reply[8:]) != 2 {
		t.Fatalf("FUSE reply header % x", reply[:fuseOutHeader])
	}
	if major := le.Uint32(reply[fuseOutHeader:]); major != 7 {
		t.Fatalf("FUSE_INIT answered major %d", major)
	}
	t.Logf("FUSE_INIT answered: %d bytes, minor %d", n, le.Uint32(reply[fuseOutHeader+4:]))

	// Reset stops the queues (GET_VRING_BASE) with virtiofsd's answer.
	d.Reset()
	if err := d.Err(); err != nil {
		t.Fatalf("after reset: %v", err)
	}
	irq := &resetIRQ{reset: make(chan struct{}, 1)}
	if err := d.Activate(virtio.Activation{Mem: mem, Features: features, Queues: queues, IRQ: irq, Doorbells: bells}); err != nil {
		t.Fatalf("activate again: %v", err)
	}

	// virtiofsd dying is the back end's failure: the device reports it
	// and asks the driver for a reset.
	if err := kill(); err != nil {
		t.Fatal(err)
	}
	<-d.Done()
	<-irq.reset
	if !errors.Is(d.Err(), vhostuser.ErrClosed) {
		t.Fatalf("after virtiofsd died: %v", d.Err())
	}
}

// resetIRQ reports NeedsReset on a channel.
type resetIRQ struct {
	vt.IRQ
	reset chan struct{}
}

func (r *resetIRQ) NeedsReset() { r.reset <- struct{}{} }

// doorbells are a transport's eventfds.
type doorbells struct {
	kicks, calls []*eventfd.EventFD
}

func (d *doorbells) Kick(q int) *eventfd.EventFD { return d.kicks[q] }
func (d *doorbells) Call(q int) *eventfd.EventFD { return d.calls[q] }

func newEvents(t *testing.T, n int) []*eventfd.EventFD {
	var evs []*eventfd.EventFD
	for range n {
		ev, err := eventfd.New()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ev.Close() })
		evs = append(evs, ev)
	}
	return evs
}
