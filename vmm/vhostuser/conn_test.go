package vhostuser_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"rainforest/vmm/eventfd"
	"rainforest/vmm/vhostuser"
	vut "rainforest/vmm/vhostuser/vhostusertest"
	"rainforest/vmm/virtio"
)

const backEndFeatures = virtio.FeatureVersion1 | virtio.FeatureIndirectDesc | virtio.FeatureEventIdx | vhostuser.FeatureProtocolFeatures

// start returns a fake back end and the front end connected to it.
func start(t *testing.T, cfg vut.Config, opts vhostuser.Options) (*vut.BackEnd, *vhostuser.Conn) {
	t.Helper()
	b, err := vut.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cn := vhostuser.New(b.FrontEnd(), opts)
	t.Cleanup(func() {
		cn.Close()
		b.Close()
	})
	return b, cn
}

func TestHandshake(t *testing.T) {
	b, cn := start(t, vut.Config{Features: backEndFeatures,
		Protocol: vhostuser.ProtocolMQ | vhostuser.ProtocolReplyAck | vhostuser.ProtocolConfig | vhostuser.ProtocolResetDevice | vhostuser.ProtocolMemSlots,
		Queues:   2}, vhostuser.Options{})
	be, err := vhostuser.Handshake(t.Context(), cn, vhostuser.WantedProtocolFeatures)
	if err != nil {
		t.Fatal(err)
	}
	want := vhostuser.BackEnd{Features: backEndFeatures, Protocol: vhostuser.ProtocolMQ | vhostuser.ProtocolReplyAck | vhostuser.ProtocolResetDevice, Queues: 2}
	if be != want {
		t.Fatalf("handshake learnt %+v, want %+v", be, want)
	}
	got := b.Received()
	seq := []vhostuser.Request{vhostuser.GetFeatures, vhostuser.GetProtocolFeatures, vhostuser.SetProtocolFeatures, vhostuser.GetQueueNum, vhostuser.SetOwner}
	if reqs := b.Requests(); !slices.Equal(reqs, seq) {
		t.Fatalf("requests %v, want %v", reqs, seq)
	}
	if v, _ := vhostuser.ParseU64(got[2].Payload); v != want.Protocol {
		t.Fatalf("SET_PROTOCOL_FEATURES %#x, want %#x", v, want.Protocol)
	}
	// REPLY_ACK applies from the request after SET_PROTOCOL_FEATURES.
	if got[2].Flags&vhostuser.FlagNeedReply != 0 || got[4].Flags&vhostuser.FlagNeedReply == 0 {
		t.Fatalf("need-reply flags: SET_PROTOCOL_FEATURES %#x, SET_OWNER %#x", got[2].Flags, got[4].Flags)
	}
	for _, m := range got {
		if m.Flags&3 != 1 || len(m.FDs) != 0 {
			t.Fatalf("%v: flags %#x, %d descriptors", m.Request, m.Flags, len(m.FDs))
		}
	}
}

func TestHandshakeWithoutProtocolFeatures(t *testing.T) {
	b, cn := start(t, vut.Config{Features: virtio.FeatureVersion1}, vhostuser.Options{})
	be, err := vhostuser.Handshake(t.Context(), cn, vhostuser.WantedProtocolFeatures)
	if err != nil {
		t.Fatal(err)
	}
	if be.Protocol != 0 || be.Queues != 0 {
		t.Fatalf("handshake learnt %+v", be)
	}
	// SET_OWNER has no reply: wait for it to arrive.
	b.WaitFor(2)
	if reqs := b.Requests(); !slices.Equal(reqs, []vhostuser.Request{vhostuser.GetFeatures, vhostuser.SetOwner}) {
		t.Fatalf("requests %v", reqs)
	}
}

func TestRefusedRequest(t *testing.T) {
	_, cn := start(t, vut.Config{Features: backEndFeatures, Protocol: vhostuser.ProtocolReplyAck,
		Refuse: func(r vhostuser.Request) uint64 {
			if r == vhostuser.SetOwner {
				return 1
			}
			return 0
		}}, vhostuser.Options{})
	if _, err := vhostuser.Handshake(t.Context(), cn, vhostuser.WantedProtocolFeatures); !errors.Is(err, vhostuser.ErrRefused) {
		t.Fatalf("handshake: %v, want ErrRefused", err)
	}
	if err := cn.Err(); err != nil {
		t.Fatalf("a refusal ended the connection: %v", err)
	}
	if _, err := cn.GetFeatures(t.Context()); err != nil {
		t.Fatalf("after a refusal: %v", err)
	}
}

// rawReply is a reply's wire form from its fields.
func rawReply(req vhostuser.Request, flags uint32, payload []byte) []byte {
	h := vhostuser.Header{Request: req, Flags: flags, Size: uint32(len(payload))}.Encode()
	return append(h[:], payload...)
}

