package vmmctl

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"rainforest/vmm/config"
)

// fuzzHandler answers runtime requests at once, without a VMM.
type fuzzHandler struct{}

func (fuzzHandler) AttachDisk(_ context.Context, d config.Disk, backing *os.File) (Device, error) {
	if backing != nil {
		backing.Close() // the handler owns it
	}
	if d.Path == "/taken" {
		return Device{}, ErrExists
	}
	return Device{ID: "disk1", Kind: "disk", Path: d.Path}, nil
}

func (fuzzHandler) Grant(_ context.Context, r config.Region, files []*os.File) (Device, error) {
	for _, f := range files {
		f.Close()
	}
	return Device{ID: "region/" + r.Name, Kind: "region", Name: r.Name}, nil
}

func (fuzzHandler) Detach(_ context.Context, id string) error {
	if id == "busy" {
		return ErrNotReleased
	}
	return nil
}

func (fuzzHandler) Devices() []Device                     { return []Device{{ID: "console", Kind: "console"}} }
func (fuzzHandler) Export() ([]config.Region, []*os.File) { return nil, nil }
func (fuzzHandler) VCPUs() []VCPUPin                      { return []VCPUPin{{VCPU: 0, Core: 2, TID: 7}} }

func (fuzzHandler) Memory() (Memory, error) {
	return Memory{Requested: 2 << 20, Plugged: 2 << 20, RegionSize: 8 << 20, BlockSize: 2 << 20}, nil
}

func (fuzzHandler) SetMemory(_ context.Context, requested uint64) (Memory, error) {
	if requested%(2<<20) != 0 || requested > 8<<20 {
		return Memory{}, ErrInvalid
	}
	return Memory{Requested: requested, Plugged: requested, RegionSize: 8 << 20, BlockSize: 2 << 20}, nil
}

func (fuzzHandler) SetCPUs(cores []int) ([]VCPUPin, error) {
	if len(cores) > 1 {
		return nil, ErrInvalid
	}
	return []VCPUPin{{VCPU: 0, Core: cores[0]}}, nil
}

// openFDs counts this process's open descriptors.
func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// sendRaw sends body as one packet on c with n fresh eventfds attached
// (closed here after sending; the receiver holds its own copies).
func sendRaw(t *testing.T, c *net.UnixConn, body []byte, n int) {
	var fds []int
	for range n {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, fd)
	}
	var oob []byte
	if n > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err := c.WriteMsgUnix(body, oob, nil)
	for _, fd := range fds {
		unix.Close(fd)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// seqpacketPair returns the two ends of a SOCK_SEQPACKET socketpair.
func seqpacketPair(t *testing.T) (a, b *net.UnixConn) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]*net.UnixConn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "seqpacket")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c.(*net.UnixConn)
	}
	return conns[0], conns[1]
}

// checkReply checks what a reply decodes to on the supervisor's side:
// an error reply becomes an error wrapping its code's sentinel (or
// ErrVMM), and a reply without an error is no error.
func checkReply(t *testing.T, m Message) error {
	t.Helper()
	err := replyError(m)
	if (err == nil) != (m.Error == "") {
		t.Fatalf("reply %+v: error %v", m, err)
	}
	if err != nil && !errors.Is(err, ErrVMM) && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrExists) &&
		!errors.Is(err, ErrNotReleased) && !errors.Is(err, ErrInvalid) {
		t.Fatalf("reply %+v: error %v wraps no sentinel", m, err)
	}
	return err
}

