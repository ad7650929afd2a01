package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"

	"rainforest/internal/peercred"
	"rainforest/vmm/acpi"
	"rainforest/vmm/boot"
	"rainforest/vmm/config"
	"rainforest/vmm/consolesock"
	"rainforest/vmm/devices/shmemdev"
	"rainforest/vmm/hostcpu"
	"rainforest/vmm/layout"
	"rainforest/vmm/platform"
	"rainforest/vmm/ram"
	"rainforest/vmm/serial"
	"rainforest/vmm/vhost"
	"rainforest/vmm/vhostuser"
	"rainforest/vmm/virtio"
	"rainforest/vmm/virtio/blk"
	virtioconsole "rainforest/vmm/virtio/console"
	"rainforest/vmm/virtio/fs"
	virtionet "rainforest/vmm/virtio/net"
	"rainforest/vmm/virtio/net/framesock"
	"rainforest/vmm/virtio/net/loop"
	"rainforest/vmm/virtio/net/tap"
	"rainforest/vmm/virtio/net/vhostnet"
	"rainforest/vmm/virtio/vsock"
)

// LinuxConfig is a subOS booting a Linux kernel.
type LinuxConfig struct {
	Config
	Kernel  string // PVH ELF vmlinux or bzImage
	Initrd  string // optional
	Cmdline string
	// KernelFile and InitrdFile, when set, are read instead of opening
	// Kernel and Initrd (a jailed VMM's descriptors; the caller keeps
	// them).
	KernelFile, InitrdFile *os.File
	// DiskFiles, by disk ID, are backings used instead of opening the
	// disks' paths; the machine takes charge of them.
	DiskFiles map[string]*os.File
	// Disks are given to the guest as virtio-blk devices, each under its
	// ID (config.Document.WithDiskIDs fills them in).
	Disks []config.Disk
	// Console is where the serial console's output goes (nil: discarded);
	// ConsoleIn, when set, is read for console input.
	Console   io.Writer
	ConsoleIn io.Reader
	// ConsoleSocket, when set, serves the console on a Unix socket there
	// (rfm console attaches to it).
	ConsoleSocket string
	// ConsoleListener, when set, is served instead of creating
	// ConsoleSocket (made by the supervisor of a jailed VMM); the machine
	// takes charge of it.
	ConsoleListener *net.UnixListener
	// ConsoleAllow, when set, decides which peers may attach to the
	// console socket (consolesock.Options.Allow).
	ConsoleAllow func(peercred.Cred) bool
	// Ready, when set, is called once the machine is built and about to run
	// (a supervisor waits for it to know the subOS started).
	Ready func()
	// AllowEmulatedKVM boots even on a KVM that emulates guest kernel code
	// (it will fail at the first instruction the emulator lacks).
	AllowEmulatedKVM bool
	// SharedMemory lists shared-memory PCI functions to add (regions the
	// supervisor made this subOS a member of).
	SharedMemory []shmemdev.Config
	// Vsock, when set, gives the guest a virtio-vsock device whose host
	// side is the Unix socket Vsock.Socket (see vmm/virtio/vsock).
	Vsock *config.Vsock
	// VsockListener, when set, is served instead of creating
	// Vsock.Socket (made by the supervisor of a jailed VMM); the machine
	// takes charge of it.
	VsockListener *net.UnixListener
	// VsockNoDial refuses the guest's connections to the host (a jailed
	// VMM reaches no paths): they get RST.
	VsockNoDial bool
	// Shares are given to the guest as virtio-fs devices, each under its
	// ID (config.Document.WithShareIDs fills them in), on the vhost-user
	// back end at its socket.
	Shares []config.Share
	// ShareFiles, by share ID, are Unix stream sockets connected to the
	// shares' back ends, used instead of connecting to their paths (a
	// jailed VMM's); the machine takes charge of them.
	ShareFiles map[string]*os.File
	// Nets are given to the guest as virtio-net devices on TAP
	// interfaces or loop networks, each under its ID
	// (config.Document.WithNetIDs fills them in).
	Nets []config.Net
	// NetFiles, by net ID, are the nets' descriptors: a TAP's, used
	// instead of opening its interface by name, or a loop member's lanes
	// and doorbells; the machine takes charge of them.
	NetFiles map[string]NetFiles
}

