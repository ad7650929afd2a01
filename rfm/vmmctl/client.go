package vmmctl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"time"

	"rainforest/vmm/config"
)

// Errors a VMM's reply carries as a code, so that callers can branch.
var (
	// ErrVMM is any other failure the VMM reported.
	ErrVMM = errors.New("VMM")
	// ErrNotFound: no such device.
	ErrNotFound = errors.New("no such device")
	// ErrExists: a device with that id is attached already.
	ErrExists = errors.New("device already attached")
	// ErrNotReleased: the guest did not let go of a device in time; it
	// stays attached.
	ErrNotReleased = errors.New("the guest did not release the device")
	// ErrInvalid: the request itself is wrong (a missing file, a bad
	// region).
	ErrInvalid = errors.New("invalid request")
)

// Reply codes, by sentinel.
var codes = []struct {
	code string
	err  error
}{
	{"not_found", ErrNotFound},
	{"exists", ErrExists},
	{"not_released", ErrNotReleased},
	{"invalid", ErrInvalid},
}

// errorReply turns a handler's error into a reply.
func errorReply(err error) Message {
	m := Message{Error: err.Error()}
	for _, c := range codes {
		if errors.Is(err, c.err) {
			m.Code = c.code
			break
		}
	}
	return m
}

// replyError turns a reply back into an error wrapping its sentinel.
func replyError(m Message) error {
	if m.Error == "" {
		return nil
	}
	for _, c := range codes {
		if m.Code == c.code {
			return fmt.Errorf("%w: %s", c.err, m.Error)
		}
	}
	return fmt.Errorf("%w: %s", ErrVMM, m.Error)
}

// SendLaunch sends the launch request on c: the document, its regions'
// files and then the files its descriptor table (Document.Files) names,
// in index order (LaunchFiles builds both). The VMM reads it once it may
// start (after the supervisor moved it into its cgroup).
func SendLaunch(c *net.UnixConn, doc *config.Document, files []*os.File) error {
	body, err := doc.Encode()
	if err != nil {
		return err
	}
	if n, err := FileCount(doc.Regions); err != nil {
		return err
	} else if n+len(doc.Files) != len(files) {
		return fmt.Errorf("%w: %d descriptors for regions needing %d and %d named", ErrProtocol, len(files), n, len(doc.Files))
	}
	return Send(c, Message{Op: OpLaunch, Config: body}, files)
}

