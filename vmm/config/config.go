// Package config is the VMM's launch contract: one versioned JSON document
// that says everything a subOS's VMM needs — what to boot, on which host
// cores, with how much memory of which page size, which disks and network
// interfaces, where the console goes, and which shared-memory regions it
// is a member of.
//
// The supervisor sends it over the VMM's control socket (rfm/vmmctl), with
// the regions' descriptors beside it; `rfm vmm --config FILE` reads it from
// a file; and `rfm vmm`'s flags build the same document, so there is one
// path from configuration to machine. Decode refuses a document of another
// version or with fields it does not know, naming them.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"rainforest/internal/tokenbucket"
	"rainforest/internal/units"
	"rainforest/vmm/consolelog"
	"rainforest/vmm/ram"
	"rainforest/vmm/virtio/fs"
	"rainforest/vmm/virtio/net/loop"
)

// Version is the document version this VMM understands.
const Version = 1

// Limits on what a document may hold.
const (
	// MaxDocument bounds a document's size in bytes.
	MaxDocument = 64 << 10
	// MaxCores bounds the vCPUs (one per host core).
	MaxCores = 254
	// MaxDisks bounds the disks at boot.
	MaxDisks = 16
	// MaxNets bounds the network interfaces.
	MaxNets = 8
	// MaxRegions bounds the shared-memory regions.
	MaxRegions = 16
	// MaxShares bounds the shared directories (virtio-fs devices).
	MaxShares = 8
	// MaxVectors bounds a region's vectors per peer.
	MaxVectors = 64
	// MaxPeers bounds a region's peers.
	MaxPeers = 253
	// MaxHotplugMemory bounds the hotplug memory region.
	MaxHotplugMemory = 1 << 40
)

// HotplugBlockSize is the block size of hotplug memory on pages of size
// p: 2 MiB, or the page size when larger.
func HotplugBlockSize(p ram.PageSize) uint64 { return max(2<<20, uint64(p)) }

// MaxMemoryProblem says what is wrong with a machine of memory bytes on
// pages of size p that is to grow to maxMemory bytes while it runs (its
// hotplug memory is the difference): "" when nothing is, or when
// maxMemory is 0 or memory (no hotplug memory).
func MaxMemoryProblem(memory, maxMemory uint64, p ram.PageSize) string {
	if maxMemory == 0 || maxMemory == memory {
		return ""
	}
	block := HotplugBlockSize(p)
	switch {
	case maxMemory < memory:
		return fmt.Sprintf("%s is below the memory %s", units.FormatSize(maxMemory), units.FormatSize(memory))
	case (maxMemory-memory)%block != 0:
		return fmt.Sprintf("%s: max_memory - memory (%s) must be a multiple of the %s hotplug block", units.FormatSize(maxMemory), units.FormatSize(maxMemory-memory), units.FormatSize(block))
	case maxMemory-memory > MaxHotplugMemory:
		return fmt.Sprintf("%s: max_memory - memory must be at most %s", units.FormatSize(maxMemory), units.FormatSize(MaxHotplugMemory))
	}
	return ""
}

// ErrInvalid wraps every reason a document is refused.
var ErrInvalid = errors.New("VMM configuration")

// Document is one VMM's configuration.
type Document struct {
	Version int    `json:"version"`
	Name    string `json:"name"`
	// Kernel is a PVH ELF vmlinux or a bzImage; Initrd is optional.
	Kernel string `json:"kernel"`
	Initrd string `json:"initrd,omitempty"`
	// Cmdline replaces the default kernel command line when set; Append
	// is added to it.
	Cmdline string `json:"cmdline,omitempty"`
	Append  string `json:"append,omitempty"`
	// Cores are host cores, one vCPU each, in order: the vCPUs the guest
	// boots with.
	Cores []int `json:"cores"`
	// MaxVCPUs is how many vCPUs the machine has (0: len(Cores)), so that
	// the subOS can grow to that many cores while it runs: the guest's
	// ACPI tables list them all, it boots len(Cores) (maxcpus=), and the
	// others wait offline, their threads on Cores[0], until the VMM
	// re-pins them (vmmctl set_cpus) and the guest onlines them.
	MaxVCPUs int `json:"max_vcpus,omitempty"`
	// Memory is the guest RAM in bytes, PageSize its backing: "4k", "2M"
	// or "1G" ("2M" when empty).
	Memory   uint64 `json:"memory"`
	PageSize string `json:"page_size,omitempty"`
	// HotplugMemory, when not 0, is the size in bytes of a memory region
	// above RAM, of the same page size, that the guest plugs and unplugs
	// through a virtio-mem device as the host asks (vmmctl set_memory):
	// a multiple of HotplugBlockSize, at most MaxHotplugMemory. The
	// guest starts with none of it plugged.
	HotplugMemory uint64 `json:"hotplug_memory,omitempty"`
	// CPUProfile is "host" (default) or "nested-safe".
	CPUProfile string   `json:"cpu_profile,omitempty"`
	Disks      []Disk   `json:"disks,omitempty"`
	Console    Console  `json:"console"`
	Regions    []Region `json:"regions,omitempty"`
	// Vsock, when set, gives the guest a virtio-vsock device.
	Vsock *Vsock `json:"vsock,omitempty"`
	// Shares are host directories given to the guest as virtio-fs
	// devices, each served by a vhost-user back end (virtiofsd).
	Shares []Share `json:"shares,omitempty"`
	// Nets are the guest's network interfaces (virtio-net on TAP
	// interfaces).
	Nets []Net `json:"nets,omitempty"`
	// LogLevel is the VMM's log level: debug, info, warn (default), error.
	LogLevel string `json:"log_level,omitempty"`
	// AllowEmulatedKVM boots even where KVM emulates guest kernel code.
	AllowEmulatedKVM bool `json:"allow_emulated_kvm,omitempty"`
	// Files names the descriptors that travel with the document after the
	// regions' files: name (see FileKVM ... FileDisk) -> index among them.
	// A named descriptor replaces the path the VMM would otherwise open.
	Files map[string]int `json:"files,omitempty"`
	// Jail, when set, makes the VMM enter its jail (vmm/jail) once it has
	// its descriptors.
	Jail *Jail `json:"jail,omitempty"`
	// NoSeccomp leaves the VMM without its system-call filter (debugging
	// only; the VMM warns loudly).
	NoSeccomp bool `json:"no_seccomp,omitempty"`
}

