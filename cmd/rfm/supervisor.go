package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"rainforest/ficm/board"
	"rainforest/images"
	"rainforest/internal/buildinfo"
	"rainforest/internal/peercred"
	"rainforest/internal/units"
	"rainforest/internal/untrusted"
	"rainforest/partitioner"
	"rainforest/rfm/actuator"
	"rainforest/rfm/api"
	"rainforest/rfm/metrics"
	"rainforest/rfm/netdev"
	"rainforest/rfm/supervisor"
	"rainforest/vmm/config"
)

// globalFlags are shared by the client commands: --socket, and -o of
// those that print a result (addOutputFlag).
type globalFlags struct {
	socket string
	output outputFormat
}

func (g *globalFlags) client() *api.Client { return api.NewClient(g.socket) }

// supervisorFlags configure rfm serve and rfm run.
type supervisorFlags struct {
	stateDir, runDir, cgroupRoot, housekeeping string
	steerIRQs                                  bool
	group                                      string
	// access is who may use the API and the consoles (set by open).
	access            peercred.Policy
	noJail, noSeccomp bool
	vmmUID, vmmGID    int
}

func (f *supervisorFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.stateDir, "state-dir", "/var/lib/rainforest", "ledger database directory")
	cmd.Flags().StringVar(&f.runDir, "run-dir", "/run/rainforest", "directory for subOS logs and console sockets")
	cmd.Flags().StringVar(&f.cgroupRoot, "cgroup-root", "/sys/fs/cgroup", "cgroup filesystem root")
	cmd.Flags().StringVar(&f.housekeeping, "housekeeping", "", "host cores kept for the supervisor and the host (default: the first online core)")
	cmd.Flags().BoolVar(&f.steerIRQs, "steer-irqs", false, "keep host interrupts off subOS cores")
	cmd.Flags().StringVar(&f.group, "group", "rainforest", "group whose members may use the API and attach consoles besides root (none when it does not exist)")
	cmd.Flags().IntVar(&f.vmmUID, "vmm-uid", 0, "uid of the jailed VMMs (default: user "+supervisor.DefaultVMMUser+" if it exists, else "+strconv.Itoa(supervisor.DefaultVMMID)+")")
	cmd.Flags().IntVar(&f.vmmGID, "vmm-gid", 0, "gid of the jailed VMMs (default: as --vmm-uid)")
	cmd.Flags().BoolVar(&f.noJail, "no-jail", false, "debugging: run VMMs as root, unjailed (still given their files as descriptors)")
	cmd.Flags().BoolVar(&f.noSeccomp, "no-seccomp", false, "debugging: jailed VMMs run without their system-call filter")
}

// open discovers the machine and opens the supervisor.
func (f *supervisorFlags) open(log *slog.Logger) (*supervisor.Supervisor, error) {
	inv, err := partitioner.Discover(partitioner.Roots{})
	if err != nil {
		return nil, err
	}
	hk, err := units.ParseCPUList(f.housekeeping)
	if err != nil {
		return nil, fmt.Errorf("--housekeeping: %w", err)
	}
	act, err := actuator.New(actuator.Config{CgroupRoot: f.cgroupRoot})
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	if f.access, err = peercred.ServicePolicy(f.group); err != nil {
		return nil, fmt.Errorf("--group: %w", err)
	}
	if f.group != "" && f.access.Group == peercred.NoGroup {
		log.Warn("the API group does not exist: only root may use the API and the consoles", "group", f.group)
	}
	cfg := supervisor.Config{
		StateDir: f.stateDir, RunDir: f.runDir, Housekeeping: hk, Inventory: inv,
		Actuator: actuatorAdapter{act}, Launcher: supervisor.ExecLauncher{RFM: self}, Logger: log,
		Network: netdev.Host{}, Uplinks: supervisor.ExecUplink{RFM: self},
		Jail: supervisor.JailConfig{Disabled: f.noJail, NoSeccomp: f.noSeccomp, UID: f.vmmUID, GID: f.vmmGID},
	}
	if f.steerIRQs {
		cfg.SteerIRQs = act.SteerIRQs
	}
	if f.access.Group > 0 {
		cfg.SocketGroup = f.access.Group
	}
	return supervisor.New(cfg)
}

