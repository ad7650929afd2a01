// Package loopnet is the supervisor's side of a loop network (RFloop, the
// VMM side is vmm/virtio/net/loop): it makes every member's lane and
// doorbell, one region each (rfm/region: a sealed memfd, on 2 MiB
// hugetlb pages when the pool has them, and one eventfd), and gives each
// member's VMM what its launch document needs: the net (config.Net with
// its Loop: the member table, the same for every member) and the
// descriptors the net names (config.LoopLaneFile, config.LoopBellFile):
// its own lane read-write, every other member's lane read-only (a
// read-only reopening of the memfd, so that the kernel keeps a VMM from
// writing any memory but its own), and every member's doorbell.
//
// The lanes travel as named descriptors (config.Document.Files), not as
// config.Document.Regions: a region becomes a shared-memory PCI function
// of the guest, and no guest may see a lane (its peers' lanes hold their
// frames to other members), nor can a region be read-only for some of
// its members and writable for one. Nothing of the network is on the
// data path but the VMMs: the supervisor keeps the regions only so that
// a member's VMM that starts again (a restarted subOS) gets the same
// lanes, whose rings resume where they were.
//
// Use: Create once per network with its members (their MACs, and IPv4
// addresses where the member is to be held to one), Attach per member
// when its VMM's document is built (add Net to the document's nets and
// Files to its named descriptors; close Files once the VMM has them),
// Close when no member's VMM will start again. The members are fixed:
// another member set is another network (every member's VMM restarted).
// The MACs are the ones to publish on the board (ficm/board's MAC
// field) for the members' subOSes.
package loopnet

import (
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"rainforest/rfm/region"
	"rainforest/vmm/config"
	"rainforest/vmm/shmem/abi"
	"rainforest/vmm/virtio/net/loop"
)

// Errors.
var (
	// ErrInvalid: a network or member refused (wraps the reason; a
	// network of one member wraps loop.ErrTooFewMembers too).
	ErrInvalid = errors.New("loop network: invalid")
	// ErrNoMember: Attach for a subOS that is not a member.
	ErrNoMember = errors.New("loop network: no such member")
	// ErrClosed: the network was closed.
	ErrClosed = errors.New("loop network: closed")
)

// Member is one subOS of a loop network.
type Member struct {
	// Name is the subOS's name.
	Name string
	// MAC is its NIC's address on the network, aa:bb:cc:dd:ee:ff (see
	// MemberMAC for one).
	MAC string
	// IP, when set, is its IPv4 address: the only one it may send from.
	IP string
}

// Network is a loop network's memory and doorbells, held by the
// supervisor.
type Network struct {
	name  string
	table config.Loop // Self unset
	lanes []*region.Region
}

// Create makes the lanes and doorbells of loop network name for members
// (2 to loop.MaxMembers, in the network's order), with rings of slots
// slots (0: loop.DefaultSlots). On failure nothing is left.
func Create(name string, members []Member, slots int) (_ *Network, err error) {
	if len(members) < 2 {
		var only string
		if len(members) == 1 {
			only = fmt.Sprintf(" (%s)", members[0].Name)
		}
		return nil, fmt.Errorf("%w: %w: %q has %d member(s)%s", ErrInvalid, loop.ErrTooFewMembers, name, len(members), only)
	}
	t := config.Loop{Network: name, Slots: slots}
	for _, m := range members {
		t.Members = append(t.Members, config.LoopMember{Name: m.Name, MAC: m.MAC, IP: m.IP})
	}
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrInvalid, name, err)
	}
	if slots == 0 {
		slots = loop.DefaultSlots
	}
	layout, err := loop.LaneRegion(len(members), slots)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrInvalid, name, err)
	}
	n := &Network{name: name, table: t}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	for k := range members {
		r, err := region.Create(region.Spec{Name: laneName(name, k), Protocol: abi.ProtocolSegment, Layout: layout, Vectors: 1})
		if err != nil {
			return nil, fmt.Errorf("loop network %q: lane of %s: %w", name, members[k].Name, err)
		}
		n.lanes = append(n.lanes, r)
	}
	return n, nil
}