// Jail is the unprivileged identity and the empty root directory of a
// jailed VMM.
type Jail struct {
	// Root is an empty directory the VMM mounts its tmpfs root on.
	Root string `json:"root"`
	// UID and GID are the VMM's after the jail (never 0).
	UID int `json:"uid"`
	GID int `json:"gid"`
	// HostMountNS is the supervisor's mount namespace ("mnt:[N]"): the
	// VMM refuses to pivot in it.
	HostMountNS string `json:"host_mount_ns"`
}

// Names of the descriptors in Document.Files.
const (
	FileKVM           = "kvm"            // an open /dev/kvm
	FileKernel        = "kernel"         // the kernel image, readable
	FileInitrd        = "initrd"         // the initrd, readable
	FileConsoleSocket = "console_socket" // a listening Unix stream socket
	FileConsoleLog    = "console_log"    // the console output file, writable
	FileVsockSocket   = "vsock_socket"   // a listening Unix stream socket for vsock
	// FileDiskPrefix + a disk's ID: its backing, opened as the disk asks.
	FileDiskPrefix = "disk/"
	// FileSharePrefix + a share's ID: a Unix stream socket connected to
	// its vhost-user back end.
	FileSharePrefix = "share/"
	// FileNetPrefix + a net's ID: /dev/net/tun attached to its TAP
	// interface (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR).
	FileNetPrefix = "net/"
	// FileVhostNetPrefix + a net's ID: an open /dev/vhost-net, which
	// the VMM uses to put the TAP net's data path in the host kernel
	// (vmm/virtio/net/vhostnet), falling back to its own when vhost
	// fails. A TAP net only.
	FileVhostNetPrefix = "vhost-net/"
	// FileLoopPrefix + a loop net's ID + "/lane/<i>" and "/bell/<i>":
	// member i's lane (its region's memfd; read-write for this member,
	// read-only for the others) and doorbell (an eventfd), for every
	// member i of its loop network (LoopLaneFile, LoopBellFile).
	FileLoopPrefix = "loop/"
)

// MaxFiles bounds the named descriptors: room for two loop networks of
// the most members besides the rest.
const MaxFiles = 8 + MaxDisks + MaxShares + 2*MaxNets + 2*2*loop.MaxMembers

// ShareFile is the name of share id's descriptor.
func ShareFile(id string) string { return FileSharePrefix + id }

// DiskFile is the name of disk id's descriptor.
func DiskFile(id string) string { return FileDiskPrefix + id }

// NetFile is the name of net id's descriptor.
func NetFile(id string) string { return FileNetPrefix + id }

// VhostNetFile is the name of net id's vhost-net descriptor.
func VhostNetFile(id string) string { return FileVhostNetPrefix + id }

// LoopLaneFile is the name of the descriptor of member i's lane for loop
// net id.
func LoopLaneFile(id string, i int) string { return FileLoopPrefix + id + "/lane/" + strconv.Itoa(i) }

// LoopBellFile is the name of the descriptor of member i's doorbell for
// loop net id.
func LoopBellFile(id string, i int) string { return FileLoopPrefix + id + "/bell/" + strconv.Itoa(i) }

// Net is a guest network interface: a virtio-net device whose frames go
// through a TAP interface on the host (vmm/virtio/net/tap), made by the
// supervisor, or, with Loop, to the other members of a loop network
// (vmm/virtio/net/loop). The VMM opens the TAP by name, or (a jailed VMM)
// is handed its descriptor as Files[NetFile(ID)]; a loop member is handed
// its network's lanes and doorbells (LoopLaneFile, LoopBellFile).
type Net struct {
	// ID names the device ("net0", "net1", ... when empty).
	ID string `json:"id,omitempty"`
	// MAC is the guest's address, aa:bb:cc:dd:ee:ff: unicast, not zero.
	MAC string `json:"mac"`
	// Tap is the host's TAP interface (when no descriptor is given).
	Tap string `json:"tap,omitempty"`
	// AnySourceMAC lets the guest send frames from any Ethernet source;
	// by default frames from a source other than MAC are dropped and
	// counted. A loop member may not have it.
	AnySourceMAC bool `json:"any_source_mac,omitempty"`
	// Backend is what carries the frames: "tap" (the default: a TAP, by
	// name or descriptor) or "socket" (a connected SOCK_SEQPACKET Unix
	// socket, passed as the descriptor, to a user-mode network process
	// such as `rfm uplink`: plain frames, no offloads).
	Backend string `json:"backend,omitempty"`
	// Loop, when set, makes the net a member of a loop network instead
	// of a TAP's (no Tap, no descriptor NetFile(ID)).
	Loop *Loop `json:"loop,omitempty"`
}

// Loop is a net's membership of a loop network (RFloop): the network's
// member table, the same in every member's document, and this member's
// place in it. The member's MAC is the net's.
type Loop struct {
	// Network names the loop network: 1-32 of letters, digits, _ . -.
	Network string `json:"network"`
	// Self is this member's index in Members.
	Self int `json:"self"`
	// Members are the network's members in its order, this one
	// included: 2 to loop.MaxMembers.
	Members []LoopMember `json:"members"`
	// Slots is every ring's slot count, a power of two from
	// loop.MinSlots to loop.MaxSlots (0: loop.DefaultSlots).
	Slots int `json:"slots,omitempty"`
}