// actuatorAdapter gives *actuator.Actuator the supervisor's interface.
type actuatorAdapter struct{ a *actuator.Actuator }

func (a actuatorAdapter) CreateGroup(name string, cores, nodes []int) (supervisor.Group, error) {
	return a.a.CreateGroup(name, cores, nodes)
}
func (a actuatorAdapter) RemoveGroup(name string) error { return a.a.RemoveGroup(name) }

// OpenGroup finds a subOS's cgroup (supervisor.GroupOpener: shares
// hot-added to a running subOS).
func (a actuatorAdapter) OpenGroup(name string) (supervisor.Group, error) { return a.a.OpenGroup(name) }
func (a actuatorAdapter) SetCores(name string, cores []int) error {
	return a.a.SetCores(name, cores)
}
func (a actuatorAdapter) EnsureHugePages(node int, ps, pages uint64) (uint64, error) {
	return a.a.EnsureHugePages(node, ps, pages)
}
func (a actuatorAdapter) ReleaseHugePages(node int, ps, pages uint64) error {
	return a.a.ReleaseHugePages(node, ps, pages)
}
func (a actuatorAdapter) PoolSize(node int, ps uint64) (uint64, error) { return a.a.PoolSize(node, ps) }
func (a actuatorAdapter) Groups() ([]string, error)                    { return a.a.Groups() }
func (a actuatorAdapter) KillGroup(ctx context.Context, name string) ([]int, error) {
	return a.a.KillGroup(ctx, name)
}

func serveCommand(g *globalFlags) *cobra.Command {
	var f supervisorFlags
	var metricsAddr string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the supervisor daemon (API on a Unix socket)",
		Long: `Run the supervisor: it discovers the machine, keeps the resource ledger,
and serves the API on --socket to root and the members of --group (the
socket is 0660 root:GROUP, or 0600 when the group does not exist; others
are refused with 403). SubOSes keep running when it
stops or dies; a restarted supervisor re-adopts them.

With --metrics HOST:PORT it also serves Prometheus metrics at
http://HOST:PORT/metrics over TCP, to whoever reaches that address (no
authentication: bind it to 127.0.0.1 or a management network): the
ledger's cores and hugepages, the subOSes by state, audit events and VMM
exits, and each subOS's agent health and latest report. The README lists
the metric families.`,
		Example: `  rfm serve
  rfm serve --group wheel --steer-irqs
  rfm serve --metrics 127.0.0.1:9464        # curl http://127.0.0.1:9464/metrics
  RFM_SOCKET=/tmp/rfm.sock rfm serve --state-dir /tmp/rf --run-dir /tmp/rf/run`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if metricsAddr != "" {
				if err := metrics.CheckAddr(metricsAddr); err != nil {
					return usageErrorf("--metrics: %w", err)
				}
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			// The metrics address is taken before the supervisor
			// starts: one that is in use stops rfm serve at once.
			var metricsLn net.Listener
			if metricsAddr != "" {
				var err error
				if metricsLn, err = net.Listen("tcp", metricsAddr); err != nil {
					return fmt.Errorf("--metrics: %w", err)
				}
				defer metricsLn.Close()
			}
			s, err := f.open(log)
			if err != nil {
				return err
			}
			defer s.Close()
			if err := os.MkdirAll(filepath.Dir(g.socket), 0o700); err != nil {
				return err
			}
			ln, err := api.Listen(g.socket, f.access, log)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			if metricsLn != nil {
				done, err := serveMetrics(ctx, metricsLn, s, log)
				if err != nil {
					ln.Close()
					return err
				}
				defer func() { // before s.Close
					cancel()
					<-done
				}()
			}
			log.Info("serving", "socket", g.socket, "subos", len(s.List()))
			return api.Serve(ctx, ln, s)
		},
	}
	f.add(cmd)
	cmd.Flags().StringVar(&metricsAddr, "metrics", "", "serve Prometheus metrics at http://HOST:PORT/metrics, e.g. 127.0.0.1:9464 (default: none)")
	fixedValues(cmd, "metrics", "127.0.0.1:9464\tthis host only", ":9464\tevery address of this host")
	return cmd
}

