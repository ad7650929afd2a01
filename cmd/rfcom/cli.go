package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"rainforest/rfcom"
)

const usageText = `usage: rfcom COMMAND [flags]
  ls                                   this peer, the FICM device, segments, board
  send (--to NAME | --peer N) [--port P] [--timeout D] [MSG...]
                                       send each MSG (or stdin lines) as a frame
  recv [--port P] [--count N] [--timeout D]
                                       accept one channel, print its frames
  bench (--to NAME | --peer N) [--n N] [--mode poll|irq] [--timeout D]
  bench --serve [--mode poll|irq] [--timeout D]
                                       64-byte ping-pong and throughput
  bench --ivshmem [--peers N] (--peer N | --serve) [--n N] [--mode poll|irq] [--timeout D]
                                       the same over QEMU's ivshmem device
  map NAME [--write TEXT] [--offset N] [--read N]
                                       map a shared segment
  control [--count N] [--timeout D]    print the supervisor's messages
  board                                print the supervisor's board
  daemon [--socket PATH]               serve RFcom to this subOS's programs
  flood doorbell --peer N [--vector V] [--duration D | --count C]
                                       ring a peer's doorbell as fast as possible
  flood msg [--to supervisor|PEER|NAME] [--duration D | --count C]
                                       send datagrams as fast as the ring takes them
  diskbench --dev PATH [--seconds S] [--write --i-know-it-is-scratch]
                                       sequential 1 MiB and random 4 KiB direct I/O
send, recv, control, ls and board take --socket PATH too, and go through
the daemon when one answers there (default $RFCOM_SOCKET or /run/rfcom.sock)`

// usageError is a command line error (exit status 2).
type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// oneLine flattens an error message to one line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func (e *env) main(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(e.stderr, "rfcom: usage: no command (rfcom help lists them)")
		return 2
	}
	cmds := map[string]func([]string) error{
		"ls": e.ls, "send": e.send, "recv": e.recv, "bench": e.bench,
		"map": e.mapCmd, "control": e.control, "board": e.boardCmd,
		"daemon": e.daemon, "flood": e.flood, "diskbench": e.diskbench,
	}
	name := args[0]
	if name == "help" || name == "-h" || name == "--help" {
		fmt.Fprintln(e.stdout, usageText)
		return 0
	}
	cmd, ok := cmds[name]
	if !ok {
		fmt.Fprintf(e.stderr, "rfcom: usage: unknown command %q (rfcom help lists them)\n", name)
		return 2
	}
	err := cmd(args[1:])
	var u usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprintln(e.stdout, usageText)
		return 0
	case errors.As(err, &u):
		fmt.Fprintf(e.stderr, "rfcom: usage: %s: %s\n", name, oneLine(u.msg))
		return 2
	}
	msg := strings.TrimPrefix(strings.TrimPrefix(err.Error(), "rfcom: "), "rfcom/local: ")
	fmt.Fprintf(e.stderr, "rfcom: %s: %s\n", name, oneLine(msg))
	return 1
}

func (e *env) options() rfcom.Options {
	return rfcom.Options{SysRoot: e.sys, DevRoot: e.dev}
}

// newFlags returns a flag set that reports errors instead of printing.
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parse parses args with flags and positional arguments interleaved and
// returns the positional ones ("--" ends the flags).
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err.Error()}
		}
		rest := fs.Args()
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// target holds --to / --peer.
type target struct {
	to   string
	peer int
}

func (t *target) register(fs *flag.FlagSet) {
	fs.StringVar(&t.to, "to", "", "destination subOS name (from the board)")
	fs.IntVar(&t.peer, "peer", -1, "destination peer id")
}

func (t *target) check() error {
	switch {
	case t.to == "" && t.peer < 0:
		return usagef("one of --to NAME or --peer N is required")
	case t.to != "" && t.peer >= 0:
		return usagef("--to and --peer are exclusive")
	}
	return nil
}

func (t *target) resolve(n *rfcom.Node) (int, error) {
	if t.to == "" {
		return t.peer, nil
	}
	return n.Lookup(t.to)
}

func checkPort(p int) (uint16, error) {
	if p < 0 || p > 0xFFFF {
		return 0, usagef("--port %d outside 0..65535", p)
	}
	return uint16(p), nil
}

func checkCount(name string, n int) error {
	if n < 0 {
		return usagef("--%s %d is negative", name, n)
	}
	return nil
}

// withTimeout returns a context bounded by d (none when d is 0).
func withTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(context.Background())
	}
	return context.WithTimeout(context.Background(), d)
}

func noArgs(pos []string) error {
	if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	return nil
}