// LoopMember is one member of a loop network.
type LoopMember struct {
	// Name is its subOS's name.
	Name string `json:"name"`
	// MAC is its address, aa:bb:cc:dd:ee:ff: unicast, unique in the
	// network.
	MAC string `json:"mac"`
	// IP, when set, is its IPv4 address, unique in the network: the only
	// IPv4 source (and ARP sender) it may use (see vmm/virtio/net/loop).
	IP string `json:"ip,omitempty"`
}

// Config returns the loop backend's configuration of l (Validate first:
// members whose MAC or IP do not parse are refused here too).
func (l Loop) Config() (loop.Config, error) {
	c := loop.Config{Network: l.Network, Self: l.Self, Slots: l.Slots}
	for i, m := range l.Members {
		mac, err := Net{MAC: m.MAC}.HardwareAddr()
		if err != nil {
			return loop.Config{}, fmt.Errorf("loop %s: member %d: %w", l.Network, i, err)
		}
		lm := loop.Member{Name: m.Name, MAC: mac}
		if m.IP != "" {
			if lm.IP, err = netip.ParseAddr(m.IP); err != nil {
				return loop.Config{}, fmt.Errorf("loop %s: member %d: ip %q: %w", l.Network, i, m.IP, err)
			}
		}
		c.Members = append(c.Members, lm)
	}
	return c, nil
}

// Validate checks a loop membership on its own (its fields named from
// the membership: "members[1].mac"); a net's document checks it as
// nets[i].loop, with the net's MAC.
func (l Loop) Validate() error { return l.validate("") }

// check validates a loop membership of the net at field (nets[i]) whose
// MAC is mac.
func (l Loop) check(field, mac string) error {
	if err := l.validate(field + ".loop."); err != nil {
		return err
	}
	self, _ := Net{MAC: l.Members[l.Self].MAC}.HardwareAddr()
	if own, _ := (Net{MAC: mac}).HardwareAddr(); own != self {
		return &FieldError{Field: field + ".mac", Msg: fmt.Sprintf("%s.mac: %s is not the mac of member %d (%s)", field, mac, l.Self, l.Members[l.Self].MAC)}
	}
	return nil
}

// validate checks l, naming its fields after prefix.
func (l Loop) validate(prefix string) error {
	bad := func(name, format string, args ...any) error {
		f := prefix + name
		return &FieldError{Field: f, Msg: f + ": " + fmt.Sprintf(format, args...)}
	}
	switch n := len(l.Members); {
	case !idPattern.MatchString(l.Network):
		return bad("network", "network %q: 1-32 of letters, digits, _ . -", l.Network)
	case n < 2:
		return bad("members", "loop network %q has %d member(s): a loop network needs at least two", l.Network, n)
	case n > loop.MaxMembers:
		return bad("members", "loop network %q has %d members, at most %d", l.Network, n, loop.MaxMembers)
	case l.Self < 0 || l.Self >= n:
		return bad("self", "self %d: an index among the %d members", l.Self, n)
	}
	if l.Slots != 0 {
		if err := loop.CheckSlots(l.Slots); err != nil {
			return bad("slots", "slots %d: a power of two from %d to %d (0: %d)", l.Slots, loop.MinSlots, loop.MaxSlots, loop.DefaultSlots)
		}
	}
	names, macs, ips := map[string]bool{}, map[[6]byte]bool{}, map[netip.Addr]bool{}
	for i, m := range l.Members {
		member := fmt.Sprintf("members[%d]", i)
		if !idPattern.MatchString(m.Name) {
			return bad(member+".name", "name %q: 1-32 of letters, digits, _ . -", m.Name)
		}
		if names[m.Name] {
			return bad(member+".name", "name %q used twice", m.Name)
		}
		names[m.Name] = true
		a, err := Net{MAC: m.MAC}.HardwareAddr()
		if err != nil {
			return bad(member+".mac", "%v", err)
		}
		if macs[a] {
			return bad(member+".mac", "mac %s used twice", m.MAC)
		}
		macs[a] = true
		if m.IP == "" {
			continue
		}
		ip, err := netip.ParseAddr(m.IP)
		if err == nil {
			err = loop.CheckIP(ip)
		}
		if err != nil {
			return bad(member+".ip", "ip %q: a unicast IPv4 address", m.IP)
		}
		if ips[ip] {
			return bad(member+".ip", "ip %s used twice", m.IP)
		}
		ips[ip] = true
	}
	return nil
}

// Net backends.
const (
	NetBackendTAP    = "tap"
	NetBackendSocket = "socket"
)

var (
	macPattern = regexp.MustCompile(`^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$`)
	// tapPattern: an interface name (IFNAMSIZ-1 bytes, no slash or
	// space; "." and ".." are refused apart).
	tapPattern = regexp.MustCompile(`^[a-zA-Z0-9_.-]{1,15}$`)
)

// HardwareAddr returns the MAC as six bytes.
func (n Net) HardwareAddr() ([6]byte, error) {
	var a [6]byte
	if !macPattern.MatchString(n.MAC) {
		return a, fmt.Errorf("mac %q: six hex bytes separated by colons", n.MAC)
	}
	for i := range a {
		v, _ := strconv.ParseUint(n.MAC[3*i:3*i+2], 16, 8)
		a[i] = byte(v)
	}
	if a == [6]byte{} || a[0]&1 != 0 {
		return a, fmt.Errorf("mac %s: not a unicast address", n.MAC)
	}
	return a, nil
}

