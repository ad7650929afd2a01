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
func virtiofsdCommand(t testing.TB, socket, dir string) *exec.Cmd {
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
func startVirtiofsd(t testing.TB) (cn *vhostuser.Conn, kill func() error, exited <-chan struct{}) {
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

// FUSE messages, as the guest's virtio-fs driver sends them.
const (
	fuseGetattr    = 3
	fuseInit       = 26
	fuseInHeader   = 40
	fuseOutHeader  = 16
	fuseInitInSize = 64
	fuseGetattrIn  = 16
	rootNode       = 1
)

// rig is a virtio-fs device on a real virtiofsd, activated on guest memory
// of a memfd with the test as the guest's driver.
type rig struct {
	d       *fs.Device
	mem     *guestmem.Memory
	queues  []*virtio.Queue
	drivers []*vt.Driver
	bells   *doorbells
	stop    *eventfd.EventFD // signalled when virtiofsd exits
	kill    func() error
	exited  <-chan struct{}
	unique  uint64
	taken   uint16 // used elements taken from the request queue
	feature uint64
}

func newRig(t testing.TB) *rig {
	cn, kill, exited := startVirtiofsd(t)
	d, err := fs.New(t.Context(), cn, fs.Options{Tag: "rf-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	be := d.BackEnd()
	t.Logf("virtiofsd: features %#x protocol %#x queues %d", be.Features, be.Protocol, be.Queues)
	if be.Protocol&vhostuser.ProtocolReplyAck == 0 {
		t.Log("virtiofsd does not acknowledge requests: the activation is not confirmed step by step")
	}
	// Guest memory on a memfd, as the VMM's RAM.
	memfd, err := unix.MemfdCreate("guest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(memfd), "guest")
	const size = 4 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	data, err := unix.Mmap(memfd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Munmap(data)
		f.Close()
	})
	mem, err := guestmem.New(guestmem.Region{GPA: 0, Data: data, File: f})
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{d: d, mem: mem, kill: kill, exited: exited, feature: virtio.FeatureVersion1 | d.ServedTransportFeatures()}
	r.drivers = []*vt.Driver{vt.NewDriver(mem, 16, 0x10000), vt.NewDriver(mem, 16, 0x20000)}
	for _, drv := range r.drivers {
		q, err := virtio.NewQueue(mem, drv.Config(), r.feature)
		if err != nil {
			t.Fatal(err)
		}
		r.queues = append(r.queues, q)
	}
	r.bells = &doorbells{kicks: newEvents(t, 2), calls: newEvents(t, 2)}
	if r.stop, err = eventfd.New(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.stop.Close() })
	go func() { // owner: the test; ends when virtiofsd exits (killed at cleanup)
		<-exited
		r.stop.Signal()
	}()
	return r
}

// activate is the driver's DRIVER_OK.
func (r *rig) activate(t testing.TB, irq virtio.Interrupts) {
	if err := r.d.Activate(virtio.Activation{Mem: r.mem, Features: r.feature, Queues: r.queues, IRQ: irq, Doorbells: r.bells}); err != nil {
		t.Fatalf("activate on virtiofsd: %v", err)
	}
}

// request sends a FUSE request (opcode, node, argument) on the request
// queue and returns the answer (header and body), as the guest's driver
// gets it: from guest memory once the call eventfd is signalled.
func (r *rig) request(t testing.TB, opcode uint32, node uint64, arg []byte) []byte {
	const in, out = 0x40000, 0x41000
	r.unique += 2
	req := make([]byte, fuseInHeader+len(arg))
	le := binary.LittleEndian
	le.PutUint32(req[0:], uint32(len(req)))
	le.PutUint32(req[4:], opcode)
	le.PutUint64(req[8:], r.unique)
	le.PutUint64(req[16:], node)
	copy(req[fuseInHeader:], arg)
	if err := r.mem.WriteAt(req, in); err != nil {
		t.Fatal(err)
	}
	drv := r.drivers[1]
	// With EVENT_IDX the driver asks for an interrupt at the next used
	// element, as Linux does once it has taken the previous ones.
	drv.SetUsedEvent(r.taken)
	head := drv.AddChain(vt.Buf{Addr: in, Len: uint32(len(req))}, vt.Buf{Addr: out, Len: 256, Write: true})
	if err := r.bells.kicks[1].Signal(); err != nil {
		t.Fatal(err)
	}
	// libvhost-user signals a call eventfd when it is given one (for
	// reconnections): wait until an interrupt comes with the answer.
	var id uint16
	var n uint32
	for {
		var ok bool
		if id, n, ok = drv.TakeUsed(); ok {
			break
		}
		if _, err := eventfd.Wait(r.stop, r.bells.calls[1:]); err != nil {
			t.Fatalf("no interrupt from virtiofsd: %v", err)
		}
	}
	r.taken++
	if id != head || n < fuseOutHeader || n > 256 {
		t.Fatalf("used element %d of %d bytes", id, n)
	}
	reply, _ := r.mem.Slice(out, uint64(n))
	if le.Uint32(reply[0:]) != n || int32(le.Uint32(reply[4:])) != 0 || le.Uint64(reply[8:]) != r.unique {
		t.Fatalf("FUSE reply header % x", reply[:fuseOutHeader])
	}
	return reply
}

// init sends FUSE_INIT, which virtiofsd wants first.
func (r *rig) init(t testing.TB) []byte {
	arg := make([]byte, fuseInitInSize)
	binary.LittleEndian.PutUint32(arg[0:], 7)
	binary.LittleEndian.PutUint32(arg[4:], 31)
	binary.LittleEndian.PutUint32(arg[8:], 128<<10)
	return r.request(t, fuseInit, 0, arg)
}

func TestRealVirtiofsd(t *testing.T) {
	r := newRig(t)
	d := r.d
	r.activate(t, &vt.IRQ{})

	// FUSE_INIT on the request queue: virtiofsd reads it from guest
	// memory, answers in it, and signals the call eventfd.
	reply := r.init(t)
	le := binary.LittleEndian
	if len(reply) < fuseOutHeader+8 || le.Uint32(reply[fuseOutHeader:]) != 7 {
		t.Fatalf("FUSE_INIT answered % x", reply)
	}
	t.Logf("FUSE_INIT answered: %d bytes, minor %d", len(reply), le.Uint32(reply[fuseOutHeader+4:]))
	// The root directory's attributes.
	attr := r.request(t, fuseGetattr, rootNode, make([]byte, fuseGetattrIn))
	if mode := le.Uint32(attr[fuseOutHeader+16+60:]); mode&unix.S_IFMT != unix.S_IFDIR {
		t.Fatalf("the root's mode %#o", mode)
	}

	// Reset stops the queues (GET_VRING_BASE) with virtiofsd's answer.
	d.Reset()
	if err := d.Err(); err != nil {
		t.Fatalf("after reset: %v", err)
	}
	irq := &resetIRQ{reset: make(chan struct{}, 1)}
	r.activate(t, irq)

	// virtiofsd dying is the back end's failure: the device reports it
	// and asks the driver for a reset.
	if err := r.kill(); err != nil {
		t.Fatal(err)
	}
	<-d.Done()
	<-irq.reset
	if !errors.Is(d.Err(), vhostuser.ErrClosed) {
		t.Fatalf("after virtiofsd died: %v", d.Err())
	}
}

// BenchmarkRealVirtiofsdGetattr is a FUSE request's round trip on the
// request queue to virtiofsd and back (kick, virtiofsd's work, call), as
// a guest's stat of the share's root makes it without the VMM on the
// path.
func BenchmarkRealVirtiofsdGetattr(b *testing.B) {
	r := newRig(b)
	r.activate(b, &vt.IRQ{})
	r.init(b)
	arg := make([]byte, fuseGetattrIn)
	for b.Loop() {
		r.request(b, fuseGetattr, rootNode, arg)
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

func newEvents(t testing.TB, n int) []*eventfd.EventFD {
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
