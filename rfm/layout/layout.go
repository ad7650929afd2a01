// Package layout reads a layout file, the YAML that says which subOSes the
// supervisor runs and with what resources (cores, hugepage memory, disks,
// PCI devices, kernel and initrd), and checks a layout against the machine's
// inventory and the ledger (`rfm check`), listing every problem it finds
// rather than stopping at the first. It also builds the built-in default
// layout for a machine.
//
// A layout file looks like this:
//
//	supervisor:
//	  cores: [0]           # housekeeping cores (default: first online core)
//	defaults:
//	  kernel: build/images/vmlinux
//	  initrd: build/images/initramfs.cpio.gz
//	  page_size: 2M
//	subos:
//	  - name: web
//	    cpus: 2            # or cores: [2,3] for explicit placement
//	    max_cpus: 4        # the most rfm resize can grow it to (default:
//	                       # every core of its node but the host's)
//	    memory: 512M
//	    max_memory: 1G     # the most rfm resize --memory can grow it to:
//	                       # memory plus a multiple of 2 MiB (default:
//	                       # memory, fixed)
//	    node: 0            # optional
//	    disks: [{path: build/images/disk.img, readonly: true}]
//	    # a disk may be rate limited: iops (requests/s) and bandwidth
//	    # (bytes/s, a size), each with an optional iops_burst or
//	    # bandwidth_burst (one second's worth by default):
//	    # disks: [{path: data.img, iops: 1000, bandwidth: 100M}]
//	    # host directories as virtio-fs, mounted by the default image at
//	    # /mnt/<tag>; readonly is enforced on the host, sharing / needs
//	    # allow_root: true
//	    shares: [{path: /srv/data, tag: data}, {path: /srv/docs, tag: docs, readonly: true}]
//	    devices: ["0000:00:1f.2"] # refused until PCI passthrough exists
//	    cmdline_append: "rf.cat=/hello.txt"
//	    ssh_keys: [~/.ssh/id_ed25519.pub]  # public key files root may log in
//	                       # with (images with sshd; relative to this file)
//	    nets:              # NICs: virtio-net on a TAP the supervisor makes
//	      - network: lan   # a network below; or bridge: br0 (the user's),
//	                       # or tap: rf-web0 alone; mac: and id: optional;
//	                       # vhost: auto (default), on or off (in-kernel
//	                       # vhost-net data path)
//	      - user: true     # or the rootless uplink (NAT, DHCP, DNS)
//	      - network: backplane  # or a loop network below
//	    ports: ["8080:80"] # guest ports published through the uplink
//	    loop: true         # a NIC on the loop network "loop" of every
//	                       # subOS that says so (RFloop, 10.99.0.0/24)
//	  - name: api
//	    cpus: 2
//	    memory: 512M
//	    class: latency-critical  # or batch (the default): a latency-
//	                             # critical subOS may take batch cores
//	    autoscale:         # only for a latency-critical subOS: while its
//	      lower: 5ms       # p99 (reported in the guest: rf-agent latency)
//	      upper: 20ms      # stays above upper, a core comes from a batch
//	      window: 10s      # subOS; below lower, one goes back. window
//	      cooldown: 10s    # (10s), cooldown (the window), min_cpus (1)
//	      min_cpus: 2      # and max_cpus (its max_cpus) are optional;
//	      max_cpus: 4      # lower < upper
//	networks:
//	  - name: lan          # a bridge (bridge: NAME, default the name)
//	    create: true       # made by the supervisor, removed with its last
//	    address: 10.77.0.1/24   # subOS; the host's address on it
//	  - name: backplane    # a loop network (RFloop): subOS to subOS through
//	    loop: true         # shared memory; its members are the subOSes
//	    subnet: 10.98.0.0/24    # with a NIC on it (two at least), member
//	                       # k at address k+2, held to it
//
// Sizes and cpulist strings follow internal/units: whole numbers of bytes
// with an optional unit K, M, G or T, optionally followed by B or iB, all
// powers of 1024 ("512M", "512MiB" and "512MB" are the same), and the
// kernel's cpulist form ("2-5,8"). Relative paths are relative to the supervisor's working
// directory unless ResolvePaths rebases them.
package layout

import (
	"rainforest/vmm/config"

	"fmt"
	"path/filepath"
	"time"

	"rainforest/ledger"
	"rainforest/rfm/autoscale"
	"rainforest/rfm/share"
)

// DefaultMaxBytes is the size limit Parse applies when given maxBytes <= 0.
const DefaultMaxBytes = 1 << 20

// Hugepage sizes a subOS's memory can be backed by.
const (
	PageSize2M = ledger.PageSize2M
	PageSize1G = ledger.PageSize1G
)