// FuzzMessage sends one arbitrary packet (any bytes, with any number of
// descriptors attached) to each end of the control protocol, as chosen by
// end: the VMM accepting its launch request (AcceptLaunch, over a real
// listener), the VMM answering a runtime request (with a handler that
// answers at once), or the supervisor reading a reply. Whatever arrives:
//   - no descriptor leaks: every received file is closed or handed on,
//     and the process holds as many descriptors after as before;
//   - a launch is accepted only with a valid document and exactly the
//     descriptors its regions need; a refused one is answered with a
//     reply coded "invalid";
//   - every request that decodes gets one well-formed reply, with a known
//     code when it is an error, and no descriptors (the handler exports
//     none); one that does not is closed without a reply;
//   - a reply decodes to no error or to one wrapping a sentinel.
func FuzzMessage(f *testing.F) {
	launch := func(doc string) []byte { return []byte(`{"op":"launch","config":` + doc + `}`) }
	f.Add(launch(`{"version":1}`), uint8(0), uint8(0))
	f.Add(launch(`{"version":1,"regions":[{"name":"ficm","peers":2,"vectors":2,"self":0,"rw_size":0,"output_size":4096}]}`), uint8(5), uint8(0))
	f.Add(launch(`{"version":1,"regions":[{"name":"a","peers":2,"vectors":64,"self":1}]}`), uint8(3), uint8(0))
	f.Add([]byte(`{"op":"grant","regions":[{"name":"seg","peers":1,"vectors":1,"self":0}]}`), uint8(2), uint8(1))
	f.Add([]byte(`{"op":"detach","id":"busy","timeout_ms":5}`), uint8(0), uint8(1))
	f.Add([]byte(`{"op":"attach_disk","disk":{"path":"/taken"}}`), uint8(1), uint8(1))
	f.Add([]byte(`{"op":"export"}`), uint8(0), uint8(1))
	f.Add([]byte(`{"op":"set_cpus","cores":[3]}`), uint8(0), uint8(1))
	f.Add([]byte(`{"op":"set_cpus","cores":[3,4]}`), uint8(0), uint8(1))
	f.Add([]byte(`{"op":"vcpus"}`), uint8(0), uint8(1))
	f.Add([]byte(`{"vcpus":[{"vcpu":0,"core":2,"tid":7},{"vcpu":1,"core":2}]}`), uint8(0), uint8(2))
	f.Add([]byte(`{"error":"gone","code":"not_found"}`), uint8(2), uint8(2))
	f.Add([]byte(`{"devices":[{"id":"disk0","kind":"disk","slot":3}]}`), uint8(0), uint8(2))
	f.Add([]byte{}, uint8(0), uint8(2))

	path := filepath.Join(f.TempDir(), "fuzz.ctl")
	ln, err := Listen(path)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { ln.Close() })
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	f.Fuzz(func(t *testing.T, body []byte, nfds, end uint8) {
		body = body[:min(len(body), MaxMessage+16)]
		n := int(nfds % 8)
		before := openFDs(t)
		switch end % 3 {
		case 0: // the VMM's launch request
			c, err := Dial(path)
			if err != nil {
				t.Fatal(err)
			}
			sendRaw(t, c, body, n)
			l, err := AcceptLaunch(ln, 5*time.Second)
			if err == nil {
				want, ferr := FileCount(l.Config.Regions)
				if ferr != nil || want != len(l.Files) {
					t.Fatalf("launch accepted with %d files for regions needing %d (%v)", len(l.Files), want, ferr)
				}
				for _, f := range l.Files {
					f.Close()
				}
				if err := l.Reply(nil); err != nil {
					t.Fatal(err)
				}
			}
			m, files, rerr := Recv(c)
			c.Close()
			if rerr != nil {
				t.Fatalf("no reply to a launch request: %v", rerr)
			}
			if len(files) != 0 {
				t.Fatalf("launch reply with %d files", len(files))
			}
			if rep := checkReply(t, m); (err == nil) != (rep == nil) || (err != nil && m.Code != "invalid") {
				t.Fatalf("launch error %v, reply %+v", err, m)
			}
		case 1: // the VMM's runtime request
			client, server := seqpacketPair(t)
			sendRaw(t, client, body, n)
			answer(t.Context(), server, fuzzHandler{}, quiet)
			m, files, rerr := Recv(client)
			client.Close()
			if rerr == nil {
				if len(files) != 0 {
					t.Fatalf("reply with %d files", len(files))
				}
				checkReply(t, m)
				if m.Error != "" && m.Code != "" && m.Code != "invalid" && m.Code != "exists" && m.Code != "not_released" {
					t.Fatalf("reply code %q", m.Code)
				}
			} else if !errors.Is(rerr, errEOF) && !errors.Is(rerr, io.EOF) {
				// A request that does not decode is dropped without a
				// reply (answer logs it); the caller sees the close.
				t.Fatalf("reply: %v", rerr)
			}
		case 2: // the supervisor's reply
			vmm, sup := seqpacketPair(t)
			sendRaw(t, vmm, body, n)
			vmm.Close()
			m, files, err := Recv(sup)
			sup.Close()
			if err != nil {
				if len(files) != 0 {
					t.Fatalf("error %v with %d files", err, len(files))
				}
				break
			}
			if len(files) != n {
				t.Fatalf("received %d files, sent %d", len(files), n)
			}
			for _, f := range files {
				f.Close()
			}
			checkReply(t, m)
		}
		// More after is a leak; fewer is something of an earlier run
		// closed late (a finalizer), not this run's doing.
		if after := openFDs(t); after > before {
			t.Fatalf("%d descriptors open before, %d after", before, after)
		}
	})
}