// serveMetrics serves s's metrics on ln until ctx ends; done is closed
// when the server has stopped. A server that fails on its own is logged:
// the supervisor goes on without it.
func serveMetrics(ctx context.Context, ln net.Listener, s *supervisor.Supervisor, log *slog.Logger) (done <-chan struct{}, err error) {
	reg, err := metrics.NewRegistry(s, buildinfo.Read())
	if err != nil {
		return nil, err
	}
	h := metrics.Handler(reg, log)
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		if err := metrics.Serve(ctx, ln, h); err != nil {
			log.Error("metrics server stopped; the supervisor goes on without it", "err", err)
		}
	}()
	log.Info("serving metrics", "url", "http://"+ln.Addr().String()+metrics.Path)
	return ch, nil
}

func createCommand(g *globalFlags) *cobra.Command {
	var spec supervisor.Spec
	var memory, maxMemory, pageSize, cores, logSize, logRate, image string
	var disks, segments, nets, publish, shares, sshKeys []string
	var node int
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a subOS on cores and hugepage memory of its own",
		Long: `Create a subOS: the supervisor reserves its cores and hugepage memory,
applies them (cgroup, hugepage pool) and starts its VMM, which boots the
kernel. The subOS runs until rfm destroy; rfm ps lists it, rfm console
attaches to its console and rfm logs prints it. NAME is 1 to 32 of a-z, 0-9
and -, starting with a letter or digit.

What it gets:
  --cpus N           how many host cores (one vCPU each); the supervisor
                     picks them, whole cores before SMT siblings, never the
                     housekeeping cores nor another subOS's
  --cores LIST       exactly these host cores instead, e.g. 2-3 or 4,6
                     (rfm vmm's --cores is such a list too)
  --node N           NUMA node of its memory (default: the cores' node)
  --memory SIZE      guest RAM, a multiple of --page-size, e.g. 512M or 4G
  --page-size SIZE   hugepages backing that RAM: 2M or 1G
  --class CLASS      batch (default) or latency-critical: a latency-critical
                     subOS may take cores from batch ones (rfm autoscale)
What it boots (default: the image make image built, in $RF_IMAGES):
  --kernel PATH      PVH vmlinux or bzImage
  --initrd PATH      initramfs
  --append TEXT      extra kernel command line (the rf.* parameters of the
                     default image are in the README)
What it is given:
  --disk ` + config.DiskSyntax + `
                     a raw image or block device as virtio-blk; repeatable
  --segment NAME[,size=SIZE][,ro]
                     a shared segment (rfcom map finds it in the guest); the
                     first grant of a name must give its size; repeatable
  --share /host/dir:TAG[,ro][,root]
                     a host directory as virtio-fs, served by a virtiofsd in
                     the subOS's cgroup; the image mounts it at /mnt/TAG. ro:
                     read-only, enforced on the host; root: allow sharing /;
                     repeatable
  --net user[,...] | bridge=NAME[,...] | tap=NAME | loop=NAME[,members=A+B...]
                     a NIC: the rootless uplink (NAT, DHCP, DNS), a TAP in
                     a bridge, a TAP alone, or a loop network between
                     subOSes (RFloop, shared memory; its first member names
                     them all, each gets 10.99.0.2, .3, ... in that order);
                     repeatable
  --publish [ADDR:]HOSTPORT:GUESTPORT[/udp]
                     a guest port on the host through the uplink
  --ssh-key FILE     public keys (a .pub or authorized_keys file) root may
                     log in with, for images with sshd (rfm ssh); repeatable
  --device PCI       PCI passthrough: not supported yet, refused
Its console (rfm logs, rfm console):
  --console-log-size SIZE
                     cap of the console log, rotated in place when full
                     (default 1M, at least 16K)
  --console-rate SIZE
                     guest console output kept per second; the rest is
                     dropped and counted (default 64K)

Sizes take K, M and G suffixes (powers of 1024). The request is checked
whole first: every problem is listed and nothing is reserved.`,
		Example: `  rfm create web --cpus 2 --memory 1G
  rfm create db --cores 4-5 --memory 4G --page-size 1G --disk /var/lib/images/db.img,direct
  rfm create a --cpus 1 --segment shared,size=1M --append "rf.cat=/hello.txt"
  rfm create web --cpus 2 -o json
  rfm create api --cpus 2 --class latency-critical
  rfm create elastic --cpus 1 --max-cpus 3 --memory 512M --max-memory 1G
  rfm create web --cpus 1 --net bridge=br0
  rfm create web --cpus 1 --net bridge=br0,vhost=off
  rfm create lab --cpus 1 --net bridge=rfbr0,create,address=10.77.0.1/24
  rfm create router --cpus 1 --net tap=rf-router0
  rfm create a --cpus 1 --net loop=lan0,members=a+b
  rfm create b --cpus 1 --net loop=lan0
  rfm create web --cpus 1 --net user --publish 8080:80
  rfm create deb1 --cpus 1 --memory 1G --image debian --ssh-key ~/.ssh/id_ed25519.pub --publish 2222:22
  rfm create dev --cpus 1 --share /srv/src:src --share /srv/docs:docs,ro`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec.Name = args[0]
			var err error
			if spec.Memory, err = units.ParseNonZeroSize(memory); err != nil {
				return usageErrorf("--memory: %w", err)
			}
			if maxMemory != "" {
				if spec.MaxMemory, err = units.ParseNonZeroSize(maxMemory); err != nil {
					return usageErrorf("--max-memory: %w", err)
				}
			}
			if spec.PageSize, err = units.ParseNonZeroSize(pageSize); err != nil {
				return usageErrorf("--page-size: %w", err)
			}
			if spec.Cores, err = units.ParseCPUList(cores); err != nil {
				return usageErrorf("--cores: %w", err)
			}
			if node >= 0 {
				spec.Node = &node
			}
			if logSize != "" {
				if spec.ConsoleLogSize, err = units.ParseNonZeroSize(logSize); err != nil {
					return usageErrorf("--console-log-size: %w", err)
				}
			}
			if logRate != "" {
				if spec.ConsoleLogRate, err = units.ParseNonZeroSize(logRate); err != nil {
					return usageErrorf("--console-rate: %w", err)
				}
			}
			for _, d := range disks {
				disk, err := config.ParseDisk(d)
				if err != nil {
					return usageErrorf("--disk: %w", err)
				}
				disk.Path = abs(disk.Path)
				spec.Disks = append(spec.Disks, disk)
			}
			for _, v := range nets {
				nic, err := parseNIC(v)
				if err != nil {
					return err
				}
				spec.Nets = append(spec.Nets, nic)
			}
			if len(publish) > 0 {
				// On the first NIC on the uplink, made when there is none.
				i := slices.IndexFunc(spec.Nets, func(n supervisor.NIC) bool { return n.User })
				if i < 0 {
					spec.Nets = append(spec.Nets, supervisor.NIC{User: true})
					i = len(spec.Nets) - 1
				}
				spec.Nets[i].Publish = append(spec.Nets[i].Publish, publish...)
			}
			for _, v := range shares {
				s, err := parseShare(v)
				if err != nil {
					return err
				}
				spec.Shares = append(spec.Shares, s)
			}
			for _, sg := range segments {
				grant, err := parseSegment(sg)
				if err != nil {
					return err
				}
				spec.Segments = append(spec.Segments, grant)
			}
			for _, f := range sshKeys {
				b, err := os.ReadFile(f)
				if err != nil {
					return usageErrorf("--ssh-key: %w", err)
				}
				keys, err := supervisor.ParseSSHKeys(string(b))
				if err != nil {
					return usageErrorf("--ssh-key %s: %w", f, err)
				}
				spec.SSHKeys = append(spec.SSHKeys, keys...)
			}
			spec.Kernel, spec.Initrd = abs(spec.Kernel), abs(spec.Initrd)
			switch image {
			case "", "initramfs":
			case "debian":
				spec.Image = filepath.Join(defaultImagesDir(), images.DebianDiskName)
			default:
				spec.Image = abs(image)
			}
			info, err := g.client().Create(cmd.Context(), spec)
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), infoJSON(info), func(w io.Writer) { psTable(w, []supervisor.Info{info}) })
		},
	}
	g.addOutputFlag(cmd, "")
	img := defaultImagesDir()
	fl := cmd.Flags()
	fl.IntVar(&spec.CPUs, "cpus", 1, "how many host cores (a count; the supervisor picks them)")
	fl.StringVar(&cores, "cores", "", "exactly these host cores, a list such as 2-3 (overrides --cpus)")
	fl.IntVar(&spec.MaxCPUs, "max-cpus", 0, "the most cores rfm resize can grow it to (default: every core of its node but the host's)")
	fl.StringVar((*string)(&spec.Class), "class", "", "batch (default) or latency-critical")
	fl.IntVar(&node, "node", -1, "NUMA node for memory (default: the cores' node)")
	fl.StringVar(&memory, "memory", "512M", "guest RAM")
	fl.StringVar(&maxMemory, "max-memory", "", "the most memory rfm resize can grow it to, e.g. 1G (default: --memory, fixed)")
	fl.StringVar(&pageSize, "page-size", "2M", "hugepage size: 2M or 1G")
	fl.StringVar(&spec.Kernel, "kernel", filepath.Join(img, "vmlinux"), "kernel")
	fl.StringVar(&spec.Initrd, "initrd", filepath.Join(img, "initramfs.cpio.gz"), "initramfs")
	fl.StringVar(&spec.CmdlineAppend, "append", "", "extra kernel command line")
	fl.StringVar(&image, "image", "", "boot a system image: debian (rfimage --image debian), or a raw root disk's path; the subOS gets a copy of its own (default: the initramfs alone)")
	fl.StringArrayVar(&disks, "disk", nil, "raw image or block device "+config.DiskSyntax+"; repeatable")
	fl.StringArrayVar(&spec.Devices, "device", nil, "PCI device to pass through (not supported yet: refused)")
	fl.StringArrayVar(&segments, "segment", nil, "shared segment NAME[,size=SIZE][,ro] (size creates it); repeatable")
	fl.StringArrayVar(&nets, "net", nil, "network interface "+nicSyntax+"; repeatable")
	fl.StringArrayVarP(&publish, "publish", "p", nil, "publish a guest port on the host through the uplink, [ADDR:]HOSTPORT:GUESTPORT[/udp] (adds a --net user NIC when there is none); repeatable")
	fl.StringArrayVar(&shares, "share", nil, shareFlagHelp)
	fl.StringArrayVar(&sshKeys, "ssh-key", nil, "public key file (.pub or authorized_keys) root may log in with over SSH; repeatable")
	fl.StringVar(&logSize, "console-log-size", "", "cap of the console log, e.g. 256K (default 1M)")
	fl.StringVar(&logRate, "console-rate", "", "console output kept per second, e.g. 16K (default 64K)")
	fixedValues(cmd, "page-size", "2M\t2 MiB hugepages", "1G\t1 GiB hugepages")
	fixedValues(cmd, "class", "batch\tmay lend its cores (the default)", "latency-critical\tmay take cores from batch subOSes")
	return cmd
}

