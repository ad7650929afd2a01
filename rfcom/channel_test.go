package rfcom

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"rainforest/ficm/queue"
	"rainforest/ficm/ring"
)

// frame returns the deterministic frame seq of stream (channel, direction).
func frame(stream, seq int) []byte {
	r := rand.New(rand.NewPCG(uint64(stream), uint64(seq)))
	var n int
	switch x := r.IntN(100); {
	case x < 60:
		n = 1 + r.IntN(120)
	case x < 95:
		n = 1 + r.IntN(4096)
	default:
		n = 1 + r.IntN(MaxFrame)
	}
	if seq%50 == 7 {
		n = MaxFrame
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestChannelsManyFrames(t *testing.T) {
	g := newGroup(t, 3, nil, Options{})
	a, b := g.nodes[1], g.nodes[2]
	const chans, frames = 3, 150
	ctx := ctxT(t, 60*time.Second)
	var wg sync.WaitGroup
	errc := make(chan error, 4*chans)
	for i := range chans {
		l, err := b.Listen(uint16(100 + i))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ca, err := a.Dial(ctx, 2, uint16(100+i))
		if err != nil {
			t.Fatal(err)
		}
		cb, err := l.Accept(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ca.Peer() != 2 || cb.Peer() != 1 || cb.Port() != uint16(100+i) {
			t.Fatalf("peers %d %d port %d", ca.Peer(), cb.Peer(), cb.Port())
		}
		pairs := []struct {
			w, r   *Channel
			stream int
		}{{ca, cb, 2 * i}, {cb, ca, 2*i + 1}}
		for _, p := range pairs {
			wg.Go(func() {
				for s := range frames {
					f := frame(p.stream, s)
					if n, err := p.w.WriteContext(ctx, f); err != nil || n != len(f) {
						errc <- err
						return
					}
				}
			})
			wg.Go(func() {
				buf := make([]byte, MaxFrame)
				for s := range frames {
					n, err := p.r.ReadContext(ctx, buf)
					if err != nil {
						errc <- err
						return
					}
					if want := frame(p.stream, s); !bytes.Equal(buf[:n], want) {
						errc <- errors.New("frame lost, duplicated, reordered or corrupted")
						return
					}
				}
			})
		}
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	for _, n := range []*Node{a, b} {
		if s := n.Stats(); s.Malformed+s.UnknownChannel+s.FlowViolations+s.Overflow+s.UnknownType != 0 {
			t.Errorf("node %d stats %+v", n.Self(), s)
		}
	}
}

func TestFlowControl(t *testing.T) {
	g := newGroup(t, 3, nil, Options{Window: MaxFrame})
	a, b := g.nodes[1], g.nodes[2]
	ctx := ctxT(t, 30*time.Second)
	open := func(port uint16) (*Channel, *Channel) {
		l, err := b.Listen(port)
		if err != nil {
			t.Fatal(err)
		}
		ca, err := a.Dial(ctx, 2, port)
		if err != nil {
			t.Fatal(err)
		}
		cb, err := l.Accept(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return ca, cb
	}
	slowW, slowR := open(1)
	fastW, fastR := open(2)

	// The slow channel's reader never reads: its writer stops after one
	// window.
	chunk := bytes.Repeat([]byte{0xAB}, 1000)
	written := 0
	for {
		wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, err := slowW.WriteContext(wctx, chunk)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		written += len(chunk)
		if written > 4*MaxFrame {
			t.Fatal("writer was never blocked by flow control")
		}
	}
	if written < MaxFrame-len(chunk) || written > MaxFrame {
		t.Fatalf("blocked after %d bytes, window %d", written, MaxFrame)
	}
	// The other channel still flows, far beyond a ring's worth.
	done := make(chan error, 1)
	go func() {
		for i := range 2000 {
			if _, err := fastW.WriteContext(ctx, []byte{byte(i), byte(i >> 8)}); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	buf := make([]byte, 16)
	for i := range 2000 {
		n, err := fastR.ReadContext(ctx, buf)
		if err != nil || n != 2 || buf[0] != byte(i) || buf[1] != byte(i>>8) {
			t.Fatalf("fast frame %d = %x, %v", i, buf[:n], err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Reading the slow channel releases its writer; the frames are intact.
	go func() {
		_, err := slowW.WriteContext(ctx, chunk)
		done <- err
	}()
	for range written/len(chunk) + 1 {
		f, err := slowR.ReadFrame(ctx)
		if err != nil || !bytes.Equal(f, chunk) {
			t.Fatalf("slow frame %d bytes, %v", len(f), err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if s := b.Stats(); s.FlowViolations != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestDialErrorsAndShortBuffer(t *testing.T) {
	g := newGroup(t, 3, nil, Options{})
	a, b := g.nodes[1], g.nodes[2]
	ctx := ctxT(t, 10*time.Second)
	if _, err := a.Dial(ctx, 2, 7); !errors.Is(err, ErrRefused) {
		t.Fatalf("Dial without listener = %v", err)
	}
	if _, err := a.Dial(ctx, 1, 7); !errors.Is(err, ErrNoPeer) {
		t.Fatalf("Dial self = %v", err)
	}
	if _, err := a.Dial(ctx, 3, 7); !errors.Is(err, ErrNoPeer) {
		t.Fatalf("Dial out of range = %v", err)
	}
	l, err := b.Listen(7)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Listen(7); !errors.Is(err, ErrPortInUse) {
		t.Fatalf("Listen twice = %v", err)
	}
	c, err := a.Dial(ctx, 2, 7)
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(nil); !errors.Is(err, ErrFrameSize) {
		t.Fatalf("empty Write = %v", err)
	}
	if _, err := c.Write(make([]byte, MaxFrame+1)); !errors.Is(err, ErrFrameSize) {
		t.Fatalf("big Write = %v", err)
	}
	if _, err := c.Write([]byte("hello world")); err != nil {
		t.Fatal(err)
	}
	small := make([]byte, 5)
	if _, err := s.ReadContext(ctx, small); !errors.Is(err, ErrShortBuffer) {
		t.Fatalf("short Read = %v", err)
	}
	buf := make([]byte, 64)
	if n, err := s.ReadContext(ctx, buf); err != nil || string(buf[:n]) != "hello world" {
		t.Fatalf("Read after short = %q, %v", buf[:n], err)
	}
	// Deadlines bound the plain Read.
	s.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := s.Read(buf); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Read past deadline = %v", err)
	}
	// Closing the listener refuses later dials and fails Accept.
	l.Close()
	if _, err := l.Accept(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Accept after Close = %v", err)
	}
	if _, err := a.Dial(ctx, 2, 7); !errors.Is(err, ErrRefused) {
		t.Fatalf("Dial after listener Close = %v", err)
	}
}

func TestCloseEOF(t *testing.T) {
	g := newGroup(t, 3, nil, Options{})
	a, b := g.nodes[1], g.nodes[2]
	ctx := ctxT(t, 10*time.Second)
	l, _ := b.Listen(1)
	c, err := a.Dial(ctx, 2, 1)
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"one", "two", "three"} {
		if _, err := c.Write([]byte(f)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Write after Close = %v", err)
	}
	if _, err := c.Read(make([]byte, 8)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Read after Close = %v", err)
	}
	for _, want := range []string{"one", "two", "three"} {
		f, err := s.ReadFrame(ctx)
		if err != nil || string(f) != want {
			t.Fatalf("ReadFrame = %q, %v", f, err)
		}
	}
	if _, err := s.ReadFrame(ctx); !errors.Is(err, io.EOF) {
		t.Fatalf("ReadFrame after peer Close = %v", err)
	}
	if _, err := s.WriteContext(ctx, []byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Write after peer Close = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for a.channelCount()+b.channelCount() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("channels left: %d %d", a.channelCount(), b.channelCount())
		}
		time.Sleep(time.Millisecond)
	}
	if sa, sb := a.Stats(), b.Stats(); sa.UnknownChannel+sb.UnknownChannel+sa.Malformed+sb.Malformed != 0 {
		t.Fatalf("stats %+v %+v", sa, sb)
	}
}

func TestPeerGone(t *testing.T) {
	g := newGroup(t, 4, nil, Options{})
	a := g.nodes[1]
	ctx := ctxT(t, 10*time.Second)
	ab, _ := g.connect(t, ctx, 1, 2, 1)
	ac, _ := g.connect(t, ctx, 1, 3, 1)

	// Peer 2 dies (the supervisor clears its state): a blocked Read ends.
	errc := readLater(ctx, ab)
	time.Sleep(20 * time.Millisecond)
	g.kill(2)
	if err := <-errc; !errors.Is(err, ErrPeerGone) {
		t.Fatalf("Read from dead peer = %v", err)
	}
	if _, err := ab.WriteContext(ctx, []byte("x")); !errors.Is(err, ErrPeerGone) {
		t.Fatalf("Write to dead peer = %v", err)
	}
	if _, err := a.Dial(ctx, 2, 1); !errors.Is(err, ErrPeerGone) {
		t.Fatalf("Dial dead peer = %v", err)
	}
	ab.Close()

	// Peer 3 corrupts its ring to peer 1 (producer index far ahead).
	errc = readLater(ctx, ac)
	time.Sleep(20 * time.Millisecond)
	prod, err := ring.Uint32At(g.outs[3], SectionOffset+g.layout.TxOffset(1))
	if err != nil {
		t.Fatal(err)
	}
	prod.Store(0x7FFFFFFF)
	g.irq.Ring(1)
	if err := <-errc; !errors.Is(err, ErrPeerGone) {
		t.Fatalf("Read from corrupting peer = %v", err)
	}
	if a.Stats().PeerErrors == 0 {
		t.Fatal("peer error not counted")
	}
	_ = ac.Close()
	if a.channelCount() != 0 {
		t.Fatalf("%d channels left", a.channelCount())
	}
}

func TestNodeClose(t *testing.T) {
	g := newGroup(t, 3, nil, Options{})
	a, b := g.nodes[1], g.nodes[2]
	ctx := ctxT(t, 10*time.Second)
	l, _ := b.Listen(1)
	c, err := a.Dial(ctx, 2, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Accept(ctx); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 2)
	go func() {
		_, err := c.ReadFrame(ctx)
		errc <- err
	}()
	go func() {
		_, err := a.Recv(ctx)
		errc <- err
	}()
	time.Sleep(10 * time.Millisecond)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-errc; !errors.Is(err, ErrClosed) {
			t.Fatalf("after node Close: %v", err)
		}
	}
	if _, err := a.Listen(3); !errors.Is(err, ErrClosed) {
		t.Fatalf("Listen after Close = %v", err)
	}
	if _, err := a.Dial(ctx, 2, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Dial after Close = %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
}

// A raw peer (standing in for a buggy or hostile guest) opens a channel and
// sends malformed fragments; the node drops them and keeps working.
func TestMalformedFrames(t *testing.T) {
	g := newGroup(t, 3, []int{2}, Options{})
	a := g.nodes[1]
	ctx := ctxT(t, 10*time.Second)
	l, _ := a.Listen(9)
	g.send(t, 2, 1, openMsg(9, 5, MaxFrame))
	from, m := g.recv(t, 2)
	w, err := decodeWire(&m)
	if from != 1 || err != nil || w.typ != TypeAccept || w.dst != 5 {
		t.Fatalf("answer to OPEN: %d %+v %v", from, w, err)
	}
	s, err := l.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := w.src
	data := func(b []byte) queue.Message { m, _ := dataMsg(id, append(make([]byte, 1), b...), 1); return m }
	first := func(total int, b []byte) queue.Message {
		m := msg(TypeDataFirst, 4+len(b))
		m.Data[0], m.Data[1] = byte(id), byte(id>>8)
		m.Data[2], m.Data[3] = byte(total-1), byte((total-1)>>8)
		copy(m.Data[4:], b)
		return m
	}
	before := a.Stats().Malformed
	g.send(t, 2, 1, data([]byte("orphan")))             // DATA without DATA_FIRST
	g.send(t, 2, 1, first(10, []byte("12345")))         // frame of 10 ...
	g.send(t, 2, 1, first(3, []byte("abc")))            // ... cut by a new frame
	g.send(t, 2, 1, first(4, []byte("xy")))             // frame of 4 ...
	g.send(t, 2, 1, data([]byte("too long")))           // ... overrun
	g.send(t, 2, 1, msg(TypeDataFirst, 2))              // short header
	g.send(t, 2, 1, first(2, []byte("abc")))            // more than announced
	g.send(t, 2, 1, openMsg(9, 0, MaxFrame))            // channel id 0
	g.send(t, 2, 1, openMsg(9, 6, 100))                 // window too small
	g.send(t, 2, 1, creditMsg(999, 5))                  // unknown channel
	g.send(t, 2, 1, queue.Message{Type: 0x3F, Len: 1})  // unknown channel type
	g.send(t, 2, 1, queue.Message{Type: 0x00})          // unknown type
	g.send(t, 2, 1, queue.Message{Type: 0x55, Len: 62}) // unknown type
	g.send(t, 2, 1, first(5, []byte("hello")))
	f, err := s.ReadFrame(ctx)
	if err != nil || string(f) != "abc" {
		t.Fatalf("first good frame = %q, %v", f, err)
	}
	if f, err = s.ReadFrame(ctx); err != nil || string(f) != "hello" {
		t.Fatalf("second good frame = %q, %v", f, err)
	}
	st := a.Stats()
	if st.Malformed-before != 8 || st.UnknownChannel != 1 || st.UnknownType != 2 {
		t.Fatalf("stats %+v", st)
	}
	// The peer's credit came back: nothing is owed for the dropped bytes.
	// A bad slot (length 63) is a peer error, not a crash.
	slot := g.outs[2][SectionOffset+g.layout.TxOffset(1):]
	prodWord, err := ring.Uint32At(slot, 0)
	if err != nil {
		t.Fatal(err)
	}
	prod := prodWord.Load()
	off := 64 + 64*(prod%Slots)
	slot[off], slot[off+1] = 0x80, 63
	prodWord.Store(prod + 1)
	g.irq.Ring(1)
	if _, err := s.ReadFrame(ctx); !errors.Is(err, ErrPeerGone) {
		t.Fatalf("Read after bad slot = %v", err)
	}
}
