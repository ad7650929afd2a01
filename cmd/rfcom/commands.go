package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"rainforest/ficm/board"
	"rainforest/internal/units"
	"rainforest/rfcom"
)

// openTimeout bounds finding and opening the device.
const openTimeout = 10 * time.Second

func stateName(s uint8) string {
	switch s {
	case board.StateRunning:
		return "running"
	case board.StateStopping:
		return "stopping"
	}
	return fmt.Sprintf("state-%d", s)
}

func entryLine(en board.Entry) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s peer %d %s", en.Name, en.Peer, stateName(en.State))
	if len(en.CommCores) > 0 {
		fmt.Fprintf(&b, " cores %s", units.FormatCPUList(en.CommCores))
	}
	if en.MAC != ([6]byte{}) {
		m := en.MAC
		fmt.Fprintf(&b, " mac %02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
	}
	return b.String()
}

func (e *env) printBoard(b board.Board) {
	fmt.Fprintf(e.stdout, "board seq %d, supervisor peer %d, %d subOS(es)\n", b.Seq, b.Supervisor, len(b.Entries))
	for _, en := range b.Entries {
		fmt.Fprintln(e.stdout, "  "+entryLine(en))
	}
}

func (e *env) ls(args []string) error {
	fs := newFlags("ls")
	sock := registerSocket(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if err := noArgs(pos); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), openTimeout)
	defer cancel()
	g, err := e.groupInfo(ctx, e.socketPath(*sock))
	switch {
	case errors.Is(err, rfcom.ErrNoDevice):
		fmt.Fprintln(e.stdout, "ficm: no device")
	case err != nil:
		return err
	default:
		fmt.Fprintf(e.stdout, "peer %d of %d (ficm device %s)\n", g.Self, g.Peers, g.Address)
	}
	segs, err := rfcom.Segments(ctx, e.options())
	if err != nil {
		return err
	}
	for _, s := range segs {
		mode := "rw"
		if s.ReadOnly {
			mode = "ro"
		}
		fmt.Fprintf(e.stdout, "segment %s %d bytes %s (device %s)\n", s.Name, s.Size, mode, s.Address)
	}
	if len(segs) == 0 {
		fmt.Fprintln(e.stdout, "segments: none")
	}
	if g.Peers > 0 {
		if g.BoardErr != nil {
			fmt.Fprintf(e.stdout, "board: unavailable: %s\n", oneLine(g.BoardErr.Error()))
		} else {
			e.printBoard(g.Board)
		}
	}
	return nil
}

func (e *env) boardCmd(args []string) error {
	fs := newFlags("board")
	sock := registerSocket(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if err := noArgs(pos); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), openTimeout)
	defer cancel()
	g, err := e.groupInfo(ctx, e.socketPath(*sock))
	if err != nil {
		return err
	}
	if g.BoardErr != nil {
		return g.BoardErr
	}
	e.printBoard(g.Board)
	return nil
}

// viaDaemon runs fn with a context bounded by timeout (none when 0).
func (e *env) viaDaemon(timeout time.Duration, fn func(context.Context) (bool, error)) (bool, error) {
	ctx, cancel := withTimeout(timeout)
	defer cancel()
	return fn(ctx)
}

// openNode joins the FICM group.
func (e *env) openNode(poll bool) (*rfcom.Node, error) {
	ctx, cancel := context.WithTimeout(context.Background(), openTimeout)
	defer cancel()
	o := e.options()
	o.Poll = poll
	return rfcom.Open(ctx, o)
}

func (e *env) send(args []string) error {
	fs := newFlags("send")
	var t target
	t.register(fs)
	port := fs.Int("port", 1, "destination port")
	timeout := fs.Duration("timeout", 10*time.Second, "give up after this long (0: never)")
	sock := registerSocket(fs)
	msgs, err := parse(fs, args)
	if err != nil {
		return err
	}
	if err := t.check(); err != nil {
		return err
	}
	p, err := checkPort(*port)
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if len(m) == 0 || len(m) > rfcom.MaxFrame {
			return usagef("message of %d bytes (1..%d)", len(m), rfcom.MaxFrame)
		}
	}
	if handled, err := e.sendDaemon(e.socketPath(*sock), t, p, msgs, *timeout); handled {
		return err
	}
	n, err := e.openNode(false)
	if err != nil {
		return err
	}
	defer n.Close()
	peer, err := t.resolve(n)
	if err != nil {
		return err
	}
	ctx, cancel := withTimeout(*timeout)
	defer cancel()
	c, err := n.Dial(ctx, peer, p)
	if err != nil {
		return err
	}
	write := func(m []byte) error {
		_, err := c.WriteContext(ctx, m)
		return err
	}
	if len(msgs) > 0 {
		for _, m := range msgs {
			if err := write([]byte(m)); err != nil {
				return err
			}
		}
	} else {
		sc := bufio.NewScanner(e.stdin)
		sc.Buffer(make([]byte, 0, 64<<10), rfcom.MaxFrame+1)
		for sc.Scan() {
			if len(sc.Bytes()) == 0 {
				continue // a frame is at least one byte
			}
			if err := write(sc.Bytes()); err != nil {
				return err
			}
		}
		if err := sc.Err(); err != nil {
			return fmt.Errorf("stdin: %w", err)
		}
	}
	return c.Close()
}