// nicSyntax is --net's syntax.
const nicSyntax = "user[,publish=[ADDR:]HOSTPORT:GUESTPORT[/udp]]...[,host-loopback] or bridge=NAME[,create][,address=CIDR][,tap=NAME] or tap=NAME, each with [,mac=MAC][,id=ID]; a TAP NIC with [,vhost=auto|on|off][,ip=CIDR]; or loop=NAME[,members=A+B...][,subnet=CIDR][,id=ID]"

// parseNIC parses --net: a TAP in a bridge (made when create is given,
// with the host's address on it), or a TAP on its own.
func parseNIC(v string) (supervisor.NIC, error) {
	var n supervisor.NIC
	for _, p := range strings.Split(v, ",") {
		k, val, hasVal := strings.Cut(p, "=")
		switch {
		case k == "bridge" && hasVal && val != "":
			n.Bridge = val
		case k == "tap" && hasVal && val != "":
			n.TAP = val
		case k == "mac" && hasVal:
			n.MAC = val
		case k == "id" && hasVal:
			n.ID = val
		case k == "address" && hasVal:
			n.BridgeAddress = val
		case p == "create":
			n.CreateBridge = true
		case p == "user":
			n.User = true
		case k == "publish" && hasVal:
			n.Publish = append(n.Publish, val)
		case p == "host-loopback":
			n.HostLoopback = true
		case k == "loop" && hasVal && val != "":
			n.Loop = val
		case k == "members" && hasVal && val != "":
			n.LoopMembers = strings.Split(val, "+")
		case k == "subnet" && hasVal && val != "":
			n.LoopSubnet = val
		case k == "ip" && hasVal && val != "":
			n.IP = val
		case k == "vhost" && (val == supervisor.VhostAuto || val == supervisor.VhostOn || val == supervisor.VhostOff):
			n.Vhost = val
		default:
			return n, usageErrorf("--net %q: unknown or empty option %q (%s)", v, p, nicSyntax)
		}
	}
	if n.Bridge == "" && n.TAP == "" && !n.User && n.Loop == "" {
		return n, usageErrorf("--net %q: give user, bridge=NAME, tap=NAME or loop=NAME (%s)", v, nicSyntax)
	}
	if n.Loop == "" && (len(n.LoopMembers) > 0 || n.LoopSubnet != "") {
		return n, usageErrorf("--net %q: members and subnet are for a loop network (loop=NAME)", v)
	}
	if n.Bridge == "" && (n.CreateBridge || n.BridgeAddress != "") {
		return n, usageErrorf("--net %q: create and address are for a bridge", v)
	}
	if n.User && n.Vhost != "" {
		return n, usageErrorf("--net %q: vhost is for a NIC on a TAP", v)
	}
	if n.IP != "" && (n.User || n.Loop != "") {
		return n, usageErrorf("--net %q: ip is for a NIC on a TAP", v)
	}
	if a, err := netip.ParsePrefix(n.IP); n.IP != "" && (err != nil || !a.Addr().Is4()) {
		return n, usageErrorf("--net %q: ip %q: want an IPv4 address with its prefix length, such as 10.77.0.2/24", v, n.IP)
	}
	return n, nil
}