// NetFiles are the descriptors a net's backend is made on: its TAP's
// (nil: the VMM opens the TAP by name), or, for a loop member, its
// network's lanes and doorbells.
type NetFiles struct {
	Tap *os.File
	// Vhost, for a TAP net, is an open /dev/vhost-net: the kernel serves
	// the net's queues while it can (vmm/virtio/net/vhostnet).
	Vhost *os.File
	Loop  loop.Files
}

// Close closes every descriptor.
func (f NetFiles) Close() {
	if f.Tap != nil {
		f.Tap.Close()
	}
	if f.Vhost != nil {
		f.Vhost.Close()
	}
	f.Loop.Close()
}

// CheckNativeKVM returns ErrEmulatedKVM when the host's KVM cannot run guest
// kernel code natively (the paravirtual kvm_pvm back end).
func CheckNativeKVM(sysRoot string) error {
	if sysRoot == "" {
		sysRoot = "/sys"
	}
	if _, err := os.Stat(filepath.Join(sysRoot, "module/kvm_pvm")); err == nil {
		return ErrEmulatedKVM
	}
	return nil
}

// Check validates the configuration without making anything: files,
// kernel format, host cores and the hugepage pool.
func (c *LinuxConfig) Check() error {
	if err := c.checkFiles(); err != nil {
		return err
	}
	k, err := c.openKernel()
	if err != nil {
		return fmt.Errorf("kernel: %w", err)
	}
	defer k.Close()
	st, err := k.Stat()
	if err != nil {
		return fmt.Errorf("kernel: %w", err)
	}
	if _, err := boot.Validate(k, st.Size()); err != nil {
		return fmt.Errorf("kernel %s: %w", c.Kernel, err)
	}
	node, err := hostcpu.Topology{Root: c.SysRoot}.Check(c.HostCores)
	if err != nil {
		return err
	}
	ps := c.PageSize
	if ps == 0 {
		ps = ram.Page2M
	}
	return ram.Check(ram.Options{Size: c.MemSize, PageSize: ps, Node: node, SysRoot: c.SysRoot})
}

// checkFiles validates the kernel, initrd and disks.
func (c *LinuxConfig) checkFiles() error {
	if c.Kernel == "" {
		return errors.New("no kernel given")
	}
	for _, f := range []struct {
		what, path string
		file       *os.File
	}{{"kernel", c.Kernel, c.KernelFile}, {"initrd", c.Initrd, c.InitrdFile}} {
		if f.path == "" && f.file == nil {
			continue
		}
		var st os.FileInfo
		var err error
		if f.file != nil {
			st, err = f.file.Stat()
		} else {
			st, err = os.Stat(f.path)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", f.what, err)
		}
		if !st.Mode().IsRegular() || st.Size() == 0 {
			return fmt.Errorf("%s %s: not a non-empty regular file", f.what, f.path)
		}
	}
	for _, d := range c.Disks {
		if _, given := c.DiskFiles[d.ID]; given {
			continue // checked by blk.Adopt
		}
		if err := blk.CheckPath(d.Path); err != nil {
			return fmt.Errorf("disk: %w", err)
		}
	}
	return nil
}

// Linux is a machine set up to boot a Linux kernel.
type Linux struct {
	*Machine
	status *platform.GuestStatus
}

// NewLinux checks cfg, creates the machine, loads the kernel and builds the
// platform and devices; nothing runs yet. Configuration errors come back
// before anything is made; on error nothing is left behind.
func NewLinux(ctx context.Context, cfg LinuxConfig) (_ *Linux, err error) {
	defer func() {
		if err != nil { // the shares' sockets not taken yet
			for _, f := range cfg.ShareFiles {
				f.Close()
			}
		}
	}()
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	if !cfg.AllowEmulatedKVM {
		if err := CheckNativeKVM(cfg.SysRoot); err != nil {
			return nil, err
		}
	}
	m, err := New(cfg.Config)
	if err != nil {
		return nil, err
	}
	status, err := m.setupLinux(ctx, &cfg)
	if err != nil {
		m.Close()
		return nil, err
	}
	return &Linux{Machine: m, status: status}, nil
}

// Boot runs the guest until it powers off or reboots, a vCPU fails, or ctx
// ends; after a power-off the exit status is what the guest wrote to the
// status register.
func (l *Linux) Boot(ctx context.Context) Exit {
	e := l.Run(ctx)
	if e.Reason == ExitPowerOff {
		if code, ok := l.status.Last(); ok {
			e.Status = int(code)
		}
	}
	return e
}

