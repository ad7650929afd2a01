package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"rainforest/images"
	"rainforest/internal/kvmhost"
	"rainforest/internal/shquote"
	"rainforest/internal/units"
	"rainforest/internal/untrusted"
	"rainforest/partitioner"
	"rainforest/rfm/api"
	"rainforest/rfm/layout"
	"rainforest/rfm/supervisor"
)

// defaultImagesDir is where `make image` puts the default subOS image.
func defaultImagesDir() string {
	if d := os.Getenv("RF_IMAGES"); d != "" {
		return d
	}
	return images.DefaultOutDir
}

func runCommand(g *globalFlags) *cobra.Command {
	var f supervisorFlags
	var imagesDir, nestedMode, appendArgs string
	cmd := &cobra.Command{
		Use:   "run [LAYOUT.yaml]",
		Short: "Run the supervisor in the foreground with a layout's subOSes and their consoles",
		Long: `Run the supervisor in the foreground, create the layout's subOSes (with no
file: the built-in default layout, two subOSes splitting the cores the host
can spare and booting the default image) and show their consoles, each line
prefixed with the subOS's name. Ctrl-C destroys them all; rfm run also ends
once every subOS has ended on its own. While it runs, the API is served on
--socket, so rfm ps and friends work from another terminal.

Where this host's KVM cannot run Linux natively, the whole run happens inside
the nested layer (a QEMU guest with an emulated AMD-V CPU).`,
		Example: `  rfm run                                  # the default layout and image
  rfm run layout.yaml
  rfm run --append "rf.cat=/hello.txt rf.poweroff=1"
  RF_IMAGES=/srv/images rfm run --nested never layout.yaml`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if need, why := kvmhost.Choose(nestedMode); need {
				fmt.Fprintf(cmd.ErrOrStderr(), "rfm: %s; running the layout inside the nested QEMU layer (slow: a minute or two)\n", why)
				img, err := images.Build(ctx, images.Options{OutDir: imagesDir, Log: cmd.ErrOrStderr()})
				if err != nil {
					return fmt.Errorf("default image: %w", err)
				}
				return runNested(ctx, img, args, appendArgs, cmd.OutOrStdout())
			}
			return runLayout(ctx, g, &f, imagesDir, args, appendArgs, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f.add(cmd)
	cmd.Flags().StringVar(&imagesDir, "images", defaultImagesDir(), "directory of the default subOS image (built by make image)")
	cmd.Flags().StringVar(&nestedMode, "nested", "auto", "run inside the nested QEMU layer: auto, always or never")
	cmd.Flags().StringVar(&appendArgs, "append", "", "extra kernel command line for every subOS")
	fixedValues(cmd, "nested", "auto", kvmhost.NestedAlways, kvmhost.NestedNever)
	return cmd
}

// loadLayout reads the layout file, or builds the default one.
func loadLayout(inv *partitioner.Inventory, imagesDir string, args []string) (*layout.Layout, error) {
	if len(args) == 0 {
		dir, err := filepath.Abs(imagesDir)
		if err != nil {
			return nil, err
		}
		return layout.Default(inv, dir), nil
	}
	f, err := os.Open(args[0])
	if err != nil {
		return nil, err
	}
	defer f.Close()
	l, err := layout.Parse(f, layout.DefaultMaxBytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", args[0], err)
	}
	l.ResolvePaths(filepath.Dir(args[0]))
	return l, nil
}

// runLayout is rfm run on a host whose KVM runs Linux natively.
func runLayout(ctx context.Context, g *globalFlags, f *supervisorFlags, imagesDir string, args []string, appendArgs string, out, errOut io.Writer) error {
	log := slog.New(slog.NewTextHandler(errOut, &slog.HandlerOptions{Level: slog.LevelWarn}))
	inv, err := partitioner.Discover(partitioner.Roots{})
	if err != nil {
		return err
	}
	l, err := loadLayout(inv, imagesDir, args)
	if err != nil {
		return err
	}
	if f.housekeeping == "" && len(l.Supervisor.Cores) > 0 {
		f.housekeeping = units.FormatCPUList(l.Supervisor.Cores)
	}
	sup, err := f.open(log)
	if err != nil {
		return err
	}
	defer sup.Close()
	scratch, err := layout.Scratch(inv, sup.Ledger())
	if err != nil {
		return err
	}
	if probs := l.Check(inv, supervisor.Admission{Ledger: scratch}); len(probs) > 0 {
		return problemsError(probs)
	}
	if err := os.MkdirAll(filepath.Dir(g.socket), 0o700); err != nil {
		return err
	}
	ln, err := api.Listen(g.socket, f.access, log)
	if err != nil {
		return err
	}
	serveCtx, stopServe := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- api.Serve(serveCtx, ln, sup) }()
	defer func() { stopServe(); <-served }()

	// The audit log names this command as the actor; destroying uses a
	// context that Ctrl-C has not cancelled.
	who := fmt.Sprintf("rfm run (uid %d pid %d)", os.Getuid(), os.Getpid())
	ctx = supervisor.WithActor(ctx, who)
	var created []string
	destroyAll := func() {
		for i := len(created) - 1; i >= 0; i-- {
			if err := sup.Destroy(supervisor.WithActor(context.Background(), who), created[i]); err != nil && !errors.Is(err, supervisor.ErrNotFound) {
				fmt.Fprintf(errOut, "rfm: destroy %s: %v\n", created[i], err)
			}
		}
	}
	tails := &consoleTails{out: out, escape: writesToTerminal(out)}
	defer tails.stop()
	sizes := l.SegmentSizes()
	for _, so := range l.SubOSes {
		spec, err := specFromLayout(so, appendArgs, sizes)
		if err != nil {
			destroyAll()
			return err
		}
		info, err := sup.Create(ctx, spec)
		if err != nil {
			destroyAll()
			return err // names the subOS already
		}
		created = append(created, so.Name)
		fmt.Fprintf(errOut, "rfm: %s running on cores %s, %d MiB on node %d (pid %d)\n", so.Name, units.FormatCPUList(info.Allocation.Cores), info.Allocation.Memory>>20, info.Allocation.Node, info.PID)
		tails.follow(so.Name, info.Log)
	}
	// Wait for Ctrl-C or for every subOS to end on its own.
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(errOut, "\nrfm: stopping every subOS")
			destroyAll()
			return nil
		case <-tick.C:
			if len(sup.List()) == 0 {
				time.Sleep(300 * time.Millisecond) // let the tails print the last lines
				return nil
			}
		}
	}
}

