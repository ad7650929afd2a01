package vsock_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"rainforest/vmm/virtio/vsock"
)

func TestConfigAndCID(t *testing.T) {
	if _, err := vsock.New(vsock.Options{CID: 2}); !errors.Is(err, vsock.ErrBadCID) {
		t.Fatalf("CID 2: %v", err)
	}
	r := newRig(t, vsock.Options{CID: 0x1_0000_0000 - 2})
	b := make([]byte, 8)
	r.dev.ReadConfig(0, b)
	if got := binary.LittleEndian.Uint64(b); got != 0x1_0000_0000-2 {
		t.Fatalf("guest_cid %#x", got)
	}
	b4 := make([]byte, 4)
	r.dev.ReadConfig(4, b4)
	r.dev.ReadConfig(8, b4)
	if !bytes.Equal(b4, make([]byte, 4)) {
		t.Fatalf("past the config: %x", b4)
	}
}

// listen makes a Unix listener in a temporary directory.
func listen(t *testing.T, path string) *net.UnixListener {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func TestHostInitiated(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "v.sock")
	r := newRig(t, vsock.Options{Listener: listen(t, sock)})
	hc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	// The first data travels in the same write as the CONNECT line.
	if _, err := io.WriteString(hc, "CONNECT 52\nearly"); err != nil {
		t.Fatal(err)
	}
	req, _ := r.recvOp(vsock.OpRequest)
	if req.DstPort != 52 || req.SrcPort < 1<<30 {
		t.Fatalf("request %+v", req)
	}
	resp := hdr(vsock.OpResponse, 52, req.SrcPort)
	r.send(resp, nil)
	br := bufio.NewReader(hc)
	line, err := br.ReadString('\n')
	if err != nil || line != fmt.Sprintf("OK %d\n", req.SrcPort) {
		t.Fatalf("answer %q, %v", line, err)
	}
	if _, p := r.recvOp(vsock.OpRW); string(p) != "early" {
		t.Fatalf("guest got %q", p)
	}
	if _, err := io.WriteString(hc, "ping"); err != nil {
		t.Fatal(err)
	}
	if _, p := r.recvOp(vsock.OpRW); string(p) != "ping" {
		t.Fatalf("guest got %q", p)
	}
	r.send(hdr(vsock.OpRW, 52, req.SrcPort), []byte("pong"))
	got := make([]byte, 4)
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "pong" {
		t.Fatalf("host got %q, %v", got, err)
	}
	// The guest closes: the host peer reads EOF, the guest gets RST.
	sh := hdr(vsock.OpShutdown, 52, req.SrcPort)
	sh.Flags = vsock.ShutdownRcv | vsock.ShutdownSend
	r.send(sh, nil)
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Fatalf("host read %q, %v after the guest closed", rest, err)
	}
	h, _ := r.recvOp(vsock.OpRST)
	if h.SrcPort != req.SrcPort || h.DstPort != 52 {
		t.Fatalf("rst %+v", h)
	}
	if s := r.dev.Stats(); s.Conns != 0 || s.Accepted != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestHostInitiatedRefused(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "v.sock")
	r := newRig(t, vsock.Options{Listener: listen(t, sock)})
	for _, line := range []string{"CONNECT\n", "CONNECT 99999999999\n", "HELLO 5\n", strings.Repeat("x", 40)} {
		hc, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(hc, line)
		if b, _ := io.ReadAll(hc); len(b) != 0 {
			t.Fatalf("%q answered %q", line, b)
		}
		hc.Close()
	}
	// The guest refuses: the host peer is closed without an answer.
	hc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	io.WriteString(hc, "CONNECT 9\n")
	req, _ := r.recvOp(vsock.OpRequest)
	r.send(hdr(vsock.OpRST, 9, req.SrcPort), nil)
	if b, _ := io.ReadAll(hc); len(b) != 0 {
		t.Fatalf("refused connection answered %q", b)
	}
	r.expectNone()
}