// BootLinux creates a machine for cfg (NewLinux), calls cfg.Ready and runs
// the guest (Boot). Configuration errors come back as err before anything
// runs; how the guest ended is the Exit.
func BootLinux(ctx context.Context, cfg LinuxConfig) (Exit, error) {
	l, err := NewLinux(ctx, cfg)
	if err != nil {
		return Exit{}, err
	}
	defer l.Close()
	if cfg.Ready != nil {
		cfg.Ready()
	}
	return l.Boot(ctx), nil
}

func (m *Machine) setupLinux(ctx context.Context, cfg *LinuxConfig) (*platform.GuestStatus, error) {
	// The MADT lists every vCPU; the kernel boots the first BootVCPUs
	// and leaves the rest present and offline, for the guest to online
	// when the VMM has given them cores.
	tables, rsdp, err := acpi.Build(acpi.Config{NumCPUs: m.NumVCPUs(), HotplugSlots: acpi.AllHotplugSlots}, acpi.DefaultBase)
	if err != nil {
		return nil, err
	}
	if err := m.Mem.WriteAt(tables, acpi.DefaultBase); err != nil {
		return nil, fmt.Errorf("write ACPI tables: %w", err)
	}
	kernel, err := cfg.openKernel()
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	defer kernel.Close()
	kst, err := kernel.Stat()
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	cmdline := BootCmdline(cfg.Cmdline, m.BootVCPUs(), m.NumVCPUs())
	if m.memdev != nil {
		cmdline = MemoryCmdline(cmdline)
	}
	p := boot.Params{Kernel: kernel, KernelSize: kst.Size(), Cmdline: cmdline, RAMSize: cfg.MemSize, RSDPAddr: rsdp}
	if cfg.Initrd != "" || cfg.InitrdFile != nil {
		initrd, err := reopen(cfg.InitrdFile, cfg.Initrd)
		if err != nil {
			return nil, fmt.Errorf("initrd: %w", err)
		}
		defer initrd.Close()
		ist, err := initrd.Stat()
		if err != nil {
			return nil, fmt.Errorf("initrd: %w", err)
		}
		p.Initrd, p.InitrdSize = initrd, ist.Size()
	}
	res, err := boot.Load(m.Mem, p)
	if err != nil {
		return nil, fmt.Errorf("load kernel %s: %w", cfg.Kernel, err)
	}
	m.log.Info("kernel loaded", "format", res.Format.String(), "entry", fmt.Sprintf("%#x", res.Entry), "initrd", res.InitrdSize)
	regs, sregs, err := bootRegisters(m.VCPU(0), res.CPU)
	if err != nil {
		return nil, err
	}
	if err := m.SetBootState(0, regs, sregs); err != nil {
		return nil, err
	}

	// Legacy platform: COM1, ACPI PM registers and the status port. The reset
	// register shares the PCI configuration ports (setupPCI).
	var uartp atomic.Pointer[serial.UART]
	input := func(b []byte) {
		if u := uartp.Load(); u != nil {
			u.Enqueue(b)
		}
	}
	out, sock, err := consoleOutput(ctx, cfg, input)
	if err != nil {
		return nil, err
	}
	if sock != nil {
		m.AddCloser(sock.Close)
	}
	uart := serial.New(out, m.IRQLine(acpi.COM1IRQ), 0)
	uartp.Store(uart)
	status := platform.NewGuestStatus()
	devs := []struct {
		base, size uint64
		dev        interface {
			Read(uint64, []byte)
			Write(uint64, []byte)
		}
	}{
		{acpi.COM1Port, 8, uart},
		{acpi.PM1aEventPort, acpi.PM1aEventLen, platform.NewPM1Event(m.sci.Input())},
		{acpi.PM1aControlPort, acpi.PM1aControlLen, platform.NewPM1Control(func() { m.Stop(Exit{Reason: ExitPowerOff}) })},
		{acpi.PMTimerPort, acpi.PMTimerLen, platform.NewPMTimer(nil)},
		{platform.GuestStatusPort, 1, status},
	}
	for _, d := range devs {
		if err := m.PIO.Insert(d.dev, d.base, d.size); err != nil {
			return nil, err
		}
	}
	// The status register is also memory-mapped, for guests whose kernel
	// has no /dev/port (Debian's cloud flavour): busybox devmem reaches it.
	if err := m.MMIO.Insert(status, layout.GuestStatusMMIO, layout.GuestStatusLen); err != nil {
		return nil, err
	}
	if err := m.addDevices(ctx, cfg, out); err != nil {
		return nil, err
	}
	if cfg.ConsoleIn != nil {
		go pumpInput(m.Done(), cfg.ConsoleIn, uart)
	}
	return status, nil
}

