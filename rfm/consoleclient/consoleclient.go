// Package consoleclient is the client side of a subOS's console socket
// (see vmm/consolesock): it attaches a user's terminal, or a script's
// streams, to the console, as `rfm console` does.
//
// On a terminal the session runs in raw mode (golang.org/x/term), so
// every key, Ctrl-C included, reaches the guest; typing the escape
// character, Ctrl-] (0x1d) as in virsh and telnet, detaches and restores
// the terminal. Input that is not a terminal (a pipe) is forwarded as it
// comes, with no escape character, and its end does not detach: output is
// copied until the console closes. Guest output is written through as raw
// bytes, unfiltered: a serial console user expects the guest's own
// terminal control sequences.
package consoleclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
	// x/term is the Go project's own terminal package: raw mode and its
	// exact restoration, without hand-written termios flag lists.
	"golang.org/x/term"
)

// EscapeChar is the byte that detaches a terminal session: Ctrl-].
const EscapeChar = 0x1d

// Ending says how a session ended.
type Ending int

// Endings of a session.
const (
	// Closed: the console side closed (the subOS stopped, its VMM went
	// away, or the server refused or dropped this client).
	Closed Ending = iota
	// Detached: the user typed the escape character.
	Detached
	// Canceled: the context ended.
	Canceled
)

func (e Ending) String() string {
	switch e {
	case Closed:
		return "closed"
	case Detached:
		return "detached"
	case Canceled:
		return "canceled"
	}
	return fmt.Sprintf("Ending(%d)", int(e))
}

// Sentinel errors of Attach, for callers that branch.
var (
	// ErrNoConsole: nothing listens at the socket path.
	ErrNoConsole = errors.New("nothing listens there")
	// ErrPermission: the socket exists but this user may not connect.
	ErrPermission = errors.New("permission denied")
)

// Streams are what a session reads and writes.
type Streams struct {
	// In is copied to the console. When it is an *os.File (a terminal or
	// a pipe) it is read only when poll says it is ready, so Attach stops
	// its reader before it returns; another io.Reader's reader goroutine
	// ends at its next read after the session (close In to end it).
	In io.Reader
	// Out receives the console's output.
	Out io.Writer
	// Messages, when set, receives the banner and the parting line
	// (stderr in rfm).
	Messages io.Writer
	// Terminal, when set, is put in raw mode for the session and restored
	// after it, and the escape character detaches. Usually the same file
	// as In.
	Terminal *os.File
}

// Attach connects to the console socket at path and runs a session until
// the console closes, the user detaches (Streams.Terminal only) or ctx
// ends. name is what the banner and parting line call the console ("subOS
// web", or the socket path). The terminal, if any, is restored before
// Attach returns.
func Attach(ctx context.Context, path, name string, s Streams) (Ending, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if ctx.Err() != nil {
			return Canceled, ctx.Err()
		}
		return Closed, dialError(path, err)
	}
	defer c.Close()

	escape := s.Terminal != nil
	if escape {
		fd := int(s.Terminal.Fd())
		old, err := term.MakeRaw(fd)
		if err != nil {
			return Closed, fmt.Errorf("console of %s: put the terminal in raw mode: %w", name, err)
		}
		defer term.Restore(fd, old)
	}
	say(s.Messages, escape, banner(name, escape))

	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()

	in, err := newInput(s.In)
	if err != nil {
		return Closed, fmt.Errorf("console of %s: %w", name, err)
	}
	var detached sync.Once
	isDetached := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if forward(in, c, escape) {
			detached.Do(func() { close(isDetached) })
			c.Close() // ends the output copy below
		}
	}()
	_, err = io.Copy(s.Out, c)
	c.Close()
	in.stop()
	if in.waitable {
		wg.Wait()
	}
	in.close()

	end := Closed
	select {
	case <-isDetached:
		end = Detached
	default:
		if ctx.Err() != nil {
			end = Canceled
		}
	}
	if end == Closed && err != nil && !errors.Is(err, net.ErrClosed) {
		return end, fmt.Errorf("console of %s: %w", name, err)
	}
	// The terminal is restored by the deferred call only after this line:
	// in raw mode a line needs its carriage return.
	switch end {
	case Detached:
		say(s.Messages, escape, fmt.Sprintf("Detached from %s", name))
	case Closed:
		say(s.Messages, escape, fmt.Sprintf("Console of %s closed (the subOS stopped, or its VMM let go of this client)", name))
	}
	return end, nil
}