// DefaultPageSize is the page size of a subOS whose layout names none.
const DefaultPageSize = PageSize2M

// MaxCmdlineAppend is the longest cmdline_append accepted. The guest's whole
// command line (the VMM's own arguments plus this) must fit in 4 KiB.
const MaxCmdlineAppend = 2048

// Layout is a parsed layout file: the supervisor's housekeeping cores, the
// defaults, and the subOSes in file order. Defaults are already applied to
// each SubOS by Parse.
type Layout struct {
	Supervisor Supervisor
	Defaults   Defaults
	// Networks are the named networks subOS NICs join (nets: [{network:
	// NAME}]).
	Networks []Network
	SubOSes  []SubOS
}

// Network is a named network of the layout: a bridge (Bridge, or the
// network's name), made by the supervisor when Create is set (with the
// host's Address on it, CIDR, optional) and removed with its last subOS.
//
// With Loop set it is a loop network instead (RFloop: subOS to subOS
// through shared memory, no bridge): its members are the subOSes with a
// NIC on it, in file order (Parse fills in each NIC's LoopMembers), at
// least two; Subnet is its IPv4 subnet (the supervisor's default when
// empty), member k getting address k+2.
type Network struct {
	Name    string
	Bridge  string
	Create  bool
	Address string
	Loop    bool
	Subnet  string
}

// DefaultLoopNetwork is the loop network of the subOSes that say
// loop: true (and of the default layout's subOSes).
const DefaultLoopNetwork = "loop"

// NIC is a network interface of a subOS: a TAP in a bridge (Network's,
// resolved by Parse into Bridge, CreateBridge and BridgeAddress; or
// Bridge named directly), or a TAP on its own; TAP, MAC and ID default
// as the supervisor says.
type NIC struct {
	Network       string
	Bridge        string
	CreateBridge  bool
	BridgeAddress string
	TAP           string
	MAC           string
	ID            string
	// User puts the NIC on the rootless uplink, publishing Publish
	// ([ADDR:]HOSTPORT:GUESTPORT[/udp]; the subOS's ports: go here too).
	User         bool
	Publish      []string
	HostLoopback bool
	// Loop is the loop network the NIC is on (a network of the layout
	// with loop: true, or DefaultLoopNetwork for a subOS's loop: true);
	// LoopMembers are its members and LoopSubnet its subnet, filled in
	// by Parse.
	Loop        string
	LoopMembers []string
	LoopSubnet  string
	// Vhost is "auto" (or ""), "on" or "off": whether the TAP NIC's
	// frames go through the host kernel's vhost-net.
	Vhost string
	// IP locks the TAP NIC to an IPv4 address (CIDR), given to the
	// guest on its command line.
	IP string
}

// Supervisor holds the supervisor's own resources.
type Supervisor struct {
	// Cores are the housekeeping cores, owned by the supervisor; nil means
	// the first online core (see Layout.Housekeeping).
	Cores []int
}

// Defaults are the values a subOS gets when it does not name its own.
type Defaults struct {
	Kernel   string // path of the kernel (PVH vmlinux or bzImage)
	Initrd   string // path of the initrd; "" = none
	PageSize uint64 // bytes; 0 when the file names none (DefaultPageSize applies)
}

// SubOS is one subOS of a layout, with defaults applied.
type SubOS struct {
	Name string
	// CPUs is the number of cores wanted when Cores is empty. When both
	// are given they must agree.
	CPUs int
	// Cores are explicit host CPUs (explicit placement).
	Cores []int
	// MaxCPUs is the most cores the subOS can grow to while it runs; 0
	// means every core of its memory node but the host's.
	MaxCPUs int
	// Node is the NUMA node of the memory; -1 means the node of the cores.
	Node int
	// Memory is the guest RAM in bytes, a multiple of PageSize.
	Memory uint64
	// MaxMemory, when above Memory, is the most memory the subOS can grow
	// to while it runs (its hotplug memory is the difference); 0 means
	// its memory is fixed.
	MaxMemory uint64
	// PageSize is the hugepage size backing Memory (PageSize2M or
	// PageSize1G).
	PageSize uint64
	Kernel   string
	Initrd   string // "" = none
	Disks    []Disk
	// Devices are PCI addresses (domain:bus:slot.function, lower case)
	// to pass through, each with its whole IOMMU group. Passthrough does
	// not exist yet: Check vets the addresses, and the supervisor's checker
	// (supervisor.Admission, used by rfm check and rfm run) refuses them.
	Devices []string
	// SSHKeys are files of public keys (.pub, authorized_keys) root may
	// log in with over SSH (images with sshd: the Debian one).
	SSHKeys []string
	// CmdlineAppend is appended to the guest kernel command line.
	CmdlineAppend string
	// Segments are shared-memory segments this subOS is granted (the
	// supervisor creates a segment with its first grant).
	Segments []Segment
	// Nets are its network interfaces.
	Nets []NIC
	// Shares are host directories given to it as virtio-fs devices.
	Shares []Share
	// Class is ledger.Batch ("" too) or ledger.LatencyCritical.
	Class ledger.Class
	// Autoscale is the latency-driven autoscaling policy of a
	// latency-critical subOS; nil: none.
	Autoscale *Autoscale
}