// consoleOutput returns where both consoles' output goes (the serial
// console's and the virtio console's, hvc0): cfg.Console and, when cfg
// asks for one, the console socket it serves, whose clients' input goes
// to input (the serial console's: the guest's login console). The
// socket's Write never waits for a client (see consolesock), so neither
// console's vCPU stalls on one. out is io.Discard when there is neither;
// the caller closes sock.
func consoleOutput(ctx context.Context, cfg *LinuxConfig, input func([]byte)) (out io.Writer, sock *consolesock.Server, err error) {
	out = cfg.Console
	if cfg.ConsoleSocket != "" || cfg.ConsoleListener != nil {
		ln := cfg.ConsoleListener
		if ln == nil {
			if ln, err = consolesock.NewListener(cfg.ConsoleSocket, peercred.NoGroup); err != nil {
				return nil, nil, err
			}
		}
		if sock, err = consolesock.Serve(ctx, ln, input, consolesock.Options{Allow: cfg.ConsoleAllow}); err != nil {
			ln.Close()
			return nil, nil, err
		}
		if out == nil {
			out = sock
		} else {
			out = io.MultiWriter(sock, out) // the socket never fails; the log may
		}
	}
	if out == nil {
		out = io.Discard
	}
	return out, sock, nil
}

// addDevices plugs a virtio-blk function per disk, a virtio-net function
// per net, a virtio-console writing to console, the shared-memory
// functions, the virtio-vsock function, a virtio-fs function per share
// and the virtio-mem function (with hotplug memory) into the PCI bus.
func (m *Machine) addDevices(ctx context.Context, cfg *LinuxConfig, console io.Writer) error {
	defer func() { // descriptors no device took (after a failure)
		for id, f := range cfg.NetFiles {
			f.Close()
			delete(cfg.NetFiles, id)
		}
		for id, f := range cfg.ShareFiles {
			f.Close()
			delete(cfg.ShareFiles, id)
		}
	}()
	for _, d := range cfg.Disks {
		f := cfg.DiskFiles[d.ID]
		delete(cfg.DiskFiles, d.ID) // the machine's now
		if _, err := m.AddDiskFile(d, f); err != nil {
			return err
		}
	}
	for _, n := range cfg.Nets {
		f := cfg.NetFiles[n.ID]
		delete(cfg.NetFiles, n.ID) // the machine's now
		if _, err := m.AddNet(n, f); err != nil {
			return err
		}
	}
	if _, err := m.AddVirtio("console", virtioconsole.New(console, virtioconsole.Options{}), nil); err != nil {
		return err
	}
	for _, sc := range cfg.SharedMemory {
		if _, err := m.AddSharedMemory(sc); err != nil {
			return err
		}
	}
	if cfg.Vsock != nil {
		if err := m.addVsock(cfg); err != nil {
			return err
		}
	}
	for _, s := range cfg.Shares {
		f := cfg.ShareFiles[s.ID]
		delete(cfg.ShareFiles, s.ID) // the machine's now
		if _, err := m.AddShare(ctx, s, f); err != nil {
			return err
		}
	}
	if m.memdev != nil {
		if _, err := m.AddVirtio(MemoryDeviceID, m.memdev, nil); err != nil {
			return err
		}
	}
	return nil
}

// MemoryDeviceID is the device id of the virtio-mem function.
const MemoryDeviceID = "memory"

// addVsock plugs the virtio-vsock function, serving cfg.VsockListener or
// a listener it creates at cfg.Vsock.Socket.
func (m *Machine) addVsock(cfg *LinuxConfig) error {
	ln := cfg.VsockListener
	cfg.VsockListener = nil // the device's now
	if ln == nil {
		var err error
		ln, err = peercred.ListenUnix(cfg.Vsock.Socket, 0o600, peercred.NoGroup)
		if err != nil {
			return fmt.Errorf("vsock: cannot listen on %s (remove a stale socket there, or choose another path): %w", cfg.Vsock.Socket, err)
		}
	}
	opts := vsock.Options{CID: cfg.Vsock.CID, Listener: ln, Logger: m.log}
	if !cfg.VsockNoDial {
		opts.Dial = vsock.DialUnix(cfg.Vsock.Socket)
	}
	dev, err := vsock.New(opts)
	if err != nil {
		return fmt.Errorf("vsock: cid %d: %w", cfg.Vsock.CID, err)
	}
	_, err = m.AddVirtio("vsock", dev, dev)
	return err
}