// specFromLayout converts a layout's subOS; sizes gives every segment's size
// (any grant may be the first to reach the supervisor).
func specFromLayout(so layout.SubOS, appendArgs string, sizes map[string]uint64) (supervisor.Spec, error) {
	spec := supervisor.Spec{Name: so.Name, CPUs: so.CPUs, Cores: so.Cores, MaxCPUs: so.MaxCPUs, Memory: so.Memory, MaxMemory: so.MaxMemory, PageSize: so.PageSize,
		Kernel: so.Kernel, Initrd: so.Initrd, CmdlineAppend: strings.TrimSpace(so.CmdlineAppend + " " + appendArgs), Devices: so.Devices}
	spec.Class = so.Class
	for _, n := range so.Nets {
		spec.Nets = append(spec.Nets, supervisor.NIC{ID: n.ID, Bridge: n.Bridge, CreateBridge: n.CreateBridge, BridgeAddress: n.BridgeAddress, TAP: n.TAP, MAC: n.MAC,
			User: n.User, Publish: n.Publish, HostLoopback: n.HostLoopback, Vhost: n.Vhost, IP: n.IP, Loop: n.Loop, LoopMembers: n.LoopMembers, LoopSubnet: n.LoopSubnet})
	}
	if a := so.Autoscale; a != nil {
		spec.Autoscale = &supervisor.AutoscaleSpec{Lower: supervisor.Duration(a.Lower), Upper: supervisor.Duration(a.Upper),
			Window: supervisor.Duration(a.Window), Cooldown: supervisor.Duration(a.Cooldown), MinCPUs: a.MinCPUs, MaxCPUs: a.MaxCPUs}
	}
	if so.Node >= 0 {
		n := so.Node
		spec.Node = &n
	}
	for _, d := range so.Disks {
		spec.Disks = append(spec.Disks, d)
	}
	for _, g := range so.Segments {
		spec.Segments = append(spec.Segments, supervisor.SegmentGrant{Name: g.Name, Size: sizes[g.Name], ReadOnly: g.ReadOnly})
	}
	spec.Shares = append(spec.Shares, so.Shares...)
	for _, f := range so.SSHKeys {
		b, err := os.ReadFile(f)
		if err != nil {
			return spec, fmt.Errorf("subos %s: ssh_keys: %w", so.Name, err)
		}
		keys, err := supervisor.ParseSSHKeys(string(b))
		if err != nil {
			return spec, fmt.Errorf("subos %s: ssh_keys: %s: %w", so.Name, f, err)
		}
		spec.SSHKeys = append(spec.SSHKeys, keys...)
	}
	return spec, nil
}

