package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"rainforest/rfm/vmmctl"
	"rainforest/vmm"
	"rainforest/vmm/shmem"
	"rainforest/vmm/shmem/abi"
)

// maxRegionSlack is how much larger than its layout a region's memfd may
// be (hugetlb memfds are rounded up to 1 GiB pages at most).
const maxRegionSlack = 1 << 30

// attachTimeout bounds how long a VMM started with --control-fd waits for
// the supervisor's attach message.
const attachTimeout = 30 * time.Second

// regionMembership is what a VMM holds for the shared-memory regions the
// supervisor attached: the files as received (kept for export) and the
// regions' mappings.
type regionMembership struct {
	regions []vmmctl.Region
	files   []*os.File
	maps    [][]byte
}

func (r *regionMembership) close() {
	for _, m := range r.maps {
		_ = unix.Munmap(m)
	}
	for _, f := range r.files {
		f.Close()
	}
}

// controlSocket is the supervisor's control connection point, inherited as
// a listening socket on --control-fd.
type controlSocket struct {
	ln *net.UnixListener
}

func openControlSocket(fd int) (*controlSocket, error) {
	f := os.NewFile(uintptr(fd), "control")
	if f == nil {
		return nil, fmt.Errorf("--control-fd %d: not a file descriptor", fd)
	}
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("--control-fd %d: %w", fd, err)
	}
	ln, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("--control-fd %d: not a Unix socket listener", fd)
	}
	ln.SetUnlinkOnClose(false)
	return &controlSocket{ln: ln}, nil
}

// attach accepts the supervisor's first connection and applies its attach
// message: one SharedMemoryConfig per region, mapped from its memfd, with
// this peer's eventfds as interrupts and the others' as doorbell targets.
// The supervisor gets {} or the error.
func (c *controlSocket) attach() (*regionMembership, []vmm.SharedMemoryConfig, error) {
	_ = c.ln.SetDeadline(time.Now().Add(attachTimeout))
	conn, err := c.ln.AcceptUnix()
	_ = c.ln.SetDeadline(time.Time{})
	if err != nil {
		return nil, nil, fmt.Errorf("control socket: no attach from the supervisor: %w", err)
	}
	defer conn.Close()
	msg, files, err := vmmctl.Recv(conn)
	if err == nil && msg.Op != vmmctl.OpAttach {
		err = fmt.Errorf("%w: first message is %q, want attach", vmmctl.ErrProtocol, msg.Op)
		for _, f := range files {
			f.Close()
		}
	}
	var mem *regionMembership
	var cfgs []vmm.SharedMemoryConfig
	if err == nil {
		mem, cfgs, err = buildRegions(msg.Regions, files)
	}
	reply := vmmctl.Message{}
	if err != nil {
		reply.Error = err.Error()
	}
	if serr := vmmctl.Send(conn, reply, nil); serr != nil && err == nil {
		mem.close()
		return nil, nil, serr
	}
	return mem, cfgs, err
}

// buildRegions maps each region's memfd and builds its device config.
func buildRegions(regions []vmmctl.Region, files []*os.File) (*regionMembership, []vmm.SharedMemoryConfig, error) {
	mems, bells, err := vmmctl.SplitFiles(regions, files)
	if err != nil {
		return nil, nil, err
	}
	rm := &regionMembership{regions: regions, files: files}
	var cfgs []vmm.SharedMemoryConfig
	for i, r := range regions {
		l := abi.Layout{Peers: r.Peers, RWSize: r.RWSize, OutputSize: r.OutputSize}
		if err := l.Validate(); err != nil {
			rm.close()
			return nil, nil, fmt.Errorf("region %q: %w", r.Name, err)
		}
		memFD, err := vmmctl.FD(mems[i])
		if err != nil {
			rm.close()
			return nil, nil, err
		}
		var st unix.Stat_t
		if err := unix.Fstat(memFD, &st); err != nil || uint64(st.Size) < l.Size() {
			rm.close()
			return nil, nil, fmt.Errorf("region %q: memory of %d bytes, layout needs %d (%v)", r.Name, st.Size, l.Size(), err)
		}
		// Map the whole file (a hugetlb memfd is a multiple of its page
		// size), bounded so that a bogus size cannot map much more.
		if uint64(st.Size) > l.Size()+maxRegionSlack {
			rm.close()
			return nil, nil, fmt.Errorf("region %q: memory of %d bytes, layout needs %d", r.Name, st.Size, l.Size())
		}
		m, err := unix.Mmap(memFD, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			rm.close()
			return nil, nil, fmt.Errorf("region %q: map memory: %w", r.Name, err)
		}
		rm.maps = append(rm.maps, m)
		m = m[:l.Size():l.Size()]
		ev := func(peer, v int) *vmm.EventFD {
			fd, _ := vmmctl.FD(bells[i][peer*r.Vectors+v]) // open files: cannot fail
			return vmm.BorrowEventFD(fd)
		}
		cfg := vmm.SharedMemoryConfig{ID: r.Self, Layout: l, Region: m, Vectors: r.Vectors,
			Identity: shmem.Identity{Protocol: r.Protocol, Name: r.Name, RWReadOnly: r.RWReadOnly}}
		for v := range r.Vectors {
			cfg.Incoming = append(cfg.Incoming, ev(r.Self, v))
		}
		for p := range r.Peers {
			if p == r.Self {
				continue
			}
			pd := vmm.PeerDoorbells{Peer: p}
			for v := range r.Vectors {
				pd.Vectors = append(pd.Vectors, ev(p, v))
			}
			cfg.Peers = append(cfg.Peers, pd)
		}
		cfgs = append(cfgs, cfg)
	}
	return rm, cfgs, nil
}

// serve answers later connections (a restarted supervisor's export) until
// ctx ends; it is the VMM command's goroutine, stopped by closing the
// listener.
func (c *controlSocket) serve(ctx context.Context, log *slog.Logger, rm *regionMembership) {
	go func() { // owner: serve; ends with ctx
		<-ctx.Done()
		c.ln.Close()
	}()
	for {
		conn, err := c.ln.AcceptUnix()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				log.Warn("control socket", "err", err)
			}
			return
		}
		c.answer(conn, log, rm)
	}
}

func (c *controlSocket) answer(conn *net.UnixConn, log *slog.Logger, rm *regionMembership) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	msg, files, err := vmmctl.Recv(conn)
	for _, f := range files {
		f.Close() // nothing after attach carries descriptors
	}
	if err != nil {
		log.Warn("control socket", "err", err)
		return
	}
	switch msg.Op {
	case vmmctl.OpExport:
		var regions []vmmctl.Region
		var out []*os.File
		if rm != nil {
			regions, out = rm.regions, rm.files
		}
		err = vmmctl.Send(conn, vmmctl.Message{Regions: regions}, out)
	default:
		err = vmmctl.Send(conn, vmmctl.Message{Error: fmt.Sprintf("unknown operation %q", msg.Op)}, nil)
	}
	if err != nil {
		log.Warn("control socket reply", "err", err)
	}
}