// AddShare connects to share s's vhost-user back end (on f, a connected
// Unix stream socket, which it takes charge of; nil: it connects to
// s.Socket) and plugs s as a virtio-fs device under s.ID (see AddDevice).
// The back end's failure later is logged, sets DEVICE_NEEDS_RESET
// (vmm/vhostuser), and from then on the device answers the guest's
// requests with EIO (vmm/virtio/fs).
func (m *Machine) AddShare(ctx context.Context, s config.Share, f *os.File) (int, error) {
	log := m.log.With("share", s.ID, "tag", s.Tag)
	opts := vhostuser.Options{Logger: log}
	var cn *vhostuser.Conn
	if f != nil {
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return 0, fmt.Errorf("share %s: %w", s.ID, err)
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			c.Close()
			return 0, fmt.Errorf("share %s: its descriptor is not a Unix socket", s.ID)
		}
		cn = vhostuser.New(uc, opts)
	} else {
		var err error
		if cn, err = vhostuser.Dial(ctx, s.Socket, opts); err != nil {
			return 0, fmt.Errorf("share %s: %w", s.ID, err)
		}
	}
	dev, err := fs.New(ctx, cn, fs.Options{Tag: s.Tag, Logger: log})
	if err != nil {
		return 0, fmt.Errorf("share %s: %w", s.ID, err)
	}
	return m.AddVirtio(s.ID, dev, dev)
}

// AddNet plugs a virtio-net device for n under n.ID on its backend: for
// a loop member (n.Loop), the loop backend on files.Loop, its network's
// lanes and doorbells; otherwise its TAP, files.Tap when given (a
// descriptor attached to the interface), else the interface n.Tap opened
// by name. With files.Vhost (an open /dev/vhost-net) a TAP net's queues
// are served by the host kernel while it can, the VMM's device being the
// fallback (vmm/virtio/net/vhostnet; NetVhost says which serves). The
// machine takes charge of files. The VMM's device drops frames the guest
// sends from another MAC unless n.AnySourceMAC (vhost-net does not); its
// counters (and a loop backend's) are logged when it goes.
func (m *Machine) AddNet(n config.Net, files NetFiles) (int, error) {
	vhostFile := files.Vhost
	files.Vhost = nil
	dev, backend, err := netDevice(n, files, m.log)
	if err != nil {
		if vhostFile != nil {
			vhostFile.Close()
		}
		return 0, err
	}
	var model virtio.DeviceModel = dev
	closeModel := dev.Close
	if vhostFile != nil {
		vd, err := vhostNetDevice(n, dev, backend, vhostFile, m.log)
		if err != nil {
			dev.Close()
			return 0, err
		}
		model, closeModel = vd, vd.Close
		m.setVhostNet(n.ID, vd)
	}
	counters := func() map[string]uint64 {
		c := dev.Stats().Counters()
		if lb, ok := backend.(*loop.Backend); ok {
			maps.Copy(c, lb.Stats().Counters())
		}
		return c
	}
	m.netCounters.Store(n.ID, counters)
	slot, err := m.AddVirtio(n.ID, model, closerFunc(func() error {
		m.setVhostNet(n.ID, nil)
		err := closeModel()
		m.netCounters.Delete(n.ID)
		m.log.Info("net closed", "net", n.ID, "counters", counters())
		return err
	}))
	if err != nil {
		m.setVhostNet(n.ID, nil)
		m.netCounters.Delete(n.ID)
	}
	return slot, err
}

// NetCounters returns the counters of net id (its device's, and a loop
// member's backend's, prefixed loop_; see virtio/net.Stats.Counters),
// false when the machine has no such net.
func (m *Machine) NetCounters(id string) (map[string]uint64, bool) {
	f, ok := m.netCounters.Load(id)
	if !ok {
		return nil, false
	}
	return f.(func() map[string]uint64)(), true
}