func (e *env) recv(args []string) error {
	fs := newFlags("recv")
	port := fs.Int("port", 1, "port to listen on")
	count := fs.Int("count", 0, "stop after this many frames (0: at end of stream)")
	timeout := fs.Duration("timeout", 0, "give up after this long (0: never)")
	sock := registerSocket(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if err := noArgs(pos); err != nil {
		return err
	}
	p, err := checkPort(*port)
	if err != nil {
		return err
	}
	if err := checkCount("count", *count); err != nil {
		return err
	}
	if handled, err := e.viaDaemon(*timeout, func(ctx context.Context) (bool, error) {
		return e.recvDaemon(ctx, e.socketPath(*sock), p, *count)
	}); handled {
		return err
	}
	n, err := e.openNode(false)
	if err != nil {
		return err
	}
	defer n.Close()
	ctx, cancel := withTimeout(*timeout)
	defer cancel()
	l, err := n.Listen(p)
	if err != nil {
		return err
	}
	defer l.Close()
	c, err := l.Accept(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	for got := 0; *count == 0 || got < *count; got++ {
		f, err := c.ReadFrame(ctx)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(e.stdout, "%s\n", f); err != nil {
			return err
		}
	}
	return nil
}

func (e *env) control(args []string) error {
	fs := newFlags("control")
	count := fs.Int("count", 0, "stop after this many text messages (0: never); board changes are printed, not counted")
	timeout := fs.Duration("timeout", 0, "stop after this long (0: never)")
	sock := registerSocket(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if err := noArgs(pos); err != nil {
		return err
	}
	if err := checkCount("count", *count); err != nil {
		return err
	}
	if handled, err := e.viaDaemon(*timeout, func(ctx context.Context) (bool, error) {
		return e.controlDaemon(ctx, e.socketPath(*sock), *count)
	}); handled {
		return err
	}
	n, err := e.openNode(false)
	if err != nil {
		return err
	}
	defer n.Close()
	ctx, cancel := withTimeout(*timeout)
	defer cancel()
	for got := 0; *count == 0 || got < *count; {
		c, err := n.Control(ctx)
		if err != nil {
			return err
		}
		if e.printControl(c) {
			got++
		}
	}
	return nil
}

func (e *env) mapCmd(args []string) error {
	fs := newFlags("map")
	write := fs.String("write", "", "copy TEXT into the segment at --offset")
	offset := fs.Int("offset", 0, "byte offset in the segment")
	read := fs.Int("read", 0, "print this many bytes from --offset")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("map takes one segment NAME, got %d arguments", len(pos))
	}
	if *offset < 0 || *read < 0 {
		return usagef("--offset and --read must not be negative")
	}
	written := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "write" {
			written = true
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), openTimeout)
	defer cancel()
	s, err := rfcom.MapSegment(ctx, e.options(), pos[0])
	if err != nil {
		return err
	}
	defer s.Unmap()
	size := s.Size()
	if written {
		if s.ReadOnly() {
			return fmt.Errorf("segment %q is read-only for this subOS: refusing to write", s.Name())
		}
		if uint64(*offset)+uint64(len(*write)) > size {
			return fmt.Errorf("writing %d bytes at offset %d overruns segment %q of %d bytes", len(*write), *offset, s.Name(), size)
		}
		copy(s.Bytes()[*offset:], *write)
	}
	if *read > 0 {
		if uint64(*offset)+uint64(*read) > size {
			return fmt.Errorf("reading %d bytes at offset %d overruns segment %q of %d bytes", *read, *offset, s.Name(), size)
		}
		b := bytes.TrimRight(s.Bytes()[*offset:*offset+*read], "\x00")
		fmt.Fprintf(e.stdout, "%s\n", b)
	}
	if !written && *read == 0 {
		mode := "rw"
		if s.ReadOnly() {
			mode = "ro"
		}
		fmt.Fprintf(e.stdout, "segment %s %d bytes %s\n", s.Name(), size, mode)
	}
	return nil
}
