package vmmctl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"rainforest/internal/peercred"
	"rainforest/vmm/config"
)

// requestTimeout bounds reading one request and writing its reply (a
// detach's wait for the guest comes on top).
const requestTimeout = 10 * time.Second

// Handler is the VMM's side of the runtime requests. Errors wrapping
// ErrNotFound, ErrExists, ErrNotReleased or ErrInvalid reach the caller as
// such.
type Handler interface {
	// AttachDisk hot-adds a disk; backing, when not nil, is its file,
	// already open (the handler takes charge of it), else d.Path is
	// opened.
	AttachDisk(ctx context.Context, d config.Disk, backing *os.File) (Device, error)
	// Grant hot-adds a region's device; it takes charge of files (closing
	// them on error).
	Grant(ctx context.Context, r config.Region, files []*os.File) (Device, error)
	// Detach removes a device once the guest released it, or fails when
	// ctx ends first.
	Detach(ctx context.Context, id string) error
	// Devices lists the devices plugged now.
	Devices() []Device
	// SetCPUs pins vCPU i to cores[i] and the vCPUs beyond them to
	// cores[0], or changes nothing and fails; it returns every vCPU's
	// pinning.
	SetCPUs(cores []int) ([]VCPUPin, error)
	// VCPUs returns every vCPU's pinning.
	VCPUs() []VCPUPin
	// SetMemory asks the guest to plug requested bytes of hotplug
	// memory and waits until it has or ctx ends; it returns the state
	// then (ctx ending is not an error: the state says how far the
	// guest got).
	SetMemory(ctx context.Context, requested uint64) (Memory, error)
	// Memory returns the hotplug memory's state.
	Memory() (Memory, error)
	// Export returns the regions held and their files (still the
	// handler's).
	Export() ([]config.Region, []*os.File)
}

// ShareHandler is a Handler that hot-adds shares (virtio-fs devices);
// attach_share requests to a Handler without it are refused as invalid.
type ShareHandler interface {
	// AttachShare hot-adds share s on sock, a Unix stream socket
	// connected to its vhost-user back end (the handler takes charge
	// of it).
	AttachShare(ctx context.Context, s config.Share, sock *os.File) (Device, error)
}

// Listener turns the inherited descriptor fd into the control socket's
// listener (it does not remove the socket file when closed).
func Listener(fd int) (*net.UnixListener, error) {
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		return nil, fmt.Errorf("control socket: %d is not an open descriptor", fd)
	}
	f := os.NewFile(uintptr(fd), "control")
	if f == nil {
		return nil, fmt.Errorf("control socket: %d is not a file descriptor", fd)
	}
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("control socket %d: %w", fd, err)
	}
	ln, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("control socket %d: not a Unix socket listener", fd)
	}
	ln.SetUnlinkOnClose(false)
	// From now on clients (the supervisor checking whom it talks to) see
	// this process as the server, not the supervisor that created the
	// socket.
	if err := peercred.Relisten(ln); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %d: %w", fd, err)
	}
	return ln, nil
}

// Launch is a received launch request.
type Launch struct {
	Config *config.Document
	// Files are the regions' files, in the document's order (the
	// receiver's; SplitFiles was checked).
	Files []*os.File
	// Named are the files of the document's descriptor table
	// (Document.Files), by name (the receiver's).
	Named map[string]*os.File
	// From is who sent it (the supervisor): Serve answers only its uid.
	From peercred.Cred
	conn *net.UnixConn
}

// Reply answers the launch request ({} or the error) and closes the
// connection.
func (l *Launch) Reply(err error) error {
	defer l.conn.Close()
	m := Message{}
	if err != nil {
		m = errorReply(err)
	}
	return Send(l.conn, m, nil)
}

// AcceptLaunch waits up to timeout for the supervisor's launch request on
// ln and decodes it. A malformed request is answered with its error here.
func AcceptLaunch(ln *net.UnixListener, timeout time.Duration) (*Launch, error) {
	_ = ln.SetDeadline(time.Now().Add(timeout))
	conn, err := ln.AcceptUnix()
	_ = ln.SetDeadline(time.Time{})
	if err != nil {
		return nil, fmt.Errorf("control socket: no launch request from the supervisor: %w", err)
	}
	from, err := peercred.Of(conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("control socket: launch request: %w", err)
	}
	_ = conn.SetDeadline(time.Now().Add(requestTimeout))
	msg, files, err := Recv(conn)
	var doc *config.Document
	if err == nil && msg.Op != OpLaunch {
		err = fmt.Errorf("%w: first request is %q, want %s", ErrProtocol, msg.Op, OpLaunch)
	}
	if err == nil {
		doc, err = msg.Document()
	}
	var named map[string]*os.File
	if err == nil {
		var n int
		if n, err = FileCount(doc.Regions); err == nil && n+len(doc.Files) != len(files) {
			err = fmt.Errorf("%w: %d descriptors for regions needing %d and %d named", ErrProtocol, len(files), n, len(doc.Files))
		}
		if err == nil {
			for name, i := range doc.Files { // validated: each index once, in range
				if named == nil {
					named = map[string]*os.File{}
				}
				named[name] = files[n+i]
			}
			files = files[:n]
		}
	}
	if err != nil {
		for _, f := range files {
			f.Close()
		}
		_ = Send(conn, errorReply(fmt.Errorf("%w: %w", ErrInvalid, err)), nil)
		conn.Close()
		return nil, err
	}
	return &Launch{Config: doc, Files: files, Named: named, From: from, conn: conn}, nil
}