func TestGuestInitiated(t *testing.T) {
	base := filepath.Join(t.TempDir(), "v.sock")
	ln := listen(t, base+"_1234")
	r := newRig(t, vsock.Options{Dial: vsock.DialUnix(base)})
	r.send(hdr(vsock.OpRequest, 40000, 1234), nil)
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	h, _ := r.recvOp(vsock.OpResponse)
	if h.SrcPort != 1234 || h.DstPort != 40000 || h.BufAlloc != vsock.BufAlloc {
		t.Fatalf("response %+v", h)
	}
	r.send(hdr(vsock.OpRW, 40000, 1234), []byte("hello host"))
	got := make([]byte, 10)
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != "hello host" {
		t.Fatalf("host got %q, %v", got, err)
	}
	io.WriteString(peer, "hello guest")
	peer.(*net.UnixConn).CloseWrite()
	if _, p := r.recvOp(vsock.OpRW); string(p) != "hello guest" {
		t.Fatalf("guest got %q", p)
	}
	if h, _ := r.recvOp(vsock.OpShutdown); h.Flags != vsock.ShutdownSend {
		t.Fatalf("shutdown %+v", h)
	}
	// The guest shuts its sending side: the peer reads EOF and the
	// connection ends.
	sh := hdr(vsock.OpShutdown, 40000, 1234)
	sh.Flags = vsock.ShutdownSend
	r.send(sh, nil)
	if b, err := io.ReadAll(peer); err != nil || len(b) != 0 {
		t.Fatalf("peer read %q, %v", b, err)
	}
	r.recvOp(vsock.OpRST)
	if s := r.dev.Stats(); s.Conns != 0 || s.Dialed != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestGuestInitiatedNoPeer(t *testing.T) {
	base := filepath.Join(t.TempDir(), "v.sock")
	r := newRig(t, vsock.Options{Dial: vsock.DialUnix(base)})
	r.send(hdr(vsock.OpRequest, 40000, 77), nil)
	if h, _ := r.recvOp(vsock.OpRST); h.SrcPort != 77 || h.DstPort != 40000 {
		t.Fatalf("rst %+v", h)
	}
	// Without a Dial every guest connection is refused.
	r2 := newRig(t, vsock.Options{})
	r2.send(hdr(vsock.OpRequest, 1, 2), nil)
	r2.recvOp(vsock.OpRST)
}

func TestMalformed(t *testing.T) {
	pd := newPipeDial()
	r := newRig(t, vsock.Options{Dial: pd.dial})
	mod := func(f func(*vsock.Header)) vsock.Header {
		h := hdr(vsock.OpRequest, 5, 6)
		f(&h)
		return h
	}
	cases := []struct {
		name    string
		h       vsock.Header
		payload []byte
		setLen  bool // send h.Len as given
	}{
		{"source cid", mod(func(h *vsock.Header) { h.SrcCID = 8 }), nil, false},
		{"destination cid", mod(func(h *vsock.Header) { h.DstCID = 9 }), nil, false},
		{"type", mod(func(h *vsock.Header) { h.Type = 2 }), nil, false},
		{"unknown op", mod(func(h *vsock.Header) { h.Op = 8 }), nil, false},
		{"op zero", mod(func(h *vsock.Header) { h.Op = 0 }), nil, false},
		{"payload on request", mod(func(h *vsock.Header) {}), []byte("x"), false},
		{"length past chain", mod(func(h *vsock.Header) { h.Op, h.Len = vsock.OpRW, 100 }), []byte("short"), true},
		{"length past max", mod(func(h *vsock.Header) { h.Op, h.Len = vsock.OpRW, vsock.MaxPacket+1 }), make([]byte, vsock.MaxPacket+1), true},
		{"flags on request", mod(func(h *vsock.Header) { h.Flags = 1 }), nil, false},
		{"shutdown without flags", mod(func(h *vsock.Header) { h.Op = vsock.OpShutdown }), nil, false},
		{"shutdown unknown flags", mod(func(h *vsock.Header) { h.Op, h.Flags = vsock.OpShutdown, 4 }), nil, false},
		{"rw on no connection", mod(func(h *vsock.Header) { h.Op = vsock.OpRW }), []byte("x"), false},
		{"response on no connection", mod(func(h *vsock.Header) { h.Op = vsock.OpResponse }), nil, false},
		{"credit update on no connection", mod(func(h *vsock.Header) { h.Op = vsock.OpCreditUpdate }), nil, false},
	}
	for i, c := range cases {
		if c.setLen {
			r.sendRaw(c.h, c.payload)
		} else {
			r.send(c.h, c.payload)
		}
		h, _ := r.recvOp(vsock.OpRST)
		if h.SrcPort != c.h.DstPort || h.DstPort != c.h.SrcPort {
			t.Fatalf("%s: rst %+v", c.name, h)
		}
		if s := r.dev.Stats(); s.Malformed != i+1 || s.Conns != 0 {
			t.Fatalf("%s: stats %+v", c.name, s)
		}
	}
	// An RST is never answered; a chain without a header is dropped.
	r.send(hdr(vsock.OpRST, 5, 6), nil)
	r.sendBytes(make([]byte, vsock.HeaderLen-1))
	r.expectNone()
	if s := r.dev.Stats(); s.Malformed != len(cases)+2 {
		t.Fatalf("stats %+v", s)
	}
	// A malformed packet on a connection ends it.
	r.send(hdr(vsock.OpRequest, 5, 6), nil)
	peer := <-pd.peers
	defer peer.Close()
	r.recvOp(vsock.OpResponse)
	bad := hdr(vsock.OpResponse, 5, 6) // a RESPONSE to our own response
	r.send(bad, nil)
	r.recvOp(vsock.OpRST)
	if b, _ := io.ReadAll(peer); len(b) != 0 {
		t.Fatalf("peer got %q", b)
	}
	if s := r.dev.Stats(); s.Conns != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestGuestOverrunsCredit(t *testing.T) {
	pd := newPipeDial()
	r := newRig(t, vsock.Options{Dial: pd.dial})
	r.send(hdr(vsock.OpRequest, 5, 6), nil)
	peer := <-pd.peers // never read: the device's writer blocks
	defer peer.Close()
	r.recvOp(vsock.OpResponse)
	chunk := make([]byte, vsock.MaxPacket)
	for range vsock.BufAlloc / vsock.MaxPacket {
		r.send(hdr(vsock.OpRW, 5, 6), chunk)
	}
	r.expectNone()
	if s := r.dev.Stats(); s.Conns != 1 {
		t.Fatalf("stats %+v", s)
	}
	r.send(hdr(vsock.OpRW, 5, 6), []byte("x")) // one byte past our buf_alloc
	r.recvOp(vsock.OpRST)
	if s := r.dev.Stats(); s.Conns != 0 || s.Malformed != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestCreditTowardsGuest(t *testing.T) {
	pd := newPipeDial()
	r := newRig(t, vsock.Options{Dial: pd.dial})
	req := hdr(vsock.OpRequest, 5, 6)
	req.BufAlloc = 10
	r.send(req, nil)
	peer := <-pd.peers
	defer peer.Close()
	r.recvOp(vsock.OpResponse)
	go io.WriteString(peer, strings.Repeat("a", 25))
	h, p := r.recvOp(vsock.OpRW)
	if len(p) != 10 || h.Len != 10 {
		t.Fatalf("first data %d bytes, the guest gave 10 of credit", len(p))
	}
	r.expectNone() // no credit
	// The guest read 4 bytes: 4 more may come.
	cu := hdr(vsock.OpCreditUpdate, 5, 6)
	cu.BufAlloc, cu.FwdCnt = 10, 4
	r.send(cu, nil)
	if _, p := r.recvOp(vsock.OpRW); len(p) != 4 {
		t.Fatalf("then %d bytes, want 4", len(p))
	}
	r.expectNone()
	// A guest claiming to have read more than it got gets nothing.
	cu.FwdCnt = 1000
	r.send(cu, nil)
	r.expectNone()
	cu.BufAlloc, cu.FwdCnt = 100, 14
	r.send(cu, nil)
	if _, p := r.recvOp(vsock.OpRW); len(p) != 11 {
		t.Fatalf("then %d bytes, want the 11 left", len(p))
	}
	// A credit request gets our counters.
	r.send(hdr(vsock.OpCreditRequest, 5, 6), nil)
	if h, _ := r.recvOp(vsock.OpCreditUpdate); h.BufAlloc != vsock.BufAlloc || h.FwdCnt != 0 {
		t.Fatalf("credit update %+v", h)
	}
}

func TestCreditUpdateAfterForwarding(t *testing.T) {
	pd := newPipeDial()
	r := newRig(t, vsock.Options{Dial: pd.dial})
	r.send(hdr(vsock.OpRequest, 5, 6), nil)
	peer := <-pd.peers
	defer peer.Close()
	r.recvOp(vsock.OpResponse)
	chunk := make([]byte, vsock.MaxPacket)
	for range 2 {
		r.send(hdr(vsock.OpRW, 5, 6), chunk)
	}
	if _, err := io.ReadFull(peer, make([]byte, 2*vsock.MaxPacket)); err != nil {
		t.Fatal(err)
	}
	for {
		h, _ := r.recvOp(vsock.OpCreditUpdate)
		if h.FwdCnt == 2*vsock.MaxPacket {
			break
		}
		if h.FwdCnt < vsock.BufAlloc/4 {
			t.Fatalf("credit update at %d", h.FwdCnt)
		}
	}
}

func TestHostPeerBounded(t *testing.T) {
	pd := newPipeDial()
	r := newRig(t, vsock.Options{Dial: pd.dial})
	req := hdr(vsock.OpRequest, 5, 6)
	req.BufAlloc = 0 // the guest takes nothing
	r.send(req, nil)
	peer := <-pd.peers
	defer peer.Close()
	r.recvOp(vsock.OpResponse)
	// The device reads at most MaxHostPending from the peer; the rest
	// of the write waits.
	done := make(chan int)
	go func() {
		n, _ := peer.Write(make([]byte, 4*vsock.MaxHostPending))
		done <- n
	}()
	r.expectNone()
	cu := hdr(vsock.OpCreditUpdate, 5, 6)
	cu.BufAlloc = 1 << 30
	r.send(cu, nil)
	total := 0
	for total < 4*vsock.MaxHostPending {
		_, p := r.recvOp(vsock.OpRW)
		total += len(p)
	}
	if n := <-done; n != 4*vsock.MaxHostPending {
		t.Fatalf("peer wrote %d", n)
	}
}

func TestConnectionLimit(t *testing.T) {
	pd := newPipeDial()
	r := newRig(t, vsock.Options{Dial: pd.dial})
	for i := range vsock.MaxConns {
		r.send(hdr(vsock.OpRequest, uint32(1000+i), 6), nil)
		r.recvOp(vsock.OpResponse)
	}
	r.send(hdr(vsock.OpRequest, 5000, 6), nil)
	r.recvOp(vsock.OpRST)
	if s := r.dev.Stats(); s.Conns != vsock.MaxConns {
		t.Fatalf("stats %+v", s)
	}
	// A second REQUEST on an open connection ends it.
	r.send(hdr(vsock.OpRequest, 1000, 6), nil)
	r.recvOp(vsock.OpRST)
	r.send(hdr(vsock.OpRequest, 6000, 6), nil)
	r.recvOp(vsock.OpResponse)
	// Reset forgets every connection and closes the peers.
	r.dev.Reset()
	if s := r.dev.Stats(); s.Conns != 0 {
		t.Fatalf("stats after reset %+v", s)
	}
	for range vsock.MaxConns + 1 {
		p := <-pd.peers
		if _, err := p.Read(make([]byte, 1)); err == nil {
			t.Fatal("peer open after reset")
		}
	}
}

func TestRSTBacklogStopsTx(t *testing.T) {
	r := newRigWith(t, vsock.Options{}, false) // no receive buffers: RSTs wait
	for i := range 200 {
		b := make([]byte, vsock.HeaderLen)
		hdr(vsock.OpRW, 1, 2).Encode(b)
		if !r.post(b) {
			if i != 128 {
				t.Fatalf("the device stopped reading tx after %d packets", i)
			}
			// Receive buffers let the RSTs out and the tx queue move.
			for range rxSize {
				r.postRx()
			}
			r.dev.QueueNotify(vsock.RxQueue)
			for range 129 {
				r.recvOp(vsock.OpRST)
			}
			return
		}
	}
	t.Fatal("the device kept reading tx with RSTs owed")
}