// nicsTable lists a running subOS's NICs on TAPs and who moves their
// frames (rfm inspect -o table): vhost "on" is the host kernel's
// vhost-net; nothing without such NICs.
func nicsTable(w io.Writer, i supervisor.Info) {
	if len(i.Nets) == 0 {
		return
	}
	fmt.Fprintln(w, "\nNIC\tTAP\tVHOST")
	for _, n := range i.Nets {
		fmt.Fprintf(w, "%s\t%s\t%s\n", n.ID, n.TAP, n.Vhost)
	}
}

// parseSegment parses --segment NAME[,size=SIZE][,ro].
func parseSegment(v string) (supervisor.SegmentGrant, error) {
	parts := strings.Split(v, ",")
	g := supervisor.SegmentGrant{Name: parts[0]}
	for _, p := range parts[1:] {
		switch k, val, _ := strings.Cut(p, "="); {
		case p == "ro":
			g.ReadOnly = true
		case k == "size":
			n, err := units.ParseNonZeroSize(val)
			if err != nil {
				return g, usageErrorf("--segment %q: %w", v, err)
			}
			g.Size = n
		default:
			return g, usageErrorf("--segment %q: unknown option %q (size=SIZE or ro)", v, p)
		}
	}
	return g, nil
}

func messageCommand(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "message NAME TEXT...",
		Short: "Send a control message to a subOS over FICM (read there with rfcom control)",
		Example: `  rfm message web reload config
  rfm message db "flush now"`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.client().Message(cmd.Context(), args[0], strings.Join(args[1:], " "))
		},
	}
}

func boardCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "board",
		Short: "Show the published board: each subOS's FICM peer id and cores",
		Example: `  rfm board
  rfm board -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			bd, err := g.client().Board(cmd.Context())
			if err != nil {
				return err
			}
			bd.Entries = nonNil(bd.Entries)
			for i := range bd.Entries {
				bd.Entries[i].CommCores = nonNil(bd.Entries[i].CommCores)
			}
			return g.print(cmd.OutOrStdout(), bd, func(w io.Writer) {
				fmt.Fprintln(w, "PEER\tNAME\tSTATE\tCORES")
				fmt.Fprintf(w, "%d\t(supervisor)\t\t\n", bd.Supervisor)
				for _, e := range bd.Entries {
					st := "running"
					if e.State == board.StateStopping {
						st = "stopping"
					}
					fmt.Fprintf(w, "%d\t%s\t%s\t%s\n", e.Peer, e.Name, st, units.FormatCPUList(e.CommCores))
				}
			})
		},
	}
	g.addOutputFlag(cmd, "")
	return cmd
}

func abs(p string) string {
	if p == "" {
		return ""
	}
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

func destroyCommand(g *globalFlags) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "destroy NAME... | --all",
		Short: "Destroy subOSes and free their resources",
		Long: `Destroy subOSes: stop their VMMs and free their cores, memory, disks and