// netDevice makes n's virtio-net model and its backend on files (a TAP's
// descriptor, nil to open n.Tap; or a loop member's); it takes charge of
// files.
func netDevice(n config.Net, files NetFiles, log *slog.Logger) (*virtionet.Device, virtionet.Backend, error) {
	mac, err := n.HardwareAddr()
	if err != nil || n.ID == "" {
		files.Close()
		if err == nil {
			err = errors.New("no id")
		}
		return nil, nil, fmt.Errorf("net %s: %w", n.ID, err)
	}
	log = log.With("net", n.ID)
	var backend virtionet.Backend
	switch {
	case n.Loop != nil:
		if files.Tap != nil {
			files.Tap.Close()
		}
		var lc loop.Config
		if lc, err = n.Loop.Config(); err == nil {
			lc.Logger = log
			backend, err = loop.Open(lc, files.Loop)
		} else {
			files.Loop.Close()
		}
	case n.Backend == config.NetBackendSocket && files.Tap != nil:
		files.Loop.Close()
		backend, err = framesock.Adopt(files.Tap)
	case n.Backend == config.NetBackendSocket:
		files.Loop.Close()
		err = errors.New("a socket backend needs its descriptor")
	case files.Tap != nil:
		files.Loop.Close()
		backend, err = tap.Adopt(files.Tap)
	default:
		files.Loop.Close()
		backend, err = tap.Open(n.Tap)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("net %s: %w", n.ID, err)
	}
	// A loop member always filters: the loop's source rules are its
	// isolation promise (the backend checks again).
	dev, err := virtionet.New(backend, virtionet.Options{MAC: mac, FilterSourceMAC: !n.AnySourceMAC || n.Loop != nil,
		Logger: log})
	if err != nil {
		return nil, nil, fmt.Errorf("net %s: %w", n.ID, err)
	}
	return dev, backend, nil
}

// vhostNetDevice puts dev's queues on vhost-net (the descriptor f, which
// it takes charge of) with dev as the fallback; dev's backend must be a
// TAP.
func vhostNetDevice(n config.Net, dev *virtionet.Device, backend virtionet.Backend, f *os.File, log *slog.Logger) (*vhostnet.Device, error) {
	t, ok := backend.(*tap.Tap)
	if !ok {
		f.Close()
		return nil, fmt.Errorf("net %s: vhost-net is for a TAP net only", n.ID)
	}
	k, err := vhost.Adopt(f)
	if err != nil {
		return nil, fmt.Errorf("net %s: %w", n.ID, err)
	}
	return vhostnet.New(dev, t, k, log.With("net", n.ID)), nil
}

// setVhostNet records (or, nil, forgets) the vhost-net device of net id.
func (m *Machine) setVhostNet(id string, d *vhostnet.Device) {
	m.vhostNetsMu.Lock()
	defer m.vhostNetsMu.Unlock()
	if d == nil {
		delete(m.vhostNets, id)
		return
	}
	if m.vhostNets == nil {
		m.vhostNets = map[string]*vhostnet.Device{}
	}
	m.vhostNets[id] = d
}

// NetVhost says who serves net id's queues when it was given vhost-net
// (vhostnet.State: "ready", "on", "fallback", "off"); "" for a net
// without vhost-net, or no such net.
func (m *Machine) NetVhost(id string) string {
	m.vhostNetsMu.Lock()
	d := m.vhostNets[id]
	m.vhostNetsMu.Unlock()
	if d == nil {
		return ""
	}
	return string(d.State())
}

// closerFunc is a function as an io.Closer.
type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// AddDisk opens d's backing and plugs it as a virtio-blk device under d.ID
// (see AddDevice): at boot, or hot-added while the guest runs.
func (m *Machine) AddDisk(d config.Disk) (int, error) { return m.AddDiskFile(d, nil) }

// AddDiskFile is AddDisk on backing f, already open (nil: open d.Path);
// it takes charge of f.
func (m *Machine) AddDiskFile(d config.Disk, f *os.File) (int, error) {
	model, backing, err := diskModel(d, f)
	if err != nil {
		return 0, err
	}
	return m.AddVirtio(d.ID, model, backing)
}

// diskModel makes d's virtio-blk model on backing f, already open (nil:
// open d.Path); it takes charge of f.
func diskModel(d config.Disk, f *os.File) (virtio.DeviceModel, io.Closer, error) {
	if d.ID == "" {
		if f != nil {
			f.Close()
		}
		return nil, nil, fmt.Errorf("disk %s: no id", d.Path)
	}
	if f == nil {
		return OpenDisk(d)
	}
	dev, err := blk.Adopt(f, diskOptions(d))
	if err != nil {
		return nil, nil, fmt.Errorf("disk %s: %w", d.ID, err)
	}
	return dev, dev, nil
}

