// Package launch runs one subOS's VMM from its configuration document
// (vmm/config): it maps the shared-memory regions whose descriptors came
// with the document, builds the machine with the document's devices,
// serves the control socket (the supervisor's runtime requests: hot-add
// and removal of disks and segments, export of the regions), and runs the
// guest. `rfm vmm` is a thin command line around it.
package launch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"regexp"
	"sort"
	"sync"

	"rainforest/internal/peercred"
	"rainforest/rfm/vmmctl"
	"rainforest/vmm"
	"rainforest/vmm/config"
	"rainforest/vmm/consolelog"
	"rainforest/vmm/seccomp"
	"rainforest/vmm/shmem/abi"
	"rainforest/vmm/virtio/fs"
	"rainforest/vmm/virtio/mem"
)

// Options are one VMM's inputs.
type Options struct {
	Config *config.Document
	// Regions are the regions' files, in the document's order (checked
	// with vmmctl.SplitFiles); Run takes charge of them.
	Regions []*os.File
	// Named are the files of the document's descriptor table
	// (config.Document.Files) by name, used instead of opening paths; Run
	// takes charge of them.
	Named map[string]*os.File
	// Control is the control socket to serve while the guest runs (nil:
	// none), answering only uid ControlUID: the launch's sender
	// (vmmctl.Launch.From.UID).
	Control    *net.UnixListener
	ControlUID uint32
	// Stdout and Stdin are the console in ConsoleStdio mode (Stdin may be
	// nil).
	Stdout io.Writer
	Stdin  io.Reader
	// Log receives the VMM's own log lines.
	Log io.Writer
	// Ready is called once the machine is built and about to run.
	Ready func()
	// SysRoot is the sysfs root ("/sys" when empty; tests).
	SysRoot string
}

// Logger returns the VMM's logger for doc: at its log level, naming the
// subOS.
func Logger(doc *config.Document, out io.Writer) *slog.Logger {
	level := slog.LevelWarn
	if doc.LogLevel != "" {
		_ = level.UnmarshalText([]byte(doc.LogLevel)) // Validate checked it
	}
	return slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: level})).With("subos", doc.Name)
}