func problemsError(probs []layout.Problem) error {
	var b strings.Builder
	fmt.Fprintf(&b, "layout has %d problem(s):", len(probs))
	for _, p := range probs {
		b.WriteString("\n  " + p.Error())
	}
	return errors.New(b.String())
}

// consoleTails prints subOS console logs as they grow, each line prefixed
// with the subOS's name; escaped (untrusted.EscapeTerminal) when escape is
// set, for a terminal.
type consoleTails struct {
	out    io.Writer
	escape bool
	mu     sync.Mutex // serializes lines from several subOSes
	wg     sync.WaitGroup
	done   chan struct{}
	once   sync.Once
}

func (t *consoleTails) follow(name, path string) {
	t.once.Do(func() { t.done = make(chan struct{}) })
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		var f *os.File
		for f == nil {
			var err error
			if f, err = os.Open(path); err != nil {
				select {
				case <-t.done:
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
		}
		defer f.Close()
		r := bufio.NewReader(f)
		var partial string
		for {
			line, err := r.ReadString('\n')
			partial += line
			if err == nil {
				if t.escape {
					partial = string(untrusted.EscapeTerminal([]byte(partial)))
				}
				t.mu.Lock()
				fmt.Fprintf(t.out, "%-8s| %s", name, partial)
				t.mu.Unlock()
				partial = ""
				continue
			}
			// At the end: a log that rotated (vmm/consolelog truncates it
			// in place) is shorter than where we are; start over.
			if pos, err := f.Seek(0, io.SeekCurrent); err == nil {
				if fi, err := f.Stat(); err == nil && fi.Size() < pos {
					f.Seek(0, io.SeekStart)
					r.Reset(f)
					partial = ""
				}
			}
			select {
			case <-t.done:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
}

func (t *consoleTails) stop() {
	t.once.Do(func() { t.done = make(chan struct{}) })
	close(t.done)
	t.wg.Wait()
}

// runNested runs rfm run inside the nested layer, with this rfm binary and
// the image copied in; the nested rfm run's output lines go to out as
// they arrive.
func runNested(ctx context.Context, img *images.Image, args []string, appendArgs string, out io.Writer) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	files := []kvmhost.File{
		{Host: self, L1: "/bin/rfm"},
		{Host: filepath.Dir(img.Kernel), L1: "/l2", Names: []string{"vmlinux", "initramfs.cpio.gz", "disk.img", "bzImage"}},
	}
	layoutArg := ""
	if len(args) == 1 {
		files = append(files, kvmhost.File{Host: args[0], L1: "/l2/layout.yaml"})
		layoutArg = "/l2/layout.yaml"
	}
	// The nested run is not interactive: the subOSes power off after /init.
	appendArgs = strings.TrimSpace("rf.poweroff=1 rf.cat=/hello.txt " + appendArgs)
	script := "grep -q ' /sys/fs/cgroup ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup\n" +
		shquote.Join([]string{"/bin/rfm", "run", "--images", "/l2", "--nested", kvmhost.NestedNever, "--append", appendArgs}) + " " + layoutArg + "\n"
	h := &kvmhost.Host{Nested: true, L1: img}
	res, err := h.Run(ctx, kvmhost.Script{
		Text: script, Files: files, CPUs: 3, MemoryMiB: 3072, HugePages: 600, Timeout: 15 * time.Minute,
		Lines: func(line string) { fmt.Fprintln(out, line) },
	})
	if err != nil {
		return err
	}
	if res.ExitStatus != 0 {
		return exitError{code: res.ExitStatus}
	}
	return nil
}