// laneName is the name of member k's lane region (in the memfd's name):
// at most abi.NameSize bytes of the region name alphabet.
func laneName(network string, k int) string {
	suffix := "." + strconv.Itoa(k)
	const prefix = "loop."
	if max := abi.NameSize - len(prefix) - len(suffix); len(network) > max {
		network = network[:max]
	}
	return prefix + network + suffix
}

// Name returns the network's name.
func (n *Network) Name() string { return n.name }

// Members returns the member table (config.Loop with Self 0).
func (n *Network) Members() config.Loop {
	t := n.table
	t.Members = append([]config.LoopMember(nil), t.Members...)
	return t
}

// Attachment is what member's VMM needs: its net, and the descriptors
// the net names.
type Attachment struct {
	// Net goes into the document's nets.
	Net config.Net
	// Files are the descriptors Net names, by name (add them to the
	// document's named descriptors, config.Document.Files): fresh ones,
	// the caller's to close (Close) once the VMM has its copies.
	Files map[string]*os.File
}

// Close closes the attachment's descriptors.
func (a Attachment) Close() {
	for _, f := range a.Files {
		f.Close()
	}
}

// Attach returns member's net, under netID, and its descriptors: its own
// lane read-write, the others' read-only, every member's doorbell.
func (n *Network) Attach(member, netID string) (_ Attachment, err error) {
	if n.lanes == nil {
		return Attachment{}, ErrClosed
	}
	self := -1
	for k, m := range n.table.Members {
		if m.Name == member {
			self = k
		}
	}
	if self < 0 {
		return Attachment{}, fmt.Errorf("%w: %q in loop network %q", ErrNoMember, member, n.name)
	}
	t := n.Members()
	t.Self = self
	a := Attachment{Net: config.Net{ID: netID, MAC: t.Members[self].MAC, Loop: &t}, Files: map[string]*os.File{}}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	for k, r := range n.lanes {
		lane, err := reopen(r.MemFile(), k == self)
		if err != nil {
			return Attachment{}, fmt.Errorf("loop network %q: lane of %s for %s: %w", n.name, t.Members[k].Name, member, err)
		}
		a.Files[config.LoopLaneFile(netID, k)] = lane
		bell, err := reopen(r.Bells()[0], true)
		if err != nil {
			return Attachment{}, fmt.Errorf("loop network %q: doorbell of %s for %s: %w", n.name, t.Members[k].Name, member, err)
		}
		a.Files[config.LoopBellFile(netID, k)] = bell
	}
	return a, nil
}

// reopen returns a new descriptor of f: a duplicate when writable, else
// f reopened read-only (a new open file description: mapping it writable
// fails).
func reopen(f *os.File, writable bool) (*os.File, error) {
	sc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var fd int
	var ferr error
	if err := sc.Control(func(u uintptr) {
		if writable {
			fd, ferr = unix.FcntlInt(u, unix.F_DUPFD_CLOEXEC, 0)
		} else {
			fd, ferr = unix.Open("/proc/self/fd/"+strconv.Itoa(int(u)), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		}
	}); err != nil {
		return nil, err
	}
	if ferr != nil {
		return nil, ferr
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// Close releases the supervisor's hold on the lanes and doorbells (the
// VMMs keep their own).
func (n *Network) Close() error {
	var errs []error
	for _, r := range n.lanes {
		errs = append(errs, r.Close())
	}
	n.lanes = nil
	return errors.Join(errs...)
}

// MemberMAC is a MAC for member i of loop network network when the
// layout gives none: locally administered and unicast (02), three bytes
// of a hash of the network's name, then i.
func MemberMAC(network string, i int) string {
	h := fnv.New32a()
	h.Write([]byte(network))
	s := h.Sum32()
	return fmt.Sprintf("02:%02x:%02x:%02x:%02x:%02x", byte(s>>16), byte(s>>8), byte(s), byte(i>>8), byte(i))
}