// Run builds the subOS and runs it until the guest ends or ctx does.
// Configuration errors come back as err, before the guest runs; how the
// guest ended is the Exit.
func Run(ctx context.Context, o Options) (vmm.Exit, error) {
	doc := o.Config
	log := Logger(doc, o.Log)
	ms := &vmmctl.Membership{}
	defer ms.Close() // after the machine is closed: its devices map the regions
	// Close what the machine did not take.
	defer func() {
		for _, f := range o.Named {
			f.Close()
		}
	}()
	mems, bells, err := vmmctl.SplitFiles(doc.Regions, o.Regions)
	if err != nil {
		return vmm.Exit{}, err
	}
	cfg, closeConsole, err := linuxConfig(doc, o, log)
	if err == nil && doc.Jail != nil {
		if err = enterJail(doc, o, cfg.DiskFiles); err != nil {
			closeConsole()
		}
	}
	if err != nil {
		for i := range mems {
			closeAll(append(bells[i], mems[i]))
		}
		return vmm.Exit{}, err
	}
	defer closeConsole()
	for i, r := range doc.Regions {
		sc, err := ms.Add(r, append([]*os.File{mems[i]}, bells[i]...))
		if err != nil {
			for _, rest := range mems[i+1:] {
				rest.Close()
			}
			for _, rest := range bells[i+1:] {
				closeAll(rest)
			}
			return vmm.Exit{}, err
		}
		cfg.SharedMemory = append(cfg.SharedMemory, sc)
	}
	l, err := vmm.NewLinux(ctx, cfg)
	if err != nil {
		return vmm.Exit{}, err
	}
	defer l.Close()
	if doc.Jail != nil {
		if doc.NoSeccomp {
			log.Warn("SECCOMP FILTER OFF (no_seccomp): the jailed VMM may make any system call; for debugging only")
		} else if err := seccomp.Install(); err != nil {
			return vmm.Exit{}, err
		}
	}
	h := &subOS{l: l, ms: ms, kinds: map[string]vmmctl.Device{}, jailed: doc.Jail != nil}
	for _, d := range cfg.Disks {
		h.kinds[d.ID] = vmmctl.Device{ID: d.ID, Kind: "disk", Path: d.Path, ReadOnly: d.ReadOnly}
	}
	for _, n := range cfg.Nets {
		name := n.Tap
		if n.Loop != nil {
			name = n.Loop.Network
		}
		h.kinds[n.ID] = vmmctl.Device{ID: n.ID, Kind: "net", Name: name}
	}
	for _, r := range doc.Regions {
		id := vmm.RegionDeviceID(r.Name)
		h.kinds[id] = vmmctl.Device{ID: id, Kind: "region", Name: r.Name, ReadOnly: r.RWReadOnly}
	}
	for _, s := range cfg.Shares {
		h.kinds[s.ID] = vmmctl.Device{ID: s.ID, Kind: "share", Name: s.Tag, Path: s.Socket}
	}
	h.kinds["console"] = vmmctl.Device{ID: "console", Kind: "console"}
	if o.Control != nil {
		sctx, stop := context.WithCancel(ctx)
		served := make(chan struct{})
		go func() { // owner: Run; stopped below
			defer close(served)
			vmmctl.Serve(sctx, o.Control, o.ControlUID, h, log)
		}()
		defer func() { stop(); <-served }()
	}
	if o.Ready != nil {
		o.Ready()
	}
	return l.Boot(ctx), nil
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// linuxConfig turns the document into the machine's configuration (the
// regions are added by the caller).
func linuxConfig(doc *config.Document, o Options, log *slog.Logger) (vmm.LinuxConfig, func(), error) {
	ps, err := doc.Pages()
	if err != nil {
		return vmm.LinuxConfig{}, nil, err
	}
	profile := vmm.ProfileHost
	if doc.CPUProfile != "" {
		profile = vmm.CPUProfile(doc.CPUProfile)
	}
	cmdline := doc.Cmdline
	if cmdline == "" {
		cmdline = vmm.DefaultCmdline()
	}
	if doc.Append != "" {
		cmdline += " " + doc.Append
	}
	cfg := vmm.LinuxConfig{
		Config: vmm.Config{Name: doc.Name, MemSize: doc.Memory, PageSize: ps, HostCores: doc.Cores, MaxVCPUs: doc.MaxVCPUs,
			HotplugMemory: doc.HotplugMemory, Profile: profile, Logger: log, SysRoot: o.SysRoot},
		Kernel: doc.Kernel, Initrd: doc.Initrd, Cmdline: cmdline, Disks: doc.WithDiskIDs(), Nets: doc.WithNetIDs(),
		ConsoleSocket: doc.Console.Socket, AllowEmulatedKVM: doc.AllowEmulatedKVM,
		Vsock:  doc.Vsock,
		Shares: doc.WithShareIDs(),
		// A jailed VMM has no host paths to dial: guest-initiated vsock
		// connections get RST (host-initiated ones come through the
		// listener it is given).
		VsockNoDial: doc.Jail != nil,
	}
	// take hands a named file over (to the machine or to the closer).
	take := func(name string) *os.File {
		f := o.Named[name]
		delete(o.Named, name)
		return f
	}
	var owned []*os.File // closed by the closer
	cfg.KVMFile = take(config.FileKVM)
	if f := take(config.FileKernel); f != nil {
		cfg.KernelFile, owned = f, append(owned, f)
	}
	if f := take(config.FileInitrd); f != nil {
		cfg.InitrdFile, owned = f, append(owned, f)
	}
	for _, d := range cfg.Disks {
		if f := take(config.DiskFile(d.ID)); f != nil {
			if cfg.DiskFiles == nil {
				cfg.DiskFiles = map[string]*os.File{}
			}
			cfg.DiskFiles[d.ID] = f
		}
	}
	for _, s := range cfg.Shares {
		if f := take(config.ShareFile(s.ID)); f != nil {
			if cfg.ShareFiles == nil {
				cfg.ShareFiles = map[string]*os.File{}
			}
			cfg.ShareFiles[s.ID] = f
		}
	}
	for _, n := range cfg.Nets {
		var nf vmm.NetFiles
		nf.Tap = take(config.NetFile(n.ID))
		nf.Vhost = take(config.VhostNetFile(n.ID))
		if n.Loop != nil {
			for k := range n.Loop.Members {
				nf.Loop.Lanes = append(nf.Loop.Lanes, take(config.LoopLaneFile(n.ID, k)))
				nf.Loop.Bells = append(nf.Loop.Bells, take(config.LoopBellFile(n.ID, k)))
			}
		}
		if nf.Tap != nil || nf.Vhost != nil || n.Loop != nil {
			if cfg.NetFiles == nil {
				cfg.NetFiles = map[string]vmm.NetFiles{}
			}
			cfg.NetFiles[n.ID] = nf
		}
	}
	closer := func() { closeAll(owned) }
	fail := func(err error) (vmm.LinuxConfig, func(), error) {
		closer()
		if cfg.ConsoleListener != nil {
			cfg.ConsoleListener.Close()
		}
		if cfg.VsockListener != nil {
			cfg.VsockListener.Close()
		}
		if cfg.KVMFile != nil {
			cfg.KVMFile.Close()
		}
		for _, f := range cfg.DiskFiles {
			f.Close()
		}
		for _, f := range cfg.ShareFiles {
			f.Close()
		}
		for _, f := range cfg.NetFiles {
			f.Close()
		}
		return vmm.LinuxConfig{}, nil, err
	}
	if f := take(config.FileConsoleSocket); f != nil {
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return fail(fmt.Errorf("console socket: %w", err))
		}
		ul, ok := ln.(*net.UnixListener)
		if !ok {
			ln.Close()
			return fail(fmt.Errorf("console socket: not a Unix socket listener"))
		}
		ul.SetUnlinkOnClose(false) // the supervisor's path
		cfg.ConsoleListener, cfg.ConsoleSocket = ul, ""
	}
	if f := take(config.FileVsockSocket); f != nil {
		ul, err := unixListener(f)
		if err != nil {
			return fail(fmt.Errorf("vsock socket: %w", err))
		}
		ul.SetUnlinkOnClose(false) // the supervisor's path
		cfg.VsockListener = ul
	}
	cfg.ConsoleAllow = consoleAllow(doc.Console, o)
	var logFile *os.File
	switch doc.Console.Mode {
	case "", config.ConsoleStdio:
		cfg.Console, cfg.ConsoleIn = o.Stdout, o.Stdin
		logFile, _ = o.Stdout.(*os.File)
	case config.ConsoleFile:
		f := take(config.FileConsoleLog)
		if f == nil {
			// Read-write, not appending: the log rotates on this
			// descriptor (vmm/consolelog).
			var err error
			if f, err = os.OpenFile(doc.Console.Path, os.O_CREATE|os.O_RDWR, 0o600); err != nil {
				return fail(fmt.Errorf("console: %w", err))
			}
		}
		logFile, owned = f, append(owned, f)
	}
	if logFile != nil {
		w, err := consolelog.New(logFile, consoleLogOptions(doc.Console))
		if err != nil {
			return fail(fmt.Errorf("console: %w", err))
		}
		cfg.Console = w
		fileCloser := closer
		closer = func() {
			w.Close()
			st := w.Stats()
			log.Info("console output", "written", st.Written, "dropped", st.Dropped, "rotated", st.Rotated)
			fileCloser()
		}
	}
	return cfg, closer, nil
}