func TestMalformedReplies(t *testing.T) {
	for name, raw := range map[string][]byte{
		"other request":  rawReply(vhostuser.GetQueueNum, 5, vhostuser.EncodeU64(1)),
		"not a reply":    rawReply(vhostuser.GetFeatures, 1, vhostuser.EncodeU64(1)),
		"short payload":  rawReply(vhostuser.GetFeatures, 5, []byte{1, 2, 3, 4}),
		"long payload":   rawReply(vhostuser.GetFeatures, 5, make([]byte, 64)),
		"bad version":    rawReply(vhostuser.GetFeatures, 4, vhostuser.EncodeU64(1)),
		"huge size":      {1, 0, 0, 0, 5, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0x7F},
		"unknown id":     rawReply(vhostuser.Request(4000), 5, vhostuser.EncodeU64(1)),
		"cut short":      rawReply(vhostuser.GetFeatures, 5, vhostuser.EncodeU64(1))[:15],
		"header only":    {1, 0, 0, 0, 5},
		"zero-size body": rawReply(vhostuser.GetFeatures, 5, nil),
	} {
		t.Run(name, func(t *testing.T) {
			_, cn := start(t, vut.Config{Misbehave: func(r vhostuser.Request) ([]byte, bool) {
				// A cut message ends with the back end hanging up.
				return raw, len(raw) < 12 || name == "cut short"
			}}, vhostuser.Options{})
			_, err := cn.GetFeatures(t.Context())
			if err == nil {
				t.Fatal("a malformed reply was accepted")
			}
			<-cn.Done()
			if !errors.Is(cn.Err(), vhostuser.ErrProtocol) && !errors.Is(cn.Err(), vhostuser.ErrClosed) {
				t.Fatalf("connection ended with %v", cn.Err())
			}
			if _, err := cn.GetFeatures(t.Context()); err == nil {
				t.Fatal("a request went through on a failed connection")
			}
		})
	}
}

func TestCutShortMessageIsProtocolError(t *testing.T) {
	raw := rawReply(vhostuser.GetFeatures, 5, vhostuser.EncodeU64(1))[:15]
	b, cn := start(t, vut.Config{Misbehave: func(vhostuser.Request) ([]byte, bool) { return raw, false }}, vhostuser.Options{})
	go func() {
		b.WaitFor(1)
		b.HangUp()
	}()
	if _, err := cn.GetFeatures(t.Context()); !errors.Is(err, vhostuser.ErrProtocol) {
		t.Fatalf("got %v, want ErrProtocol", err)
	}
}

func TestUnsolicitedMessage(t *testing.T) {
	// SET_OWNER has no reply without REPLY_ACK; the back end answers it
	// anyway.
	_, cn := start(t, vut.Config{Features: virtio.FeatureVersion1, Misbehave: func(r vhostuser.Request) ([]byte, bool) {
		if r == vhostuser.SetOwner {
			return rawReply(vhostuser.SetOwner, 5, vhostuser.EncodeU64(0)), false
		}
		return nil, false
	}}, vhostuser.Options{})
	if err := cn.SetOwner(t.Context()); err != nil {
		t.Fatal(err)
	}
	<-cn.Done()
	if !errors.Is(cn.Err(), vhostuser.ErrProtocol) {
		t.Fatalf("connection ended with %v, want ErrProtocol", cn.Err())
	}
}

func TestBackEndHangsUp(t *testing.T) {
	_, cn := start(t, vut.Config{Misbehave: func(vhostuser.Request) ([]byte, bool) { return nil, true }}, vhostuser.Options{})
	if _, err := cn.GetFeatures(t.Context()); !errors.Is(err, vhostuser.ErrClosed) {
		t.Fatalf("got %v, want ErrClosed", err)
	}
	<-cn.Done()
	if !errors.Is(cn.Err(), vhostuser.ErrClosed) {
		t.Fatalf("Err %v", cn.Err())
	}
}

func TestNoReplyEndsTheConnection(t *testing.T) {
	// The back end swallows GET_FEATURES; the request's deadline ends
	// it (whatever the deadline: the reply never comes).
	_, cn := start(t, vut.Config{Misbehave: func(vhostuser.Request) ([]byte, bool) { return []byte{}, false }},
		vhostuser.Options{Timeout: time.Millisecond})
	_, err := cn.GetFeatures(t.Context())
	if !errors.Is(err, vhostuser.ErrClosed) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want ErrClosed and DeadlineExceeded", err)
	}
	<-cn.Done()
}

func TestReplyWithDescriptorsIsRefused(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	front, back := socketConn(t, fds[0]), socketConn(t, fds[1])
	defer back.Close()
	cn := vhostuser.New(front, vhostuser.Options{})
	defer cn.Close()
	ev, err := eventfd.New()
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	go func() {
		if _, err := vhostuser.ReadMessage(back, 0); err != nil {
			return
		}
		_ = vhostuser.WriteMessage(back, vhostuser.Header{Request: vhostuser.GetFeatures, Flags: 5}, vhostuser.EncodeU64(1), []int{ev.Fd()})
	}()
	if _, err := cn.GetFeatures(t.Context()); !errors.Is(err, vhostuser.ErrProtocol) {
		t.Fatalf("got %v, want ErrProtocol", err)
	}
}

func TestTooManyDescriptorsAreRefused(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, b := socketConn(t, fds[0]), socketConn(t, fds[1])
	defer a.Close()
	defer b.Close()
	ev, err := eventfd.New()
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	errc := make(chan error, 1)
	go func() {
		_, err := vhostuser.ReadMessage(b, 1)
		errc <- err
	}()
	if err := vhostuser.WriteMessage(a, vhostuser.Header{Request: vhostuser.SetMemTable, Flags: 1}, nil, []int{ev.Fd(), ev.Fd()}); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, vhostuser.ErrProtocol) {
		t.Fatalf("got %v, want ErrProtocol", err)
	}
}