// Check validates a net on its own (whether its TAP comes by name or as
// a descriptor is the document's to check).
func (n Net) Check() error {
	if n.ID != "" && !idPattern.MatchString(n.ID) {
		return fmt.Errorf("id %q: 1-32 of letters, digits, _ . -", n.ID)
	}
	if _, err := n.HardwareAddr(); err != nil {
		return err
	}
	if n.Tap != "" && (!tapPattern.MatchString(n.Tap) || n.Tap == "." || n.Tap == "..") {
		return fmt.Errorf("tap %q: an interface name, 1-15 of letters, digits, _ . -", n.Tap)
	}
	switch n.Backend {
	case "", NetBackendTAP:
	case NetBackendSocket:
		if n.Tap != "" {
			return fmt.Errorf("backend %q takes no tap", n.Backend)
		}
	default:
		return fmt.Errorf("backend %q: want %q or %q", n.Backend, NetBackendTAP, NetBackendSocket)
	}
	return nil
}

// WithNetIDs returns the nets with default IDs filled in ("net<i>").
func (d *Document) WithNetIDs() []Net {
	out := append([]Net(nil), d.Nets...)
	for i := range out {
		if out[i].ID == "" {
			out[i].ID = fmt.Sprintf("net%d", i)
		}
	}
	return out
}

// Disk is a raw image file or block device given to the guest as a
// virtio-blk device.
type Disk struct {
	// ID names the disk for detach ("disk0", "disk1", ... when empty).
	ID       string `json:"id,omitempty"`
	Path     string `json:"path"`
	ReadOnly bool   `json:"readonly,omitempty"`
	// Direct opens the backing with O_DIRECT (no host page cache).
	Direct bool `json:"direct,omitempty"`
	// IOPS limits the guest's requests per second and Bandwidth its read
	// and written bytes per second, each a token bucket whose burst is
	// one second's worth when not given (as Firecracker's rate limiters);
	// absent means unlimited. A request over a limit waits, it is never
	// refused.
	IOPS      tokenbucket.Limit `json:"iops,omitzero"`
	Bandwidth tokenbucket.Limit `json:"bandwidth,omitzero"`
}

// Bounds of a disk's rate limits: a limit under the minimum would stall
// the guest's I/O for seconds per request, and one above the maximum is
// no limit at all.
const (
	MinIOPS       = 10
	MaxIOPS       = 10_000_000
	MinBandwidth  = 64 << 10
	MaxBandwidth  = 1 << 40
	maxBurstRatio = 3600 // a burst is at most an hour's worth
)

// Vsock is a guest's virtio-vsock device and its host side, as in
// Firecracker: host processes connect to the Unix socket Socket and write
// "CONNECT <port>\n" to reach guest port port; a guest connecting to the
// host (CID 2) port P reaches the Unix socket "<Socket>_<P>" (not under
// the jail, which has no paths: there the guest gets RST).
type Vsock struct {
	// CID is the guest's context ID: MinVsockCID..MaxVsockCID.
	CID uint64 `json:"cid"`
	// Socket is the host-side Unix socket's absolute path.
	Socket string `json:"socket"`
}

// Share is a host directory given to the guest as a virtio-fs device
// (vmm/virtio/fs). The VMM does not open the directory: a vhost-user back
// end (virtiofsd), started by the supervisor, serves it, and the VMM
// connects to the back end's socket.
type Share struct {
	// ID names the device ("share0", "share1", ... when empty).
	ID string `json:"id,omitempty"`
	// Tag is what the guest mounts the share by (mount -t virtiofs TAG
	// DIR): 1 to 36 bytes of printable ASCII without spaces.
	Tag string `json:"tag"`
	// Socket is the back end's vhost-user socket, an absolute path. A
	// jailed VMM, which reaches no paths, is given the connected socket
	// as the descriptor ShareFile(ID) instead, and Socket may be empty.
	Socket string `json:"socket,omitempty"`
}

// maxSocketPath bounds a Unix socket path (sun_path holds 107 bytes and a
// NUL).
const maxSocketPath = 107

// Bounds of a guest's CID (0-2 are reserved; the host is 2; 2^32-1 is
// VMADDR_CID_ANY).
const (
	MinVsockCID = 3
	MaxVsockCID = 1<<32 - 2
)

// Console modes.
const (
	ConsoleStdio = "stdio"
	ConsoleNone  = "none"
	ConsoleFile  = "file"
)

// Console says where the serial and virtio consoles go.
type Console struct {
	// Mode is ConsoleStdio (default), ConsoleNone or ConsoleFile.
	Mode string `json:"mode,omitempty"`
	// Path is the log file of ConsoleFile.
	Path string `json:"path,omitempty"`
	// Socket, when set, also serves the console on a Unix socket there.
	Socket string `json:"socket,omitempty"`
	// LogSize caps the console log when it is a regular file (stdout or
	// ConsoleFile), in bytes: 0 for consolelog.DefaultMaxSize, else
	// between consolelog.MinMaxSize and MaxConsoleLog. The log rotates on
	// its descriptor when full (see vmm/consolelog).
	LogSize uint64 `json:"log_size,omitempty"`
	// LogRate is the guest's sustained console output rate in bytes a
	// second (0 for consolelog.DefaultRate, at most MaxConsoleLog); output
	// beyond it is dropped and counted.
	LogRate uint64 `json:"log_rate,omitempty"`
	// Group, when > 0, is the gid whose members may attach to Socket
	// besides root and the VMM's controller (the supervisor's API group).
	Group int `json:"group,omitempty"`
}

// maxVsockSocket bounds Vsock.Socket: sun_path holds 107 bytes and a
// guest port adds up to 11 ("_4294967295").
const maxVsockSocket = 107 - 11