// unixListener turns a listening socket's descriptor into a listener
// (f is closed).
func unixListener(f *os.File) (*net.UnixListener, error) {
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	ul, ok := ln.(*net.UnixListener)
	if !ok {
		ln.Close()
		return nil, errors.New("not a Unix socket listener")
	}
	return ul, nil
}

// consoleAllow is who may attach to the console socket: root, the VMM's
// controller (the supervisor, or this process's user when run by hand)
// and members of the document's console group.
func consoleAllow(c config.Console, o Options) func(peercred.Cred) bool {
	owner := uint32(os.Geteuid())
	if o.Control != nil {
		owner = o.ControlUID
	}
	p := peercred.Policy{Owner: owner, Group: peercred.NoGroup}
	if c.Group > 0 {
		p.Group = c.Group
	}
	return func(cr peercred.Cred) bool { return p.Check(cr) == nil }
}

// consoleLogOptions are the console log's cap and rate from the document
// (zero: the defaults). The burst is the default or a second's worth,
// whichever is more.
func consoleLogOptions(c config.Console) consolelog.Options {
	o := consolelog.Options{MaxSize: int64(c.LogSize), Rate: int(c.LogRate)}
	if o.Rate > consolelog.DefaultBurst {
		o.Burst = o.Rate
	}
	return o
}