func banner(name string, escape bool) string {
	if escape {
		return fmt.Sprintf("Connected to %s (escape character is ^])", name)
	}
	return fmt.Sprintf("Connected to %s", name)
}

// say writes one line to w, if set, starting on a fresh line when a raw
// terminal may have its cursor anywhere.
func say(w io.Writer, raw bool, line string) {
	if w == nil {
		return
	}
	if raw {
		fmt.Fprintf(w, "\r\n%s\r\n", line)
		return
	}
	fmt.Fprintln(w, line)
}

// dialError names the socket and what to do, without the transport's
// wording.
func dialError(path string, err error) error {
	if fi, serr := os.Stat(path); serr == nil && fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("console socket %s: not a socket (give a subOS name, or a socket path from rfm vmm --console-socket)", path)
	}
	switch {
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("console socket %s: %w (is the subOS running? rfm ps lists them)", path, ErrNoConsole)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("console socket %s: %w (run as root, or as a member of the console group)", path, ErrPermission)
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return fmt.Errorf("console socket %s: %s", path, errno.Error())
	}
	return fmt.Errorf("console socket %s: cannot connect", path)
}

// forward copies input to the console until input ends, the console
// closes, or (with escape) the escape character is read, which it reports.
// Bytes before the escape character in the same read are sent.
func forward(in *input, c net.Conn, escape bool) (detached bool) {
	buf := make([]byte, 1024)
	for {
		n, err := in.read(buf)
		b := buf[:n]
		if escape {
			for i, x := range b {
				if x == EscapeChar {
					if i > 0 {
						c.Write(b[:i])
					}
					return true
				}
			}
		}
		if len(b) > 0 {
			if _, werr := c.Write(b); werr != nil {
				return false
			}
		}
		if err != nil {
			return false
		}
	}
}

// input reads a session's input. For a file it polls the descriptor
// together with a pipe that stop writes to, so the reader can be stopped
// and waited for; any other reader is read directly.
type input struct {
	r        io.Reader
	fd       int    // the file's descriptor, or -1
	wake     [2]int // pipe: stop writes, poll reads
	waitable bool
	once     sync.Once
}

func newInput(r io.Reader) (*input, error) {
	in := &input{r: r, fd: -1, wake: [2]int{-1, -1}}
	if r == nil {
		in.r = eofReader{}
	}
	f, ok := r.(*os.File)
	if !ok {
		return in, nil
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("input pipe: %w", err)
	}
	in.fd, in.wake, in.waitable = int(f.Fd()), p, true
	return in, nil
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// errStopped ends a stopped input.
var errStopped = errors.New("input stopped")

func (in *input) read(b []byte) (int, error) {
	if in.fd < 0 {
		return in.r.Read(b)
	}
	fds := []unix.PollFd{{Fd: int32(in.fd), Events: unix.POLLIN}, {Fd: int32(in.wake[0]), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if fds[1].Revents != 0 {
			return 0, errStopped
		}
		if fds[0].Revents&unix.POLLNVAL != 0 {
			return 0, os.ErrClosed
		}
		if fds[0].Revents != 0 {
			break
		}
	}
	n, err := unix.Read(in.fd, b)
	switch {
	case errors.Is(err, unix.EINTR), errors.Is(err, unix.EAGAIN):
		return 0, nil
	case err != nil:
		return 0, err
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// stop wakes and ends a reader waiting in poll.
func (in *input) stop() {
	if in.wake[1] >= 0 {
		in.once.Do(func() { unix.Write(in.wake[1], []byte{0}) })
	}
}

// close releases the wake pipe, once the reader has ended.
func (in *input) close() {
	for _, fd := range in.wake {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	in.wake = [2]int{-1, -1}
}