// OpenDisk opens a disk's backing (a regular file or a block device, with
// O_DIRECT when asked) and makes its virtio-blk model; the closer releases
// the backing.
func OpenDisk(d config.Disk) (virtio.DeviceModel, io.Closer, error) {
	model, err := blk.Open(d.Path, diskOptions(d))
	if err != nil {
		return nil, nil, fmt.Errorf("disk %s: %w", d.ID, err)
	}
	return model, model, nil
}

// diskOptions are the device options of d, the same whether the VMM opens
// the backing or is handed it (a jailed VMM): its limits included.
func diskOptions(d config.Disk) blk.Options {
	return blk.Options{ReadOnly: d.ReadOnly, Direct: d.Direct, ID: "rf-" + d.ID,
		IOPS: d.IOPS, Bandwidth: d.Bandwidth}
}

// openKernel opens the kernel: a duplicate of KernelFile when given (the
// caller keeps KernelFile), else the path.
func (c *LinuxConfig) openKernel() (*os.File, error) { return reopen(c.KernelFile, c.Kernel) }

// reopen returns a file to read f from (a duplicate, closed by the caller),
// or path opened when f is nil. Reads are positioned (ReadAt), so sharing
// the offset does not matter.
func reopen(f *os.File, path string) (*os.File, error) {
	if f == nil {
		return os.Open(path)
	}
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate %s: %w", f.Name(), err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// pumpInput copies console input into the UART until the machine stops or
// the input ends. The reader may stay blocked after the machine stops (a
// terminal); it then exits on its next read.
func pumpInput(done <-chan struct{}, in io.Reader, uart *serial.UART) {
	buf := make([]byte, 256)
	for {
		n, err := in.Read(buf)
		select {
		case <-done:
			return
		default:
		}
		if n > 0 {
			uart.Enqueue(buf[:n])
		}
		if err != nil {
			return
		}
	}
}

// bootRegisters converts the boot CPU state into KVM registers.
func bootRegisters(c interface {
	Sregs() (*gokvm.Sregs, error)
}, st boot.CPUState) (*gokvm.Regs, *gokvm.Sregs, error) {
	s, err := c.Sregs()
	if err != nil {
		return nil, nil, err
	}
	seg := func(b boot.Segment) gokvm.Segment {
		return gokvm.Segment{Base: b.Base, Limit: b.Limit, Selector: b.Selector, Typ: b.Type,
			Present: bit(b.Present), DPL: b.DPL, DB: bit(b.DB), S: bit(b.S), L: bit(b.L), G: bit(b.G), AVL: bit(b.AVL)}
	}
	s.CS, s.DS, s.ES, s.FS, s.GS, s.SS = seg(st.CS), seg(st.DS), seg(st.ES), seg(st.FS), seg(st.GS), seg(st.SS)
	s.TR, s.LDT = seg(st.TR), seg(st.LDT)
	s.GDT = gokvm.Descriptor{Base: st.GDT.Base, Limit: st.GDT.Limit}
	s.IDT = gokvm.Descriptor{Base: st.IDT.Base, Limit: st.IDT.Limit}
	s.CR0, s.CR3, s.CR4, s.EFER = st.CR0, st.CR3, st.CR4, st.EFER
	flags := st.RFLAGS
	if flags == 0 {
		flags = 2
	}
	r := &gokvm.Regs{RIP: st.RIP, RSP: st.RSP, RSI: st.RSI, RBX: st.RBX, RFLAGS: flags}
	return r, s, nil
}

func bit(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// BootCmdline is cmdline for a machine of vcpus vCPUs that boots boot of
// them: with maxcpus=<boot> appended when there are more (last, so that
// it wins over one in cmdline).
func BootCmdline(cmdline string, boot, vcpus int) string {
	if vcpus <= boot {
		return cmdline
	}
	return strings.TrimSpace(cmdline + " maxcpus=" + strconv.Itoa(boot))
}

// DefaultCmdline is the kernel command line for a subOS on this VMM.
func DefaultCmdline(extra ...string) string {
	base := []string{"console=ttyS0", "reboot=acpi", "panic=-1", "quiet"}
	return strings.Join(append(base, extra...), " ")
}