// subOS answers the control socket's runtime requests (vmmctl.Handler).
type subOS struct {
	l  *vmm.Linux
	ms *vmmctl.Membership
	mu sync.Mutex
	// kinds describes the devices by id, for Devices.
	kinds map[string]vmmctl.Device
	// jailed: there is no path to open; disks come as descriptors.
	jailed bool
}

// classify maps the machine's errors to the protocol's.
func classify(err error) error {
	switch {
	case errors.Is(err, vmm.ErrNoDevice):
		return fmt.Errorf("%w: %w", vmmctl.ErrNotFound, err)
	case errors.Is(err, vmm.ErrDeviceExists):
		return fmt.Errorf("%w: %w", vmmctl.ErrExists, err)
	case errors.Is(err, vmm.ErrNotReleased):
		return fmt.Errorf("%w: %w", vmmctl.ErrNotReleased, err)
	}
	return err
}

// AttachDisk implements vmmctl.Handler.
func (s *subOS) AttachDisk(_ context.Context, d config.Disk, backing *os.File) (_ vmmctl.Device, err error) {
	defer func() {
		if err != nil && backing != nil {
			backing.Close()
		}
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.jailed && backing == nil {
		return vmmctl.Device{}, fmt.Errorf("%w: disk %q: a jailed VMM opens no paths; send the disk's descriptor", vmmctl.ErrInvalid, d.ID)
	}
	if backing != nil {
		if err := fitsFileSizeLimit(backing, d.ReadOnly); err != nil {
			return vmmctl.Device{}, fmt.Errorf("%w: disk %q: %w", vmmctl.ErrInvalid, d.ID, err)
		}
	}
	if d.ID == "" {
		for n := 0; ; n++ {
			if _, taken := s.l.DeviceSlots()[fmt.Sprintf("disk%d", n)]; !taken {
				d.ID = fmt.Sprintf("disk%d", n)
				break
			}
		}
	}
	if err := d.Check(); err != nil {
		return vmmctl.Device{}, fmt.Errorf("%w: disk: %w", vmmctl.ErrInvalid, err)
	}
	if _, taken := s.l.DeviceSlots()[d.ID]; taken {
		return vmmctl.Device{}, fmt.Errorf("%w: %q", vmmctl.ErrExists, d.ID)
	}
	slot, err := s.l.AddDiskFile(d, backing)
	backing = nil // the machine's now
	if err != nil {
		if errors.Is(err, vmm.ErrDeviceExists) {
			return vmmctl.Device{}, classify(err)
		}
		return vmmctl.Device{}, fmt.Errorf("%w: %w", vmmctl.ErrInvalid, err)
	}
	dev := vmmctl.Device{ID: d.ID, Kind: "disk", Slot: slot, Path: d.Path, ReadOnly: d.ReadOnly}
	s.kinds[d.ID] = dev
	return dev, nil
}

// AttachShare implements vmmctl.ShareHandler: it hot-adds a virtio-fs
// device on sock, connected to the share's back end (a jailed VMM dials
// no socket path; one that is not may be given s.Socket instead).
func (s *subOS) AttachShare(ctx context.Context, sh config.Share, sock *os.File) (_ vmmctl.Device, err error) {
	defer func() {
		if err != nil && sock != nil {
			sock.Close()
		}
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	if sock == nil && (s.jailed || sh.Socket == "") {
		return vmmctl.Device{}, fmt.Errorf("%w: share %q: send the back end's connected socket", vmmctl.ErrInvalid, sh.ID)
	}
	if !shareIDPattern.MatchString(sh.ID) {
		return vmmctl.Device{}, fmt.Errorf("%w: share id %q: 1-32 of letters, digits, _ . -", vmmctl.ErrInvalid, sh.ID)
	}
	if err := fs.CheckTag(sh.Tag); err != nil {
		return vmmctl.Device{}, fmt.Errorf("%w: share %q: %w", vmmctl.ErrInvalid, sh.ID, err)
	}
	s.reconcileLocked()
	if _, taken := s.l.DeviceSlots()[sh.ID]; taken {
		return vmmctl.Device{}, fmt.Errorf("%w: %q", vmmctl.ErrExists, sh.ID)
	}
	for _, d := range s.kinds {
		if d.Kind == "share" && d.Name == sh.Tag {
			return vmmctl.Device{}, fmt.Errorf("%w: share %q has tag %q already", vmmctl.ErrExists, d.ID, sh.Tag)
		}
	}
	slot, err := s.l.AddShare(ctx, sh, sock)
	sock = nil // the machine's now (closed on its error)
	if err != nil {
		if errors.Is(err, vmm.ErrDeviceExists) {
			return vmmctl.Device{}, classify(err)
		}
		return vmmctl.Device{}, fmt.Errorf("%w: %w", vmmctl.ErrInvalid, err)
	}
	dev := vmmctl.Device{ID: sh.ID, Kind: "share", Slot: slot, Name: sh.Tag, Path: sh.Socket}
	s.kinds[sh.ID] = dev
	return dev, nil
}

var _ vmmctl.ShareHandler = (*subOS)(nil)

// shareIDPattern is what a share's device id may be (config's rule).
var shareIDPattern = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,32}$`)

// Grant implements vmmctl.Handler.
func (s *subOS) Grant(_ context.Context, r config.Region, files []*os.File) (vmmctl.Device, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.Protocol != abi.ProtocolSegment {
		closeAll(files)
		return vmmctl.Device{}, fmt.Errorf("%w: region %q: only segments are granted at run time", vmmctl.ErrInvalid, r.Name)
	}
	s.reconcileLocked()
	sc, err := s.ms.Add(r, files)
	if err != nil {
		if errors.Is(err, vmmctl.ErrExists) {
			return vmmctl.Device{}, err
		}
		return vmmctl.Device{}, fmt.Errorf("%w: %w", vmmctl.ErrInvalid, err)
	}
	d, err := s.l.AddSharedMemory(sc)
	if err != nil {
		return vmmctl.Device{}, errors.Join(classify(err), s.ms.Remove(r.Name))
	}
	id := vmm.RegionDeviceID(r.Name)
	dev := vmmctl.Device{ID: id, Kind: "region", Slot: d.Slot(), Name: r.Name, ReadOnly: r.RWReadOnly}
	s.kinds[id] = dev
	return dev, nil
}

// Detach implements vmmctl.Handler. A region's mapping and files go with
// its device.
func (s *subOS) Detach(ctx context.Context, id string) error {
	if id == "console" {
		return fmt.Errorf("%w: the console stays", vmmctl.ErrInvalid)
	}
	err := s.l.RemoveDevice(ctx, id)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reconcileLocked()
	return classify(err)
}

// reconcileLocked forgets what belonged to devices that are gone, removed
// by Detach or released by the guest on its own: their descriptions, and
// for regions their mapping and files (so that Export no longer hands them
// to a supervisor).
func (s *subOS) reconcileLocked() {
	present := s.l.DeviceSlots()
	for id := range s.kinds {
		if _, ok := present[id]; !ok {
			delete(s.kinds, id)
		}
	}
	for _, r := range s.ms.Regions() {
		if _, ok := present[vmm.RegionDeviceID(r.Name)]; !ok {
			_ = s.ms.Remove(r.Name) // unmapping cannot fail for a mapping we made
		}
	}
}

// Devices implements vmmctl.Handler.
func (s *subOS) Devices() []vmmctl.Device {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reconcileLocked()
	var out []vmmctl.Device
	for id, slot := range s.l.DeviceSlots() {
		d, ok := s.kinds[id]
		if !ok {
			d = vmmctl.Device{ID: id}
		}
		d.Slot = slot
		if d.Kind == "net" {
			d.Counters, _ = s.l.NetCounters(id)
			d.Vhost = s.l.NetVhost(id)
		}
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Slot < out[j].Slot })
	return out
}

// Export implements vmmctl.Handler.
func (s *subOS) Export() ([]config.Region, []*os.File) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reconcileLocked()
	return s.ms.Export()
}

// SetCPUs implements vmmctl.Handler: it re-pins the vCPU threads
// (vmm.Machine.PinVCPUs); cores the machine refuses are ErrInvalid.
func (s *subOS) SetCPUs(cores []int) ([]vmmctl.VCPUPin, error) {
	if err := s.l.PinVCPUs(cores); err != nil {
		if errors.Is(err, vmm.ErrPinning) {
			return nil, fmt.Errorf("%w: %w", vmmctl.ErrInvalid, err)
		}
		return nil, err
	}
	return s.VCPUs(), nil
}

// VCPUs implements vmmctl.Handler.
func (s *subOS) VCPUs() []vmmctl.VCPUPin { return vcpuPins(s.l.VCPUPins()) }

// SetMemory implements vmmctl.Handler: it asks the guest for requested
// bytes of hotplug memory (vmm.Machine.SetMemory) and waits for it until
// ctx ends; a machine without hotplug memory, or a size it refuses, is
// ErrInvalid.
func (s *subOS) SetMemory(ctx context.Context, requested uint64) (vmmctl.Memory, error) {
	if err := s.l.SetMemory(requested); err != nil {
		return vmmctl.Memory{}, memoryError(err)
	}
	st, err := s.l.WaitMemory(ctx)
	if err != nil && ctx.Err() == nil {
		return vmmctl.Memory{}, err
	}
	return memoryState(st), nil // a partial result when ctx ended first
}

// Memory implements vmmctl.Handler.
func (s *subOS) Memory() (vmmctl.Memory, error) {
	st, err := s.l.MemoryState()
	if err != nil {
		return vmmctl.Memory{}, memoryError(err)
	}
	return memoryState(st), nil
}

// memoryError classifies the machine's refusals of a memory request.
func memoryError(err error) error {
	if errors.Is(err, vmm.ErrNoHotplugMemory) || errors.Is(err, mem.ErrRequested) {
		return fmt.Errorf("%w: %w", vmmctl.ErrInvalid, err)
	}
	return err
}

// memoryState converts the machine's memory state to the protocol's.
func memoryState(st vmm.MemoryState) vmmctl.Memory {
	return vmmctl.Memory{Requested: st.Requested, Plugged: st.Plugged, RegionSize: st.RegionSize, BlockSize: st.BlockSize}
}

// vcpuPins converts the machine's pinnings to the protocol's.
func vcpuPins(pins []vmm.VCPUPin) []vmmctl.VCPUPin {
	out := make([]vmmctl.VCPUPin, len(pins))
	for i, p := range pins {
		out[i] = vmmctl.VCPUPin{VCPU: p.VCPU, Core: p.Core, TID: p.TID}
	}
	return out
}
