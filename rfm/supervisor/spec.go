package supervisor

import (
	"time"

	"rainforest/ledger"
	"rainforest/rfm/autoscale"
	"rainforest/vmm/config"
)

// Spec is a request to create a subOS (the API's POST /v1/subos body).
type Spec struct {
	Name  string `json:"name"`
	CPUs  int    `json:"cpus,omitempty"`
	Cores []int  `json:"cores,omitempty"`
	// MaxCPUs is the most cores the subOS can grow to while it runs
	// (ResizeCPUs, loans): its VMM makes that many vCPUs, the ones
	// beyond its size offline and parked. 0 at create means every core
	// of its memory node but the host's; the created subOS's spec says
	// the number chosen.
	MaxCPUs int    `json:"max_cpus,omitempty"`
	Node    *int   `json:"node,omitempty"`
	Memory  uint64 `json:"memory"` // bytes
	// MaxMemory, when above Memory, is the most memory the subOS can grow
	// to while it runs (ResizeMemory): its VMM gets a hotplug region of
	// the difference, plugged into the guest through virtio-mem as asked.
	// 0: none; the subOS's memory is fixed.
	MaxMemory     uint64 `json:"max_memory,omitempty"`
	PageSize      uint64 `json:"page_size,omitempty"` // bytes; 2 MiB by default
	Kernel        string `json:"kernel"`
	Initrd        string `json:"initrd,omitempty"`
	CmdlineAppend string `json:"cmdline_append,omitempty"`
	Disks         []Disk `json:"disks,omitempty"`
	// Image, when set, is a system image (a raw root disk, such as the
	// Debian one rfimage builds) the subOS boots from: it gets a copy of
	// its own as its first disk (id "root"), booted with root=/dev/vda;
	// the copy goes with the subOS.
	Image string `json:"image,omitempty"`
	// SSHKeys are public keys ("TYPE BASE64") root may log in with over
	// SSH (an image with sshd, such as the Debian one; see sshkeys.go).
	SSHKeys []string `json:"ssh_keys,omitempty"`
	// Devices are PCI addresses to pass through. Passthrough does not
	// exist yet: Check and Create refuse a spec with any (RequestProblems).
	Devices []string `json:"devices,omitempty"`
	// Nets are its network interfaces: virtio-net devices on TAP devices
	// the supervisor makes (see NIC).
	Nets []NIC `json:"nets,omitempty"`
	// Shares are host directories given to it as virtio-fs devices, each
	// served by a virtiofsd in its cgroup (see shares.go).
	Shares []ShareSpec `json:"shares,omitempty"`
	// Segments are shared segments granted to the subOS.
	Segments []SegmentGrant `json:"segments,omitempty"`
	// ConsoleLogSize caps the console log in bytes (0: 1 MiB); it rotates
	// in place when full.
	ConsoleLogSize uint64 `json:"console_log_size,omitempty"`
	// ConsoleLogRate is the guest's sustained console output in bytes a
	// second (0: 64 KiB); what is over it is dropped and counted.
	ConsoleLogRate uint64 `json:"console_log_rate,omitempty"`
	// Class is "batch" (the default) or "latency-critical": a
	// latency-critical subOS may take cores from batch ones (preemption,
	// the autoscaler).
	Class ledger.Class `json:"class,omitempty"`
	// Autoscale, for a latency-critical subOS, moves cores to it from
	// batch subOSes while its p99 latency stays above Upper, and back
	// while it stays below Lower (see autoscale.go); nil: off.
	Autoscale *AutoscaleSpec `json:"autoscale,omitempty"`
}

// Disk is a raw image or block device given to a subOS as virtio-blk,
// exactly as its VMM's configuration holds it (id, path, readonly,
// direct, and the iops and bandwidth rate limits).
type Disk = config.Disk

// Request converts the spec to a ledger request.
func (s Spec) Request() ledger.Request {
	node := -1
	if s.Node != nil {
		node = *s.Node
	}
	ps := s.PageSize
	if ps == 0 {
		ps = 2 << 20
	}
	return ledger.Request{Name: s.Name, CPUs: s.CPUs, Cores: s.Cores, Node: node, Memory: s.Memory, PageSize: ps, Devices: s.Devices, Class: s.Class}
}

// State is a subOS's lifecycle state.
type State string

// States.
const (
	StateStarting State = "starting"
	StateRunning  State = "running"
	StateStopping State = "stopping"
	// StateExited: the VMM ended on its own and its resources are free
	// (Info then carries only the name and LastExit).
	StateExited State = "exited"
)

// Info describes a subOS (GET /v1/subos/{name}).
type Info struct {
	Name          string            `json:"name"`
	State         State             `json:"state"`
	PID           int               `json:"pid"`
	Allocation    ledger.Allocation `json:"allocation"`
	Spec          Spec              `json:"spec"`
	Created       time.Time         `json:"created"`
	ConsoleSocket string            `json:"console_socket"`
	Log           string            `json:"log"`
	Cgroup        string            `json:"cgroup"`
	Adopted       bool              `json:"adopted"` // re-adopted after a supervisor restart
	// Peer is the subOS's peer id in the FICM group (0: not a member).
	Peer int `json:"ficm_peer,omitempty"`
	// SegmentPeers maps each granted segment to the subOS's slot in it.
	SegmentPeers map[string]int `json:"segment_peers,omitempty"`
	// VMMLog is the VMM's own log (the guest console is Log).
	VMMLog string `json:"vmm_log,omitempty"`
	// LastExit is how the VMM ended, for a subOS gone on its own.
	LastExit *Exit `json:"last_exit,omitempty"`
	// Agent is what the supervisor knows of the subOS's agent (absent
	// for a subOS without a vsock device).
	Agent *AgentInfo `json:"agent,omitempty"`
	// AutoscaleLast is the autoscaler's last decision on the subOS (for
	// one with autoscale on, once it has stepped).
	AutoscaleLast *autoscale.Decision `json:"autoscale_last,omitempty"`
	// Shares are its shares and the state of their virtiofsd.
	Shares []ShareInfo `json:"shares,omitempty"`
	// Nets are its NICs on TAPs and who moves their frames (vhost-net
	// or the VMM), for a running subOS.
	Nets []NICInfo `json:"nets,omitempty"`
}