// MaxConsoleLog bounds Console.LogSize and Console.LogRate.
const MaxConsoleLog = 256 << 20

// Region is a shared-memory region this VMM is a member of. Its memfd and
// Peers x Vectors eventfds (peer-major) travel beside the document.
type Region struct {
	Name       string `json:"name"`
	Protocol   uint8  `json:"protocol"`
	Peers      int    `json:"peers"`
	RWSize     uint64 `json:"rw_size"`
	OutputSize uint64 `json:"output_size"`
	Vectors    int    `json:"vectors"`
	Self       int    `json:"self"` // this VMM's peer id
	RWReadOnly bool   `json:"rw_readonly,omitempty"`
	// Doorbells limits this subOS's doorbells to each other peer
	// (doorbells per second and burst); absent means the VMM's default
	// (shmemdev.DefaultDoorbellLimit).
	Doorbells tokenbucket.Limit `json:"doorbells,omitzero"`
}

// Bounds of a region's doorbell limit.
const (
	MinDoorbells = 100
	MaxDoorbells = 10_000_000
)

// Files is the number of descriptors that travel with r: its memfd and
// its eventfds.
func (r Region) Files() int { return 1 + r.Peers*r.Vectors }

// Validate checks r's counts (the memory layout itself is checked by the
// device).
func (r Region) Validate() error {
	switch {
	case r.Name == "":
		return fmt.Errorf("%w: region without a name", ErrInvalid)
	case r.Peers < 1 || r.Peers > MaxPeers:
		return fmt.Errorf("%w: region %q: %d peers (1..%d)", ErrInvalid, r.Name, r.Peers, MaxPeers)
	case r.Vectors < 1 || r.Vectors > MaxVectors:
		return fmt.Errorf("%w: region %q: %d vectors (1..%d)", ErrInvalid, r.Name, r.Vectors, MaxVectors)
	case r.Self < 0 || r.Self >= r.Peers:
		return fmt.Errorf("%w: region %q: peer id %d of %d", ErrInvalid, r.Name, r.Self, r.Peers)
	}
	if err := checkLimit("doorbells", r.Doorbells, MinDoorbells, MaxDoorbells); err != nil {
		return fmt.Errorf("%w: region %q: %w", ErrInvalid, r.Name, err)
	}
	return nil
}

// FieldError is a document refused because of one field (named as in
// the JSON); it wraps ErrInvalid.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return ErrInvalid.Error() + ": " + e.Msg }

func (e *FieldError) Unwrap() error { return ErrInvalid }