segment grants. Each destroyed subOS's name is printed as it goes. With
several names, every one is tried; the exit status is that of a failure
(3 for a name that does not exist). --all destroys every subOS and exits 1
if any could not be destroyed.`,
		Example: `  rfm destroy web
  rfm destroy web db
  rfm destroy --all`,
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case all && len(args) > 0:
				return fmt.Errorf("--all destroys every subOS: give no names with it")
			case !all && len(args) == 0:
				return fmt.Errorf("name the subOSes to destroy, or give --all")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			c := g.client()
			if all {
				list, err := c.List(cmd.Context())
				if err != nil {
					return err
				}
				for _, i := range list {
					args = append(args, i.Name)
				}
				if len(args) == 0 {
					fmt.Fprintln(cmd.ErrOrStderr(), "rfm: no subOS to destroy")
				}
			}
			var fails []error
			for _, n := range args {
				err := c.Destroy(cmd.Context(), n)
				switch {
				case err == nil:
					fmt.Fprintf(cmd.OutOrStdout(), "destroyed %s\n", n)
				case all && errors.Is(err, api.ErrNotFound):
					fmt.Fprintf(cmd.OutOrStdout(), "%s: already gone\n", n)
				default:
					fails = append(fails, fmt.Errorf("destroy %s: %w", n, err))
				}
			}
			switch {
			case len(fails) == 0:
				return nil
			case all:
				return exitError{code: exitFailed, err: fmt.Errorf("%d of %d subOSes not destroyed:\n%w", len(fails), len(args), errors.Join(fails...))}
			}
			return errors.Join(fails...)
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "destroy every subOS")
	return cmd
}

// infoJSON is info with its empty lists shown as [] in JSON.
func infoJSON(i supervisor.Info) supervisor.Info {
	i.Allocation.Cores = nonNil(i.Allocation.Cores)
	i.Allocation.Devices = nonNil(i.Allocation.Devices)
	return i
}

func psTable(w io.Writer, list []supervisor.Info) {
	fmt.Fprintln(w, "NAME\tSTATE\tPID\tCORES\tLOANS\tNODE\tMEMORY\tPAGES\tPEER\tDEVICES\tAGENT\tCREATED")
	for _, i := range list {
		a := i.Allocation
		agent := "-"
		if i.Agent != nil {
			agent = string(i.Agent.State)
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%d\t%dM\t%d x %s\t%d\t%s\t%s\t%s\n", i.Name, i.State, i.PID, units.FormatCPUList(a.Cores), loanSummary(a), a.Node,
			a.Memory>>20, a.Pages, pageSizeLabel(a.PageSize), i.Peer, strings.Join(a.Devices, ","), agent, i.Created.Local().Format(time.DateTime))
	}
}

func pageSizeLabel(ps uint64) string {
	if ps == 1<<30 {
		return "1G"
	}
	return "2M"
}

func psCommand(g *globalFlags) *cobra.Command {
	var quiet bool
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List subOSes with their cores and memory",
		Example: `  rfm ps
  rfm ps -q                     # names only, one a line
  rfm ps -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			list, err := g.client().List(cmd.Context())
			if err != nil {
				return err
			}
			if quiet {
				for _, i := range list {
					fmt.Fprintln(cmd.OutOrStdout(), i.Name)
				}
				return nil
			}
			out := make([]supervisor.Info, 0, len(list))
			for _, i := range list {
				out = append(out, infoJSON(i))
			}
			return g.print(cmd.OutOrStdout(), out, func(w io.Writer) { psTable(w, list) })
		},
	}
	g.addOutputFlag(cmd, "")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print the names only, one a line (overrides -o)")
	return cmd
}

func inspectCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "inspect NAME",
		Short: "Show everything about a subOS (JSON unless -o table)",
		Example: `  rfm inspect web
  rfm inspect web -o table`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			info, err := g.client().Get(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if g.output == "" {
				g.output = outputJSON
			}
			return g.print(cmd.OutOrStdout(), infoJSON(info), func(w io.Writer) {
				psTable(w, []supervisor.Info{info})
				nicsTable(w, info)
				sharesTable(w, info)
			})
		},
	}
	g.addOutputFlag(cmd, " (default json)")
	return cmd
}