// Serve answers requests on ln until ctx ends (then it closes ln), each
// connection on a goroutine of its own that Serve waits for. Only
// connections from uid supervisor (the launch's sender, Launch.From.UID)
// are answered; the others are closed unread and logged (bounded): the
// export request alone hands out every region's memory and doorbells.
func Serve(ctx context.Context, ln *net.UnixListener, supervisor uint32, h Handler, log *slog.Logger) {
	refusals := peercred.NewRefusals(log)
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		conn, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				log.Warn("control socket", "err", err)
			}
			return
		}
		if cred, err := peercred.Of(conn); err != nil || cred.UID != supervisor {
			if err == nil {
				err = fmt.Errorf("%w: uid %d is not the supervisor's uid %d", peercred.ErrRefused, cred.UID, supervisor)
			}
			conn.Close()
			refusals.Refused("control socket", cred, err)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			answer(ctx, conn, h, log)
		}()
	}
}

func answer(ctx context.Context, conn *net.UnixConn, h Handler, log *slog.Logger) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(requestTimeout))
	msg, files, err := Recv(conn)
	if err != nil {
		log.Warn("control socket", "err", err)
		return
	}
	take := func() []*os.File { f := files; files = nil; return f }
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	var reply Message
	var out []*os.File
	switch msg.Op {
	case OpExport:
		reply.Regions, out = h.Export()
	case OpDevices:
		reply.Devices = h.Devices()
	case OpVCPUs:
		reply.VCPUs = h.VCPUs()
	case OpSetCPUs:
		if len(msg.Cores) == 0 || len(msg.Cores) > config.MaxCores {
			err = fmt.Errorf("%w: %s with %d cores, want 1 to %d", ErrInvalid, msg.Op, len(msg.Cores), config.MaxCores)
			break
		}
		reply.VCPUs, err = h.SetCPUs(msg.Cores)
	case OpAttachDisk:
		if msg.Disk == nil {
			err = fmt.Errorf("%w: %s without a disk", ErrInvalid, msg.Op)
			break
		}
		if len(files) > 1 {
			err = fmt.Errorf("%w: %s with %d descriptors, want at most 1", ErrInvalid, msg.Op, len(files))
			break
		}
		var backing *os.File
		if len(files) == 1 {
			backing = take()[0]
		}
		var d Device
		if d, err = h.AttachDisk(ctx, *msg.Disk, backing); err == nil {
			reply.Devices = []Device{d}
		}
	case OpGrant:
		if len(msg.Regions) != 1 {
			err = fmt.Errorf("%w: %s with %d regions, want 1", ErrInvalid, msg.Op, len(msg.Regions))
			break
		}
		if _, _, err = SplitFiles(msg.Regions, files); err != nil {
			files = nil // closed by SplitFiles
			err = fmt.Errorf("%w: %w", ErrInvalid, err)
			break
		}
		var d Device
		if d, err = h.Grant(ctx, msg.Regions[0], take()); err == nil {
			reply.Devices = []Device{d}
		}
	case OpAttachShare:
		sh, ok := h.(ShareHandler)
		switch {
		case !ok:
			err = fmt.Errorf("%w: this VMM does not attach shares", ErrInvalid)
		case msg.Share == nil:
			err = fmt.Errorf("%w: %s without a share", ErrInvalid, msg.Op)
		case len(files) != 1:
			err = fmt.Errorf("%w: %s with %d descriptors, want the back end's socket", ErrInvalid, msg.Op, len(files))
		default:
			var d Device
			if d, err = sh.AttachShare(ctx, *msg.Share, take()[0]); err == nil {
				reply.Devices = []Device{d}
			}
		}
	case OpDetach:
		timeout := time.Duration(msg.TimeoutMS) * time.Millisecond
		if msg.ID == "" || timeout <= 0 || timeout > 10*time.Minute {
			err = fmt.Errorf("%w: detach needs an id and a timeout of up to 10 minutes", ErrInvalid)
			break
		}
		_ = conn.SetDeadline(time.Now().Add(timeout + requestTimeout))
		dctx, cancel := context.WithTimeout(ctx, timeout)
		err = h.Detach(dctx, msg.ID)
		cancel()
	case OpMemory:
		var st Memory
		if st, err = h.Memory(); err == nil {
			reply.Memory = &st
		}
	case OpSetMemory:
		timeout := time.Duration(msg.TimeoutMS) * time.Millisecond
		if timeout < 0 || timeout > 10*time.Minute {
			err = fmt.Errorf("%w: set_memory with a timeout of %d ms, want 0 to 10 minutes", ErrInvalid, msg.TimeoutMS)
			break
		}
		_ = conn.SetDeadline(time.Now().Add(timeout + requestTimeout))
		mctx, cancel := context.WithTimeout(ctx, timeout)
		var st Memory
		if st, err = h.SetMemory(mctx, msg.Requested); err == nil {
			reply.Memory = &st
		}
		cancel()
	default:
		err = fmt.Errorf("%w: unknown operation %q", ErrInvalid, msg.Op)
	}
	if err != nil {
		reply, out = errorReply(err), nil
	}
	if err := Send(conn, reply, out); err != nil {
		log.Warn("control socket reply", "op", msg.Op, "err", err)
	}
}
