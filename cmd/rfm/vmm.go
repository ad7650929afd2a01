package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"rainforest/internal/units"
	"rainforest/rfm/vmmctl"
	"rainforest/vmm"
	"rainforest/vmm/config"
	"rainforest/vmm/launch"
)

// attachTimeout bounds how long a VMM started with --control-fd waits for
// the supervisor's launch request.
const attachTimeout = 30 * time.Second

// vmmFlags are the settings of one subOS's VMM process.
type vmmFlags struct {
	name, kernel, initrd, cmdline, appendArgs string
	cores, memory, pageSize, console, profile string
	disks                                     []string
	consoleSocket, configFile                 string
	readyFD, waitFD, controlFD                int
	allowEmulated, noSeccomp                  bool
	logLevel                                  string
	consoleLogSize                            string
}

// documentFlags are the flags that build the configuration document; they
// cannot be mixed with --config or a launch over --control-fd.
var documentFlags = []string{"name", "kernel", "initrd", "cmdline", "append", "cores", "cpus", "memory", "page-size",
	"disk", "console", "console-socket", "cpu-profile", "allow-emulated-kvm", "log-level", "console-log-size"}

func vmmCommand() *cobra.Command {
	var f vmmFlags
	cmd := &cobra.Command{
		Use:   "vmm",
		Short: "Run one subOS in the foreground (the per-subOS VMM process)",
		Long: `Run one subOS: an unmodified Linux kernel in a KVM VM whose vCPUs are
pinned one-to-one to the given host cores and whose RAM is pre-faulted
hugepage memory on their NUMA node. The exit status is the guest's: what it
wrote to the status port (0x501) before powering off, 0 for a plain
power-off or reboot, 1 for a crash, 2 for a configuration error.

The VMM's configuration is one versioned JSON document. It comes from the
flags, from --config FILE, or (as the supervisor starts VMMs) over the
control socket given with --control-fd, with the shared-memory regions'
descriptors beside it; the control socket then also takes runtime requests
(hot-adding and removing disks and segments).`,
		Example: `  rfm vmm --kernel build/images/vmlinux --initrd build/images/initramfs.cpio.gz \
          --cores 2-3 --memory 512M --disk build/images/disk.img,ro --append "rf.cat=/hello.txt"
  rfm vmm --kernel build/images/bzImage --cores 1 --memory 256M --console /tmp/a.log --console-socket /tmp/a.sock
  rfm vmm --config web.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			err := f.run(cmd)
			var ee exitError
			if err != nil && !errors.As(err, &ee) {
				// The VMM's own failures are configuration errors: status
				// 2, as a guest's.
				return exitError{code: exitUsage, err: err}
			}
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.configFile, "config", "", "read the VMM's configuration document (JSON, version 1) from this file instead of flags")
	fl.StringVar(&f.name, "name", "subos", "subOS name (for logs)")
	fl.StringVar(&f.kernel, "kernel", "", "kernel: PVH ELF vmlinux or bzImage (required)")
	fl.StringVar(&f.initrd, "initrd", "", "initramfs")
	fl.StringVar(&f.cmdline, "cmdline", "", "kernel command line (default: "+vmm.DefaultCmdline()+")")
	fl.StringVar(&f.appendArgs, "append", "", "extra kernel command line arguments")
	fl.StringVar(&f.cores, "cores", "", "host cores, one vCPU each, as a list, e.g. 2-3 (required; unlike rfm create --cpus, not a count)")
	fl.StringVar(&f.cores, "cpus", "", "old name of --cores")
	_ = fl.MarkDeprecated("cpus", "use --cores (a list of host cores, e.g. 2-3)")
	fl.StringVar(&f.memory, "memory", "512M", "guest RAM, e.g. 512M or 2G")
	fl.StringVar(&f.pageSize, "page-size", "2M", "backing page size: 2M, 1G or 4k")
	fl.StringArrayVar(&f.disks, "disk", nil, "raw image or block device as virtio-blk, "+config.DiskSyntax+"; repeatable")
	fl.StringVar(&f.console, "console", "stdio", "serial console: stdio, none, or a file path for the log")
	fl.StringVar(&f.consoleLogSize, "console-log-size", "", "cap of the console log when it is a file, e.g. 1M (default 1M); it rotates when full")
	fl.StringVar(&f.consoleSocket, "console-socket", "", "also serve the console on this Unix socket (attach with rfm console)")
	fl.StringVar(&f.profile, "cpu-profile", "host", "CPUID profile: host or nested-safe")
	fl.IntVar(&f.readyFD, "ready-fd", -1, "write \"ready\" to this inherited file descriptor once the subOS runs")
	fl.IntVar(&f.waitFD, "wait-fd", -1, "before anything else, wait for a line \"go\" on this inherited file descriptor")
	fl.IntVar(&f.controlFD, "control-fd", -1, "inherited listening control socket of the supervisor: the configuration and its regions arrive there")
	fl.BoolVar(&f.allowEmulated, "allow-emulated-kvm", false, "boot even where KVM emulates guest kernel code")
	fl.StringVar(&f.logLevel, "log-level", "warn", "VMM log level: debug, info, warn, error")
	fl.BoolVar(&f.noSeccomp, "no-seccomp", false, "debugging: a jailed VMM runs without its system-call filter")
	for _, n := range []string{"ready-fd", "wait-fd", "control-fd"} {
		_ = fl.MarkHidden(n)
	}
	fixedValues(cmd, "page-size", "2M\t2 MiB hugepages", "1G\t1 GiB hugepages", "4k\tordinary pages (testing)")
	fixedValues(cmd, "cpu-profile", "host", "nested-safe")
	fixedValues(cmd, "log-level", "debug", "info", "warn", "error")
	return cmd
}

// run runs the VMM; its error is the process's.
func (f *vmmFlags) run(cmd *cobra.Command) error {
	var mixed []string
	for _, n := range documentFlags {
		if cmd.Flags().Changed(n) {
			mixed = append(mixed, "--"+n)
		}
	}
	if f.configFile != "" && f.controlFD >= 0 {
		return fmt.Errorf("--config and --control-fd: the configuration comes from one place")
	}
	if (f.configFile != "" || f.controlFD >= 0) && len(mixed) > 0 {
		return fmt.Errorf("%s: the configuration comes from --config or the control socket, not flags", strings.Join(mixed, ", "))
	}
	o := launch.Options{Stdout: os.Stdout, Log: cmd.ErrOrStderr()}
	if f.controlFD >= 0 {
		ln, err := vmmctl.Listener(f.controlFD)
		if err != nil {
			return fmt.Errorf("--control-fd: %w", err)
		}
		defer ln.Close()
		o.Control = ln
	}
	if err := f.waitGo(); err != nil {
		return err
	}
	var l *vmmctl.Launch
	switch {
	case o.Control != nil:
		var err error
		if l, err = vmmctl.AcceptLaunch(o.Control, attachTimeout); err != nil {
			return err
		}
		o.Config, o.Regions, o.Named, o.ControlUID = l.Config, l.Files, l.Named, l.From.UID
	case f.configFile != "":
		doc, err := readDocument(f.configFile)
		if err != nil {
			return err
		}
		if len(doc.Regions) > 0 {
			return fmt.Errorf("--config %s: regions need their descriptors, which only the control socket carries", f.configFile)
		}
		if len(doc.Files) > 0 {
			return fmt.Errorf("--config %s: files (named descriptors) need the control socket, which carries them", f.configFile)
		}
		o.Config = doc
	default:
		doc, err := f.document()
		if err != nil {
			return err
		}
		o.Config = doc
	}
	if f.noSeccomp {
		o.Config.NoSeccomp = true
	}
	if l != nil {
		// The launch is answered once the machine is built (Ready)
		// or refused.
		answered := false
		defer func() {
			if !answered {
				_ = l.Reply(errors.New("the VMM could not start; see its log"))
			}
		}()
		ready := o.Ready
		o.Ready = func() {
			answered = true
			_ = l.Reply(nil)
			if ready != nil {
				ready()
			}
		}
	}
	if f.readyFD >= 0 {
		r := os.NewFile(uintptr(f.readyFD), "ready")
		if r == nil {
			return fmt.Errorf("--ready-fd %d: not a file descriptor", f.readyFD)
		}
		prev := o.Ready
		o.Ready = func() {
			if prev != nil {
				prev()
			}
			fmt.Fprintln(r, "ready")
			r.Close()
		}
	}
	if o.Config.Console.Mode == "" || o.Config.Console.Mode == config.ConsoleStdio {
		if restore, ok := rawTerminal(os.Stdin); ok {
			o.Stdin = os.Stdin
			defer restore()
		} else if !isTerminal(os.Stdin) {
			o.Stdin = os.Stdin
		}
	}
	e, err := launch.Run(cmd.Context(), o)
	if err != nil {
		return err
	}
	return exitFor(launch.Logger(o.Config, cmd.ErrOrStderr()), e)
}

// readDocument reads a configuration document from a file.
func readDocument(path string) (*config.Document, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	defer f.Close()
	doc, err := config.Decode(f)
	if err != nil {
		return nil, fmt.Errorf("--config %s: %w", path, err)
	}
	return doc, nil
}

// document builds the configuration document from the flags.
func (f *vmmFlags) document() (*config.Document, error) {
	if f.kernel == "" {
		return nil, fmt.Errorf("--kernel is required")
	}
	cores, err := units.ParseCPUList(f.cores)
	if err != nil {
		return nil, fmt.Errorf("--cores: %w", err)
	}
	if len(cores) == 0 {
		return nil, fmt.Errorf("--cores is required (host cores, e.g. 1-2)")
	}
	mem, err := units.ParseNonZeroSize(f.memory)
	if err != nil {
		return nil, fmt.Errorf("--memory: %w", err)
	}
	doc := &config.Document{Version: config.Version, Name: f.name, Kernel: f.kernel, Initrd: f.initrd,
		Cmdline: f.cmdline, Append: f.appendArgs, Cores: cores, Memory: mem, PageSize: f.pageSize,
		CPUProfile: f.profile, LogLevel: f.logLevel, AllowEmulatedKVM: f.allowEmulated,
		Console: config.Console{Mode: f.console, Socket: f.consoleSocket}}
	switch f.console {
	case config.ConsoleStdio, config.ConsoleNone:
	case "":
		doc.Console.Mode = config.ConsoleNone
	default:
		doc.Console = config.Console{Mode: config.ConsoleFile, Path: f.console, Socket: f.consoleSocket}
	}
	if f.consoleLogSize != "" {
		size, err := units.ParseNonZeroSize(f.consoleLogSize)
		if err != nil {
			return nil, fmt.Errorf("--console-log-size: %w", err)
		}
		doc.Console.LogSize = size
	}
	for _, d := range f.disks {
		disk, err := config.ParseDisk(d)
		if err != nil {
			return nil, fmt.Errorf("--disk: %w", err)
		}
		doc.Disks = append(doc.Disks, disk)
	}
	if err := doc.Validate(); err != nil {
		return nil, flagProblem(err)
	}
	return doc, nil
}

// flagProblem names the flag behind the document field err is about.
func flagProblem(err error) error {
	flags := map[string]string{"name": "--name", "kernel": "--kernel", "cores": "--cores", "memory": "--memory",
		"page_size": "--page-size", "cpu_profile": "--cpu-profile", "log_level": "--log-level", "disks": "--disk", "console": "--console",
		"console.log_size": "--console-log-size"}
	var fe *config.FieldError
	if errors.As(err, &fe) && flags[fe.Field] != "" {
		return fmt.Errorf("%s: %w", flags[fe.Field], err)
	}
	return err
}

// waitGo blocks until the supervisor says "go" on --wait-fd (it first moves
// this process into the subOS's cgroup).
func (f *vmmFlags) waitGo() error {
	if f.waitFD < 0 {
		return nil
	}
	w := os.NewFile(uintptr(f.waitFD), "wait")
	if w == nil {
		return fmt.Errorf("--wait-fd %d: not a file descriptor", f.waitFD)
	}
	defer w.Close()
	buf := make([]byte, 3)
	if n, _ := io.ReadFull(w, buf); n < 2 || string(buf[:2]) != "go" {
		return fmt.Errorf("--wait-fd: the supervisor went away before starting this subOS")
	}
	return nil
}

// exitFor turns a guest exit into the process exit status.
func exitFor(log *slog.Logger, e vmm.Exit) error {
	switch e.Reason {
	case vmm.ExitPowerOff, vmm.ExitReboot:
		log.Info("guest ended", "reason", string(e.Reason), "status", e.Status)
	case vmm.ExitStopped:
		log.Info("stopped")
	default:
		fmt.Fprintf(os.Stderr, "rfm: guest ended: %s: %v\n", e.Reason, e.Err)
	}
	if e.Status != 0 {
		return exitError{code: e.Status}
	}
	return nil
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// rawTerminal puts a terminal in raw mode, so keys go to the guest as typed
// (Ctrl-C still stops the VMM), and returns a function restoring it.
func rawTerminal(f *os.File) (func(), bool) {
	fd := int(f.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, false
	}
	raw := *old
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
	// Keep ISIG so Ctrl-C still stops the VMM.
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return nil, false
	}
	return func() { _ = unix.IoctlSetTermios(fd, unix.TCSETS, old) }, true
}