// Autoscale is a subOS's autoscale section (see the supervisor's
// AutoscaleSpec); zero fields take the defaults.
type Autoscale struct {
	Lower, Upper     time.Duration
	Window, Cooldown time.Duration
	MinCPUs, MaxCPUs int
}

// Target is a's policy for subOS name, as package autoscale takes it.
func (a Autoscale) Target(name string) autoscale.Target {
	return autoscale.Target{Name: name, Lower: a.Lower, Upper: a.Upper, Window: a.Window, Cooldown: a.Cooldown, MinCores: a.MinCPUs, MaxCores: a.MaxCPUs}
}

// Segment is a grant of a named shared-memory segment.
type Segment struct {
	Name string
	// Size in bytes, a multiple of 4 KiB; 0 takes the size another grant
	// names.
	Size     uint64
	ReadOnly bool
}

// SegmentSizes returns each segment's size, from whichever grant names it.
func (l *Layout) SegmentSizes() map[string]uint64 {
	sizes := map[string]uint64{}
	for _, s := range l.SubOSes {
		for _, g := range s.Segments {
			if g.Size != 0 {
				sizes[g.Name] = g.Size
			}
		}
	}
	return sizes
}

// Segment limits: the largest segment and how many subOSes may share one
// (the supervisor's segment regions have that many peer slots).
const (
	MaxSegmentSize   = 1 << 30
	MaxSegmentGrants = 16
)

// Disk is a disk image (or block device) given to a subOS as virtio-blk,
// as the VMM's configuration holds it.
type Disk = config.Disk

// Share is a host directory given to a subOS as a virtio-fs device
// (path, tag, readonly, allow_root), as the supervisor takes it.
type Share = share.Spec

// Request is the ledger request for the subOS's resources.
func (s SubOS) Request() ledger.Request {
	return ledger.Request{
		Name:     s.Name,
		CPUs:     s.CPUs,
		Cores:    append([]int(nil), s.Cores...),
		Node:     s.Node,
		Memory:   s.Memory,
		PageSize: s.PageSize,
		Devices:  append([]string(nil), s.Devices...),
		Class:    s.Class,
	}
}

// ResolvePaths makes the relative kernel, initrd, disk and share paths
// of l relative to dir (normally the layout file's directory) instead of
// the working directory; share paths become absolute.
func (l *Layout) ResolvePaths(dir string) {
	rebase := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	l.Defaults.Kernel = rebase(l.Defaults.Kernel)
	l.Defaults.Initrd = rebase(l.Defaults.Initrd)
	for i := range l.SubOSes {
		s := &l.SubOSes[i]
		s.Kernel = rebase(s.Kernel)
		s.Initrd = rebase(s.Initrd)
		for j := range s.Disks {
			s.Disks[j].Path = rebase(s.Disks[j].Path)
		}
		for j := range s.Shares {
			// Absolute: the supervisor takes only absolute share paths.
			if p := rebase(s.Shares[j].Path); p != "" {
				if a, err := filepath.Abs(p); err == nil {
					p = a
				}
				s.Shares[j].Path = p
			}
		}
		for j := range s.SSHKeys {
			s.SSHKeys[j] = rebase(s.SSHKeys[j])
		}
	}
}

// Problem is one thing wrong with a layout. Its Error is one line, e.g.
//
//	subos "web": cores: core 0 is the supervisor's housekeeping core
type Problem struct {
	// Index is the subOS's position in Layout.SubOSes; -1 for a problem
	// of the layout as a whole (supervisor, defaults).
	Index int `json:"index"`
	// SubOS is the subOS's name ("" when it has none or Index is -1).
	SubOS string `json:"subos"`
	// Field is the layout field at fault, e.g. "cores", "disks[1].path",
	// "supervisor.cores".
	Field   string `json:"field"`
	Message string `json:"message"`
}

func (p Problem) Error() string {
	var who string
	switch {
	case p.Index < 0:
	case p.SubOS != "":
		who = fmt.Sprintf("subos %q: ", p.SubOS)
	default:
		who = fmt.Sprintf("subos[%d]: ", p.Index)
	}
	if p.Field == "" {
		return who + p.Message
	}
	return who + p.Field + ": " + p.Message
}
