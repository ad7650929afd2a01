package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"rainforest/internal/units"
	"rainforest/vmm"
	"rainforest/vmm/ram"
)

// vmmFlags are the settings of one subOS's VMM process.
type vmmFlags struct {
	name, kernel, initrd, cmdline, appendArgs string
	cpus, memory, pageSize, console, profile  string
	disks                                     []string
	consoleSocket                             string
	readyFD, waitFD, controlFD                int
	allowEmulated                             bool
	logLevel                                  string
}

func vmmCommand() *cobra.Command {
	var f vmmFlags
	cmd := &cobra.Command{
		Use:   "vmm",
		Short: "Run one subOS in the foreground (the per-subOS VMM process)",
		Long: `Run one subOS: an unmodified Linux kernel in a KVM VM whose vCPUs are
pinned one-to-one to the given host cores and whose RAM is pre-faulted
hugepage memory on their NUMA node. The exit status is the guest's: what it
wrote to the status port (0x501) before powering off, 0 for a plain
power-off or reboot, 1 for a crash, 2 for a configuration error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ctl *controlSocket
			if f.controlFD >= 0 {
				var err error
				if ctl, err = openControlSocket(f.controlFD); err != nil {
					return err
				}
				defer ctl.ln.Close()
			}
			if err := f.waitGo(); err != nil {
				return err
			}
			cfg, closeConsole, err := f.linuxConfig(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			defer closeConsole()
			if ctl != nil {
				rm, sm, err := ctl.attach()
				if err != nil {
					return err
				}
				defer rm.close()
				cfg.SharedMemory = sm
				ctx, cancel := context.WithCancel(cmd.Context())
				served := make(chan struct{})
				go func() { // ends with ctx
					defer close(served)
					ctl.serve(ctx, cfg.Logger, rm)
				}()
				defer func() { cancel(); <-served }()
			}
			e, err := vmm.BootLinux(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			return exitFor(cfg.Logger, e)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.name, "name", "subos", "subOS name (for logs)")
	fl.StringVar(&f.kernel, "kernel", "", "kernel: PVH ELF vmlinux or bzImage (required)")
	fl.StringVar(&f.initrd, "initrd", "", "initramfs")
	fl.StringVar(&f.cmdline, "cmdline", "", "kernel command line (default: "+vmm.DefaultCmdline()+")")
	fl.StringVar(&f.appendArgs, "append", "", "extra kernel command line arguments")
	fl.StringVar(&f.cpus, "cpus", "", "host cores, one vCPU each, e.g. 2-3 (required)")
	fl.StringVar(&f.memory, "memory", "512M", "guest RAM, e.g. 512M or 2G")
	fl.StringVar(&f.pageSize, "page-size", "2M", "backing page size: 2M, 1G or 4k")
	fl.StringArrayVar(&f.disks, "disk", nil, "raw disk image as virtio-blk, PATH[,ro]; repeatable")
	fl.StringVar(&f.console, "console", "stdio", "serial console: stdio, none, or a file path for the log")
	fl.StringVar(&f.consoleSocket, "console-socket", "", "also serve the console on this Unix socket (attach with rfm console)")
	fl.StringVar(&f.profile, "cpu-profile", "host", "CPUID profile: host or nested-safe")
	fl.IntVar(&f.readyFD, "ready-fd", -1, "write \"ready\" to this inherited file descriptor once the subOS runs")
	fl.IntVar(&f.waitFD, "wait-fd", -1, "before anything else, wait for a line \"go\" on this inherited file descriptor")
	fl.IntVar(&f.controlFD, "control-fd", -1, "inherited listening control socket of the supervisor (shared-memory regions arrive there before boot)")
	fl.BoolVar(&f.allowEmulated, "allow-emulated-kvm", false, "boot even where KVM emulates guest kernel code")
	fl.StringVar(&f.logLevel, "log-level", "warn", "VMM log level: debug, info, warn, error")
	return cmd
}

func (f *vmmFlags) linuxConfig(logOut io.Writer) (vmm.LinuxConfig, func(), error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return vmm.LinuxConfig{}, nil, fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: level})).With("subos", f.name)
	if f.kernel == "" {
		return vmm.LinuxConfig{}, nil, fmt.Errorf("--kernel is required")
	}
	cores, err := units.ParseCPUList(f.cpus)
	if err != nil {
		return vmm.LinuxConfig{}, nil, fmt.Errorf("--cpus: %w", err)
	}
	if len(cores) == 0 {
		return vmm.LinuxConfig{}, nil, fmt.Errorf("--cpus is required (host cores, e.g. 1-2)")
	}
	mem, err := units.ParseNonZeroSize(f.memory)
	if err != nil {
		return vmm.LinuxConfig{}, nil, fmt.Errorf("--memory: %w", err)
	}
	ps, err := ram.ParsePageSize(f.pageSize)
	if err != nil {
		return vmm.LinuxConfig{}, nil, fmt.Errorf("--page-size: %w", err)
	}
	profile := vmm.CPUProfile(f.profile)
	if profile != vmm.ProfileHost && profile != vmm.ProfileNestedSafe {
		return vmm.LinuxConfig{}, nil, fmt.Errorf("--cpu-profile %q: use host or nested-safe", f.profile)
	}
	cmdline := f.cmdline
	if cmdline == "" {
		cmdline = vmm.DefaultCmdline()
	}
	if f.appendArgs != "" {
		cmdline += " " + f.appendArgs
	}
	cfg := vmm.LinuxConfig{
		Config: vmm.Config{Name: f.name, MemSize: mem, PageSize: ps, HostCores: cores, Profile: profile, Logger: log},
		Kernel: f.kernel, Initrd: f.initrd, Cmdline: cmdline, AllowEmulatedKVM: f.allowEmulated,
		ConsoleSocket: f.consoleSocket,
	}
	for _, d := range f.disks {
		path, opt, _ := strings.Cut(d, ",")
		if opt != "" && opt != "ro" {
			return vmm.LinuxConfig{}, nil, fmt.Errorf("--disk %q: unknown option %q (only ro)", d, opt)
		}
		cfg.Disks = append(cfg.Disks, vmm.Disk{Path: path, ReadOnly: opt == "ro"})
	}
	if f.readyFD >= 0 {
		ready := os.NewFile(uintptr(f.readyFD), "ready")
		if ready == nil {
			return vmm.LinuxConfig{}, nil, fmt.Errorf("--ready-fd %d: not a file descriptor", f.readyFD)
		}
		cfg.Ready = func() {
			fmt.Fprintln(ready, "ready")
			ready.Close()
		}
	}
	closer := func() {}
	switch f.console {
	case "stdio":
		cfg.Console = os.Stdout
		if restore, ok := rawTerminal(os.Stdin); ok {
			cfg.ConsoleIn = os.Stdin
			closer = restore
		} else if !isTerminal(os.Stdin) {
			cfg.ConsoleIn = os.Stdin
		}
	case "none", "":
	default:
		lf, err := os.OpenFile(f.console, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return vmm.LinuxConfig{}, nil, fmt.Errorf("--console: %w", err)
		}
		cfg.Console = lf
		closer = func() { lf.Close() }
	}
	return cfg, closer, nil
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
		return exitError{e.Status}
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
