package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"syscall"
	"time"

	"rainforest/ficm/control"
	"rainforest/rfcom"
	"rainforest/rfcom/local"
)

// registerSocket adds --socket to fs.
func registerSocket(fs *flag.FlagSet) *string {
	return fs.String("socket", "", "the rfcom daemon's socket (default $RFCOM_SOCKET or "+local.DefaultSocket+")")
}

// socketPath returns the daemon socket: the flag, else $RFCOM_SOCKET, else
// the default.
func (e *env) socketPath(flagValue string) string {
	switch {
	case flagValue != "":
		return flagValue
	case e.socket != "":
		return e.socket
	}
	return local.DefaultSocket
}

// printControl prints a control message as the control command does; it
// reports whether it was a text.
func (e *env) printControl(c control.Control) bool {
	switch c.Type {
	case control.TypeText:
		fmt.Fprintf(e.stdout, "control: %s\n", c.Text)
		return true
	case control.TypeBoard:
		fmt.Fprintf(e.stdout, "board: seq %d\n", c.Seq)
	}
	return false
}

func (e *env) daemon(args []string) error {
	fs := newFlags("daemon")
	sock := registerSocket(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if err := noArgs(pos); err != nil {
		return err
	}
	path := e.socketPath(*sock)
	ctx, stop := signal.NotifyContext(e.ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ln, remove, err := local.Listen(path)
	if err != nil {
		return err
	}
	// The socket goes after the node closed: a program that finds no
	// daemon then opens the device itself, and the node's close must not
	// mark it dead.
	defer remove()
	n, err := e.openNode(false)
	if err != nil {
		_ = ln.Close()
		return err
	}
	defer n.Close()
	log := slog.New(slog.NewTextHandler(e.stderr, nil))
	log.Info("rfcom daemon serving", "socket", path, "peer", n.Self(), "peers", n.Peers())
	s := &local.Server{Node: n, Log: log, OnControl: func(c control.Control) { e.printControl(c) }}
	if err := s.Serve(ctx, ln); err != nil {
		return err
	}
	log.Info("rfcom daemon stopped")
	return nil
}

// The functions below run a command through the daemon at path; they
// return handled false when no daemon answers there (the caller then uses
// the device directly).

func (e *env) sendDaemon(path string, t target, port uint16, msgs []string, timeout time.Duration) (handled bool, err error) {
	ctx, cancel := withTimeout(timeout)
	defer cancel()
	var c *local.Conn
	if t.to != "" {
		c, err = local.DialName(ctx, path, t.to, port)
	} else {
		c, err = local.Dial(ctx, path, t.peer, port)
	}
	if errors.Is(err, local.ErrNoDaemon) {
		return false, nil
	}
	if err != nil {
		return true, err
	}
	defer c.Close()
	write := func(m []byte) error {
		_, err := c.WriteContext(ctx, m)
		return err
	}
	if len(msgs) > 0 {
		for _, m := range msgs {
			if err := write([]byte(m)); err != nil {
				return true, err
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
				return true, err
			}
		}
		if err := sc.Err(); err != nil {
			return true, fmt.Errorf("stdin: %w", err)
		}
	}
	return true, c.Finish(ctx)
}

func (e *env) recvDaemon(ctx context.Context, path string, port uint16, count int) (handled bool, err error) {
	c, _, err := local.Accept(ctx, path, port)
	if errors.Is(err, local.ErrNoDaemon) {
		return false, nil
	}
	if err != nil {
		return true, err
	}
	defer c.Close()
	for got := 0; count == 0 || got < count; got++ {
		f, err := c.ReadFrame(ctx)
		if errors.Is(err, io.EOF) {
			return true, nil
		}
		if err != nil {
			return true, err
		}
		if _, err := fmt.Fprintf(e.stdout, "%s\n", f); err != nil {
			return true, err
		}
	}
	return true, nil
}

func (e *env) controlDaemon(ctx context.Context, path string, count int) (handled bool, err error) {
	sub, err := local.Control(ctx, path)
	if errors.Is(err, local.ErrNoDaemon) {
		return false, nil
	}
	if err != nil {
		return true, err
	}
	defer sub.Close()
	for got := 0; count == 0 || got < count; {
		c, err := sub.Next(ctx)
		if err != nil {
			return true, err
		}
		if e.printControl(c) {
			got++
		}
	}
	return true, nil
}

// groupInfo returns the group as the daemon at path sees it, or as the
// device shows it when no daemon answers.
func (e *env) groupInfo(ctx context.Context, path string) (rfcom.GroupInfo, error) {
	g, err := local.Info(ctx, path)
	if errors.Is(err, local.ErrNoDaemon) {
		return rfcom.Inspect(ctx, e.options())
	}
	return g, err
}

// refuseBesideDaemon fails when a daemon holds the FICM device that
// command needs alone.
func refuseBesideDaemon(ctx context.Context, path, command string) error {
	running, err := local.Running(ctx, path)
	switch {
	case err != nil:
		return fmt.Errorf("cannot tell whether an rfcom daemon holds the FICM device (socket %s): %w", path, err)
	case running:
		return fmt.Errorf("the rfcom daemon on %s holds the FICM device: stop it to run %s, which needs the device alone", path, command)
	}
	return nil
}