// Decode reads one document: at most MaxDocument bytes, Version only, no
// unknown fields; the result is validated.
func Decode(r io.Reader) (*Document, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxDocument+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if len(data) > MaxDocument {
		return nil, fmt.Errorf("%w: document larger than %d bytes", ErrInvalid, MaxDocument)
	}
	var head struct {
		Version *int `json:"version"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrInvalid, jsonProblem(err))
	}
	switch {
	case head.Version == nil:
		return nil, fmt.Errorf("%w: no \"version\" (this rfm understands version %d)", ErrInvalid, Version)
	case *head.Version != Version:
		return nil, fmt.Errorf("%w: version %d, this rfm understands version %d", ErrInvalid, *head.Version, Version)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var d Document
	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrInvalid, jsonProblem(err))
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: more than one JSON value", ErrInvalid)
	}
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return &d, nil
}

// jsonProblem turns encoding/json's errors into one plain line.
func jsonProblem(err error) string {
	msg := strings.TrimPrefix(err.Error(), "json: ")
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %q: %s is not a %s", te.Field, te.Value, te.Type)
	}
	return msg
}

// Encode writes d as JSON.
func (d *Document) Encode() ([]byte, error) { return json.Marshal(d) }

var namePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,31}$`)

// Validate checks everything that can be checked without touching the
// host: the files, cores and hugepages are checked when the VMM starts.
func (d *Document) Validate() error {
	bad := func(field, format string, args ...any) error {
		return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	switch {
	case d.Version != Version:
		return bad("version", "version %d, this rfm understands version %d", d.Version, Version)
	case !namePattern.MatchString(d.Name):
		return bad("name", "name %q: 1-32 of a-z 0-9 _ . -, starting with a letter or digit", d.Name)
	case d.Kernel == "":
		return bad("kernel", "no kernel")
	case len(d.Cores) == 0:
		return bad("cores", "no cores")
	case len(d.Cores) > MaxCores:
		return bad("cores", "%d cores, at most %d", len(d.Cores), MaxCores)
	case d.MaxVCPUs != 0 && (d.MaxVCPUs < len(d.Cores) || d.MaxVCPUs > MaxCores):
		return bad("max_vcpus", "max_vcpus %d: 0 (as many as cores) or %d (the cores given) to %d", d.MaxVCPUs, len(d.Cores), MaxCores)
	case len(d.Disks) > MaxDisks:
		return bad("disks", "%d disks, at most %d", len(d.Disks), MaxDisks)
	case len(d.Regions) > MaxRegions:
		return bad("regions", "%d regions, at most %d", len(d.Regions), MaxRegions)
	case len(d.Shares) > MaxShares:
		return bad("shares", "%d shares, at most %d", len(d.Shares), MaxShares)
	case len(d.Nets) > MaxNets:
		return bad("nets", "%d nets, at most %d", len(d.Nets), MaxNets)
	}
	seen := map[int]bool{}
	for _, c := range d.Cores {
		if c < 0 || seen[c] {
			return bad("cores", "cores %v: each core once, none negative", d.Cores)
		}
		seen[c] = true
	}
	ps, err := d.Pages()
	if err != nil {
		return bad("page_size", "page_size: %v", err)
	}
	if d.Memory < 2<<20 || d.Memory%uint64(ps) != 0 {
		return bad("memory", "memory %d: at least 2 MiB, a multiple of the %s page size", d.Memory, ps)
	}
	if h, bs := d.HotplugMemory, HotplugBlockSize(ps); h%bs != 0 || h > MaxHotplugMemory {
		return bad("hotplug_memory", "hotplug_memory %d: 0 (none) or a multiple of the %d-byte block size, at most %d", h, bs, uint64(MaxHotplugMemory))
	}
	switch d.CPUProfile {
	case "", "host", "nested-safe":
	default:
		return bad("cpu_profile", "cpu_profile %q: host or nested-safe", d.CPUProfile)
	}
	switch d.LogLevel {
	case "", "debug", "info", "warn", "error":
	default:
		return bad("log_level", "log_level %q: debug, info, warn or error", d.LogLevel)
	}
	switch d.Console.Mode {
	case "", ConsoleStdio, ConsoleNone:
		if d.Console.Path != "" {
			return bad("console", "console: path %q is only for mode %q", d.Console.Path, ConsoleFile)
		}
	case ConsoleFile:
		if d.Console.Path == "" {
			return bad("console", "console: mode %q needs a path", ConsoleFile)
		}
	default:
		return bad("console", "console mode %q: stdio, none or file", d.Console.Mode)
	}
	if d.Console.Group < 0 {
		return bad("console.group", "console: group %d: a gid, or 0 for none", d.Console.Group)
	}
	if s := d.Console.LogSize; s != 0 && (s < consolelog.MinMaxSize || s > MaxConsoleLog) {
		return bad("console.log_size", "console: log_size %d: 0 (default) or %d to %d bytes", s, consolelog.MinMaxSize, MaxConsoleLog)
	}
	if r := d.Console.LogRate; r > MaxConsoleLog {
		return bad("console.log_rate", "console: log_rate %d: at most %d bytes a second", r, MaxConsoleLog)
	}
	if v := d.Vsock; v != nil {
		if v.CID < MinVsockCID || v.CID > MaxVsockCID {
			return bad("vsock.cid", "vsock: cid %d: a guest CID, %d to %d", v.CID, MinVsockCID, uint64(MaxVsockCID))
		}
		if !strings.HasPrefix(v.Socket, "/") {
			return bad("vsock.socket", "vsock: socket %q is not an absolute path", v.Socket)
		}
		if len(v.Socket) > maxVsockSocket {
			return bad("vsock.socket", "vsock: socket path of %d bytes, at most %d (a Unix socket path, with room for \"_<port>\")", len(v.Socket), maxVsockSocket)
		}
	}
	ids := map[string]bool{}
	for i, disk := range d.WithDiskIDs() {
		if err := disk.Check(); err != nil {
			return bad("disks", "disks[%d]: %v", i, err)
		}
		if ids[disk.ID] {
			return bad("disks", "disks[%d]: id %q used twice", i, disk.ID)
		}
		ids[disk.ID] = true
	}
	netIDs, err := d.validateNets(ids)
	if err != nil {
		return err
	}
	shareIDs, err := d.validateShares(union(ids, netIDs))
	if err != nil {
		return err
	}
	if err := d.validateFiles(ids, netIDs, shareIDs); err != nil {
		return err
	}
	if j := d.Jail; j != nil {
		if j.Root == "" || !strings.HasPrefix(j.Root, "/") {
			return bad("jail", "jail: root %q is not an absolute path", j.Root)
		}
		if j.UID <= 0 || j.GID <= 0 || j.UID > 1<<31-2 || j.GID > 1<<31-2 {
			return bad("jail", "jail: uid %d, gid %d: an unprivileged id (1..2^31-2) each", j.UID, j.GID)
		}
	}
	names := map[string]bool{}
	for _, r := range d.Regions {
		if err := r.Validate(); err != nil {
			return err
		}
		if names[r.Name] {
			return bad("regions", "region %q given twice", r.Name)
		}
		names[r.Name] = true
	}
	return nil
}

// reservedDeviceIDs are the device ids the VMM gives its own devices.
var reservedDeviceIDs = map[string]bool{"console": true, "vsock": true, "memory": true}

// validateShares checks the shares: ids unique among the devices (the
// disks' ids given), tags unique and mountable, a socket path or a
// descriptor for each. It returns the share ids.
func (d *Document) validateShares(diskIDs map[string]bool) (map[string]bool, error) {
	ids, tags := map[string]bool{}, map[string]bool{}
	for i, s := range d.WithShareIDs() {
		field := func(name string) string { return fmt.Sprintf("shares[%d].%s", i, name) }
		bad := func(name, format string, args ...any) error {
			return &FieldError{Field: field(name), Msg: fmt.Sprintf("%s: ", field(name)) + fmt.Sprintf(format, args...)}
		}
		switch {
		case !idPattern.MatchString(s.ID):
			return nil, bad("id", "id %q: 1-32 of letters, digits, _ . -", s.ID)
		case ids[s.ID] || diskIDs[s.ID] || reservedDeviceIDs[s.ID]:
			return nil, bad("id", "id %q is another device's", s.ID)
		case tags[s.Tag]:
			return nil, bad("tag", "tag %q used twice", s.Tag)
		}
		if err := fs.CheckTag(s.Tag); err != nil {
			return nil, bad("tag", "%v", err)
		}
		_, given := d.Files[ShareFile(s.ID)]
		switch {
		case s.Socket == "" && !given:
			return nil, bad("socket", "no socket (the back end's vhost-user socket, or the descriptor %q)", ShareFile(s.ID))
		case s.Socket != "" && !strings.HasPrefix(s.Socket, "/"):
			return nil, bad("socket", "socket %q is not an absolute path", s.Socket)
		case len(s.Socket) > maxSocketPath:
			return nil, bad("socket", "socket path of %d bytes, at most %d", len(s.Socket), maxSocketPath)
		}
		ids[s.ID], tags[s.Tag] = true, true
	}
	return ids, nil
}

// union is the set of the keys of a and b.
func union(a, b map[string]bool) map[string]bool {
	out := make(map[string]bool, len(a)+len(b))
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// validateNets checks the nets: each valid, ids unique among the nets,
// the disks and the devices every machine may have, MACs unique, and a
// TAP for each: a name, or a descriptor (the only way for a jailed VMM).
// It returns the nets' ids.
func (d *Document) validateNets(diskIDs map[string]bool) (map[string]bool, error) {
	bad := func(format string, args ...any) error {
		return &FieldError{Field: "nets", Msg: fmt.Sprintf(format, args...)}
	}
	ids, macs := map[string]bool{}, map[[6]byte]bool{}
	for i, n := range d.WithNetIDs() {
		if err := n.Check(); err != nil {
			return nil, bad("nets[%d]: %v", i, err)
		}
		if ids[n.ID] || diskIDs[n.ID] || reservedDeviceIDs[n.ID] {
			return nil, bad("nets[%d]: id %q already names a device", i, n.ID)
		}
		ids[n.ID] = true
		mac, _ := n.HardwareAddr()
		if macs[mac] {
			return nil, bad("nets[%d]: mac %s used twice", i, n.MAC)
		}
		macs[mac] = true
		_, given := d.Files[NetFile(n.ID)]
		if _, vhost := d.Files[VhostNetFile(n.ID)]; vhost && (n.Loop != nil || n.Backend == NetBackendSocket) {
			return nil, &FieldError{Field: "files", Msg: fmt.Sprintf("files: %q: vhost-net is for a TAP net only", VhostNetFile(n.ID))}
		}
		if n.Loop != nil {
			if err := d.checkLoopNet(i, n); err != nil {
				return nil, err
			}
			continue
		}
		switch {
		case !given && d.Jail != nil:
			return nil, bad("nets[%d]: a jailed VMM opens no TAP; pass descriptor %q", i, NetFile(n.ID))
		case !given && n.Tap == "":
			return nil, bad("nets[%d]: no tap and no descriptor %q", i, NetFile(n.ID))
		}
	}
	return ids, nil
}

// checkLoopNet checks nets[i], n, a loop member: its membership, no
// TAP, and every member's lane and doorbell among the descriptors.
func (d *Document) checkLoopNet(i int, n Net) error {
	field := fmt.Sprintf("nets[%d]", i)
	_, tapFile := d.Files[NetFile(n.ID)]
	switch {
	case n.Tap != "" || tapFile:
		return &FieldError{Field: field + ".tap", Msg: fmt.Sprintf("%s: a loop member has no TAP", field)}
	case n.AnySourceMAC:
		return &FieldError{Field: field + ".any_source_mac", Msg: fmt.Sprintf("%s: a loop member sends from its own MAC only", field)}
	}
	if err := n.Loop.check(field, n.MAC); err != nil {
		return err
	}
	for k := range n.Loop.Members {
		for _, name := range []string{LoopLaneFile(n.ID, k), LoopBellFile(n.ID, k)} {
			if _, ok := d.Files[name]; !ok {
				return &FieldError{Field: "files", Msg: fmt.Sprintf("files: no descriptor %q for loop net %s", name, n.ID)}
			}
		}
	}
	return nil
}

// loopFile reports whether name names a descriptor of a loop net of the
// document: LoopLaneFile or LoopBellFile of one of its members.
func (d *Document) loopFile(name string) bool {
	rest, ok := strings.CutPrefix(name, FileLoopPrefix)
	if !ok {
		return false
	}
	for _, n := range d.WithNetIDs() {
		if n.Loop == nil {
			continue
		}
		tail, ok := strings.CutPrefix(rest, n.ID+"/")
		if !ok {
			continue
		}
		for k := range n.Loop.Members {
			if tail == "lane/"+strconv.Itoa(k) || tail == "bell/"+strconv.Itoa(k) {
				return true
			}
		}
	}
	return false
}

// WithShareIDs returns the shares with default IDs filled in
// ("share<i>").
func (d *Document) WithShareIDs() []Share {
	out := append([]Share(nil), d.Shares...)
	for i := range out {
		if out[i].ID == "" {
			out[i].ID = fmt.Sprintf("share%d", i)
		}
	}
	return out
}

// validateFiles checks the descriptor table: known names (disks, nets
// and shares among the document's ids), each index once, indexes
// 0..len-1.
func (d *Document) validateFiles(diskIDs, netIDs, shareIDs map[string]bool) error {
	if len(d.Files) > MaxFiles {
		return &FieldError{Field: "files", Msg: fmt.Sprintf("files: %d descriptors, at most %d", len(d.Files), MaxFiles)}
	}
	used := make([]string, len(d.Files))
	for name, i := range d.Files {
		known := false
		switch name {
		case FileKVM, FileKernel, FileConsoleSocket, FileConsoleLog:
			known = true
		case FileInitrd:
			known = d.Initrd != ""
		case FileVsockSocket:
			known = d.Vsock != nil
		default:
			if id, ok := strings.CutPrefix(name, FileDiskPrefix); ok {
				known = diskIDs[id]
			} else if id, ok := strings.CutPrefix(name, FileSharePrefix); ok {
				known = shareIDs[id]
			} else if id, ok := strings.CutPrefix(name, FileNetPrefix); ok {
				known = netIDs[id]
			} else if id, ok := strings.CutPrefix(name, FileVhostNetPrefix); ok {
				known = netIDs[id]
			} else {
				known = d.loopFile(name)
			}
		}
		if !known {
			return &FieldError{Field: "files", Msg: fmt.Sprintf("files: unknown descriptor name %q", name)}
		}
		if name == FileConsoleLog && d.Console.Mode != ConsoleFile {
			return &FieldError{Field: "files", Msg: fmt.Sprintf("files: %q is only for console mode %q", name, ConsoleFile)}
		}
		if i < 0 || i >= len(d.Files) {
			return &FieldError{Field: "files", Msg: fmt.Sprintf("files: %q at index %d, want 0..%d", name, i, len(d.Files)-1)}
		}
		if used[i] != "" {
			return &FieldError{Field: "files", Msg: fmt.Sprintf("files: index %d used by %q and %q", i, min(used[i], name), max(used[i], name))}
		}
		used[i] = name
	}
	return nil
}

// FileIndex returns the index of the named descriptor among the named
// files, and whether the document names it.
func (d *Document) FileIndex(name string) (int, bool) {
	i, ok := d.Files[name]
	return i, ok
}

// Pages returns the backing page size (2M when unset).
func (d *Document) Pages() (ram.PageSize, error) {
	if d.PageSize == "" {
		return ram.Page2M, nil
	}
	return ram.ParsePageSize(d.PageSize)
}

// VCPUs returns the machine's vCPU count: MaxVCPUs, or len(Cores) when
// it is 0.
func (d *Document) VCPUs() int { return max(d.MaxVCPUs, len(d.Cores)) }

// WithDiskIDs returns the disks with default IDs filled in ("disk<i>").
func (d *Document) WithDiskIDs() []Disk {
	out := append([]Disk(nil), d.Disks...)
	for i := range out {
		if out[i].ID == "" {
			out[i].ID = fmt.Sprintf("disk%d", i)
		}
	}
	return out
}

var idPattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,31}$`)

// Check validates a disk on its own.
func (k Disk) Check() error {
	if k.Path == "" {
		return errors.New("no path")
	}
	if k.ID != "" && !idPattern.MatchString(k.ID) {
		return fmt.Errorf("id %q: 1-32 of letters, digits, _ . -", k.ID)
	}
	if err := checkLimit("iops", k.IOPS, MinIOPS, MaxIOPS); err != nil {
		return err
	}
	return checkLimit("bandwidth", k.Bandwidth, MinBandwidth, MaxBandwidth)
}

// checkLimit checks a rate limit: unlimited, or a rate in [lo, hi] with a
// burst of at most maxBurstRatio seconds' worth.
func checkLimit(name string, l tokenbucket.Limit, lo, hi uint64) error {
	switch {
	case l.Rate == 0 && l.Burst != 0:
		return fmt.Errorf("%s: a burst without a rate", name)
	case l.Rate == 0:
		return nil
	case l.Rate < lo || l.Rate > hi:
		return fmt.Errorf("%s: rate %d per second, want %d..%d", name, l.Rate, lo, hi)
	case l.Burst > l.Rate*maxBurstRatio:
		return fmt.Errorf("%s: burst %d is more than %d seconds' worth", name, l.Burst, maxBurstRatio)
	}
	return nil
}

// DiskSyntax is the command-line form of a disk.
const DiskSyntax = "PATH[,ro][,direct][,iops=N][,iops-burst=N][,bw=SIZE][,bw-burst=SIZE]"

// ParseDisk parses the command-line form of a disk (DiskSyntax): iops is
// requests per second, bw bytes per second (a size such as 100M), each
// with an optional burst; the result is checked.
func ParseDisk(s string) (Disk, error) {
	parts := strings.Split(s, ",")
	d := Disk{Path: parts[0]}
	if d.Path == "" {
		return Disk{}, fmt.Errorf("disk %q: no path (%s)", s, DiskSyntax)
	}
	for _, opt := range parts[1:] {
		key, value, hasValue := strings.Cut(opt, "=")
		var err error
		switch {
		case opt == "ro":
			d.ReadOnly = true
		case opt == "direct":
			d.Direct = true
		case hasValue && key == "iops":
			d.IOPS.Rate, err = strconv.ParseUint(value, 10, 64)
		case hasValue && key == "iops-burst":
			d.IOPS.Burst, err = strconv.ParseUint(value, 10, 64)
		case hasValue && key == "bw":
			d.Bandwidth.Rate, err = units.ParseSize(value)
		case hasValue && key == "bw-burst":
			d.Bandwidth.Burst, err = units.ParseSize(value)
		default:
			return Disk{}, fmt.Errorf("disk %q: unknown option %q (%s)", s, opt, DiskSyntax)
		}
		if err != nil {
			return Disk{}, fmt.Errorf("disk %q: %s: %w", s, key, err)
		}
	}
	if err := d.Check(); err != nil {
		return Disk{}, fmt.Errorf("disk %q: %w", s, err)
	}
	return d, nil
}

// String is the command-line form of the disk.
func (k Disk) String() string {
	s := k.Path
	if k.ReadOnly {
		s += ",ro"
	}
	if k.Direct {
		s += ",direct"
	}
	if k.IOPS.Rate != 0 {
		s += ",iops=" + strconv.FormatUint(k.IOPS.Rate, 10)
	}
	if k.IOPS.Burst != 0 {
		s += ",iops-burst=" + strconv.FormatUint(k.IOPS.Burst, 10)
	}
	if k.Bandwidth.Rate != 0 {
		s += ",bw=" + strconv.FormatUint(k.Bandwidth.Rate, 10)
	}
	if k.Bandwidth.Burst != 0 {
		s += ",bw-burst=" + strconv.FormatUint(k.Bandwidth.Burst, 10)
	}
	return s
}