func logsCommand(g *globalFlags) *cobra.Command {
	var tail uint64
	var raw, follow bool
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Print the end of a subOS's console and VMM log",
		Long: `Print the end of a subOS's console and VMM log: the last --tail bytes.
With -f, keep printing the log as it grows, until the subOS ends or Ctrl-C.

The text is the guest's. Printed to a terminal, control characters, escape
sequences, invalid UTF-8 and invisible characters are shown escaped (\x1b,
\u202e) so that the guest cannot drive the terminal; --raw prints them as
they are. Piped or redirected, the bytes are written as they are.`,
		Example: `  rfm logs web
  rfm logs web --tail 4096
  rfm logs web -f --tail 0
  rfm logs web > web.log`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if follow {
				return followLog(cmd, g, args[0], tail, !raw && writesToTerminal(cmd.OutOrStdout()))
			}
			var b bytes.Buffer
			if err := g.client().LogTail(cmd.Context(), args[0], tail, &b); err != nil {
				return err
			}
			_, err := cmd.OutOrStdout().Write(logOutput(b.Bytes(), !raw && writesToTerminal(cmd.OutOrStdout())))
			return err
		},
	}
	cmd.Flags().Uint64Var(&tail, "tail", api.DefaultLogTail, fmt.Sprintf("bytes from the end of the log (at most %d)", api.MaxLogTail))
	cmd.Flags().BoolVar(&raw, "raw", false, "print control characters unescaped, also to a terminal")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing the log as it grows, until the subOS ends or Ctrl-C")
	return cmd
}

// logOutput is guest log text as printed: escaped for a terminal
// (untrusted.EscapeTerminal), as is otherwise.
func logOutput(b []byte, terminal bool) []byte {
	if terminal {
		return untrusted.EscapeTerminal(b)
	}
	return b
}

// tableCell makes text one table cell: escaped for a terminal, with line
// ends and tabs shown as escapes (audit details recorded before guest text
// was quoted at the source may hold them).
func tableCell(s string) string {
	return strings.NewReplacer("\n", `\n`, "\r", `\r`, "\t", `\t`).Replace(string(untrusted.EscapeTerminal([]byte(s))))
}

// writesToTerminal says whether w is a terminal.
func writesToTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && isTerminal(f)
}

func eventsCommand(g *globalFlags) *cobra.Command {
	var since string
	var limit int
	var follow bool
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Print the audit log of every adjustment",
		Example: `  rfm events
  rfm events --since 120 --limit 20
  rfm events --since 10m
  rfm events --follow -o json`,
		Long: `Print the audit log of every adjustment, oldest first. With --follow, keep
printing new events as they are recorded, until Ctrl-C (only new ones,
unless --since says from where); -o json then prints one JSON object a
line.

--since takes a sequence number (events after it), a time (RFC 3339, e.g.
2026-01-02T15:04:05Z) or a duration back from now (e.g. 10m, 2h).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q, err := parseSince(since, time.Now())
			if err != nil {
				return err
			}
			q.Limit = limit
			if follow {
				return followEvents(cmd, g, q)
			}
			ev, err := g.client().EventsMatching(cmd.Context(), q)
			if err != nil {
				return err
			}
			ev = nonNil(ev)
			return g.print(cmd.OutOrStdout(), ev, func(w io.Writer) {
				fmt.Fprintln(w, "SEQ\tTIME\tWHO\tWHAT\tNAME\tTOOK\tDETAIL")
				for _, e := range ev {
					fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.Time.Local().Format(time.DateTime), e.Who, e.What, e.Name, e.Duration.Round(time.Microsecond), tableCell(e.Detail))
				}
			})
		},
	}
	cmd.Flags().StringVar(&since, "since", "", "only events after this sequence number, or from this time (RFC 3339) or this long ago (10m)")
	cmd.Flags().IntVar(&limit, "limit", 1000, "at most this many events (without --follow)")
	cmd.Flags().BoolVar(&follow, "follow", false, "keep printing new events as they are recorded, until Ctrl-C")
	g.addOutputFlag(cmd, "")
	return cmd
}