// Call sends one request to v's control socket, once DialVMM checked that
// v serves it, and returns the reply and its files (the caller's); a reply
// carrying an error comes back as that error (its files closed). ctx
// bounds the whole exchange.
func Call(ctx context.Context, v VMM, req Message, files []*os.File) (Message, []*os.File, error) {
	c, err := DialVMM(v)
	if err != nil {
		return Message{}, nil, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := Send(c, req, files); err != nil {
		return Message{}, nil, err
	}
	m, rf, err := Recv(c)
	if err != nil {
		if ctx.Err() != nil {
			return Message{}, nil, fmt.Errorf("%s: %w", req.Op, ctx.Err())
		}
		return Message{}, nil, err
	}
	if err := replyError(m); err != nil {
		for _, f := range rf {
			f.Close()
		}
		return Message{}, nil, err
	}
	return m, rf, nil
}

// Export asks the VMM for the regions it holds and their files.
func Export(ctx context.Context, v VMM) ([]config.Region, []*os.File, error) {
	m, files, err := Call(ctx, v, Message{Op: OpExport}, nil)
	if err != nil {
		return nil, nil, err
	}
	if _, _, err := SplitFiles(m.Regions, files); err != nil {
		return nil, nil, err
	}
	return m.Regions, files, nil
}

func oneDevice(m Message, files []*os.File, err error) (Device, error) {
	for _, f := range files {
		f.Close()
	}
	if err != nil {
		return Device{}, err
	}
	if len(m.Devices) != 1 {
		return Device{}, fmt.Errorf("%w: reply with %d devices, want 1", ErrProtocol, len(m.Devices))
	}
	return m.Devices[0], nil
}

// AttachDisk hot-adds a disk; backing, when not nil, is the disk's file
// opened by the caller (a jailed VMM cannot open d.Path), else the VMM
// opens d.Path.
func AttachDisk(ctx context.Context, v VMM, d config.Disk, backing *os.File) (Device, error) {
	var files []*os.File
	if backing != nil {
		files = []*os.File{backing}
	}
	return oneDevice(Call(ctx, v, Message{Op: OpAttachDisk, Disk: &d}, files))
}

// AttachShare hot-adds share s on sock, a Unix stream socket connected
// to its vhost-user back end (the VMM gets its own copy: the caller
// closes sock).
func AttachShare(ctx context.Context, v VMM, s config.Share, sock *os.File) (Device, error) {
	return oneDevice(Call(ctx, v, Message{Op: OpAttachShare, Share: &s}, []*os.File{sock}))
}

// LaunchFiles orders a launch's files: the regions' files, then named's
// files in name order; table is the document's descriptor table
// (Document.Files) for them.
func LaunchFiles(regionFiles []*os.File, named map[string]*os.File) (files []*os.File, table map[string]int) {
	names := make([]string, 0, len(named))
	for name := range named {
		names = append(names, name)
	}
	sort.Strings(names)
	files = append([]*os.File(nil), regionFiles...)
	if len(names) > 0 {
		table = make(map[string]int, len(names))
	}
	for i, name := range names {
		table[name] = i
		files = append(files, named[name])
	}
	return files, table
}

// Grant hot-adds a region's shared-memory function; files are its memfd
// and eventfds (see the package documentation).
func Grant(ctx context.Context, v VMM, r config.Region, files []*os.File) (Device, error) {
	return oneDevice(Call(ctx, v, Message{Op: OpGrant, Regions: []config.Region{r}}, files))
}

// Detach asks the guest to release device id and removes it; the guest has
// timeout to let go. ctx must allow a little more than timeout.
func Detach(ctx context.Context, v VMM, id string, timeout time.Duration) error {
	_, files, err := Call(ctx, v, Message{Op: OpDetach, ID: id, TimeoutMS: timeout.Milliseconds()}, nil)
	for _, f := range files {
		f.Close()
	}
	return err
}

// Devices lists the devices plugged into the VMM.
func Devices(ctx context.Context, v VMM) ([]Device, error) {
	m, files, err := Call(ctx, v, Message{Op: OpDevices}, nil)
	for _, f := range files {
		f.Close()
	}
	return m.Devices, err
}

// SetCPUs pins the VMM's vCPU i to host core cores[i] and the vCPUs
// beyond them to cores[0], and returns every vCPU's pinning; a refusal
// (ErrInvalid: a core given twice, not online, more cores than vCPUs)
// changes nothing.
func SetCPUs(ctx context.Context, v VMM, cores []int) ([]VCPUPin, error) {
	m, files, err := Call(ctx, v, Message{Op: OpSetCPUs, Cores: cores}, nil)
	for _, f := range files {
		f.Close()
	}
	return m.VCPUs, err
}

// VCPUs returns where the VMM's vCPU threads run.
func VCPUs(ctx context.Context, v VMM) ([]VCPUPin, error) {
	m, files, err := Call(ctx, v, Message{Op: OpVCPUs}, nil)
	for _, f := range files {
		f.Close()
	}
	return m.VCPUs, err
}

// SetMemory asks the VMM's guest to plug requested bytes of hotplug
// memory (0: unplug it all) and returns at once with the memory's state;
// MemoryState follows the guest. ErrInvalid: the VMM has no hotplug
// memory, or the size is not a multiple of its block size or exceeds
// its region.
func SetMemory(ctx context.Context, v VMM, requested uint64) (*Memory, error) {
	return SetMemoryWait(ctx, v, requested, 0)
}

// SetMemoryWait is SetMemory waiting up to wait (at most 10 minutes) for
// the guest to plug what was requested; the state may still fall short
// (a partial result, not an error).
func SetMemoryWait(ctx context.Context, v VMM, requested uint64, wait time.Duration) (*Memory, error) {
	m, files, err := Call(ctx, v, Message{Op: OpSetMemory, Requested: requested, TimeoutMS: wait.Milliseconds()}, nil)
	for _, f := range files {
		f.Close()
	}
	if err == nil && m.Memory == nil {
		err = fmt.Errorf("%w: set_memory reply without the memory's state", ErrProtocol)
	}
	return m.Memory, err
}

// MemoryState returns the VMM's hotplug memory state.
func MemoryState(ctx context.Context, v VMM) (*Memory, error) {
	m, files, err := Call(ctx, v, Message{Op: OpMemory}, nil)
	for _, f := range files {
		f.Close()
	}
	if err == nil && m.Memory == nil {
		err = fmt.Errorf("%w: memory reply without the memory's state", ErrProtocol)
	}
	return m.Memory, err
}
