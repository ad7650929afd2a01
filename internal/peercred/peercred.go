// Package peercred decides who may use a Unix socket service: it reads the
// kernel-checked credentials of the process at the other end of a
// connection (SO_PEERCRED: pid, effective uid, primary gid; SO_PEERGROUPS:
// the supplementary groups), answers with a Policy whether that peer may
// use the service (root, the uid owning the service, members of one
// group), logs refusals at a bounded rate, and creates listening sockets
// whose file is born with the wanted mode (Listen).
//
// Credentials are the connecting process's at connect(2) time, recorded by
// the kernel; nothing the client sends is trusted. For the listening side,
// the credentials a client sees are those of the process that last called
// listen(2) on the socket (see Relisten).
package peercred

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os/user"
	"slices"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrRefused is wrapped by every refusal of Policy.Check.
var ErrRefused = errors.New("permission denied")

// Cred is a peer's credentials as the kernel recorded them at connect time,
// translated into the reader's namespaces.
type Cred struct {
	PID int32
	UID uint32 // effective uid
	GID uint32 // primary (effective) gid; SO_PEERCRED carries no other
	// Groups are the supplementary groups (SO_PEERGROUPS); nil when they
	// could not be read.
	Groups []uint32
}

// String describes c for logs and the audit log, e.g. "uid 0 gid 0 pid
// 4242": numbers only, all from the kernel.
func (c Cred) String() string {
	return fmt.Sprintf("uid %d gid %d pid %d", c.UID, c.GID, c.PID)
}

// Of reads the credentials of the peer of c, a Unix socket connection (or
// anything exposing one through syscall.Conn).
func Of(c net.Conn) (Cred, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return Cred{}, fmt.Errorf("peer credentials: %T is not a socket", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	var cred Cred
	var credErr error
	if err := raw.Control(func(fd uintptr) { cred, credErr = OfFD(int(fd)) }); err != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	return cred, credErr
}

// OfFD reads the credentials of the peer of the connected Unix socket fd.
func OfFD(fd int) (Cred, error) {
	u, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return Cred{}, fmt.Errorf("peer credentials: SO_PEERCRED: %w", err)
	}
	c := Cred{PID: u.Pid, UID: u.Uid, GID: u.Gid}
	// Without SO_PEERGROUPS (kernels before 4.13) only the primary gid
	// counts; Groups stays nil.
	if g, err := peerGroups(fd); err == nil {
		c.Groups = g
	}
	return c, nil
}

// NoGroup is Policy.Group when no group is allowed.
const NoGroup = -1

// Policy says who may use a service: root, the uid Owner, and the members
// of Group (NoGroup: none). A peer is a member when the group is its
// primary gid or one of its supplementary groups as the kernel recorded
// them at connect time (SO_PEERGROUPS), so a process cannot gain or lose
// access by changing its groups after connecting, and there is no pid to
// look up and race against.
type Policy struct {
	Owner uint32
	Group int
	// GroupName names Group in refusals (and the group asked for when it
	// does not exist).
	GroupName string
}

// ServicePolicy is the policy of a service run by this process: root, this
// process's effective uid and the members of the group named group. A
// group that does not exist, or group "", is no error: then Group is
// NoGroup and only root and the owner may connect (GroupName still names
// the group asked for, for the caller's warning).
func ServicePolicy(group string) (Policy, error) {
	p := Policy{Owner: uint32(unix.Geteuid()), Group: NoGroup, GroupName: group}
	if group == "" {
		return p, nil
	}
	gid, err := LookupGroup(group)
	if errors.Is(err, ErrNoSuchGroup) {
		return p, nil
	}
	if err != nil {
		return Policy{}, err
	}
	p.Group = gid
	return p, nil
}

// ConsolePolicy is who may attach to a subOS's console, the guest's
// terminal: root and the members of the API group gid, called name
// (NoGroup: root only). The VMM, which may run as an unprivileged uid, is
// not its owner. Its Allow is the shape of consolesock.Options.Allow;
// Check(Of(conn)) is preferred where the connection is at hand.
func ConsolePolicy(gid int, name string) Policy {
	return Policy{Owner: 0, Group: gid, GroupName: name}
}

// ErrNoSuchGroup reports a group name the host does not know.
var ErrNoSuchGroup = errors.New("no such group")

// LookupGroup returns the gid of the group called name.
func LookupGroup(name string) (int, error) {
	g, err := user.LookupGroup(name)
	if err != nil {
		var unknown user.UnknownGroupError
		// A host without /etc/group (a minimal initramfs) has no groups.
		if errors.As(err, &unknown) || errors.Is(err, fs.ErrNotExist) {
			return 0, fmt.Errorf("group %q: %w", name, ErrNoSuchGroup)
		}
		return 0, fmt.Errorf("group %q: %w", name, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil || gid < 0 {
		return 0, fmt.Errorf("group %q: gid %q is not a number", name, g.Gid)
	}
	return gid, nil
}

// Check returns nil when the peer c may use the service, else an error
// wrapping ErrRefused that says why (numbers and the group's name only).
func (p Policy) Check(c Cred) error {
	if c.UID == 0 || c.UID == p.Owner {
		return nil
	}
	if p.Group == NoGroup {
		if p.GroupName != "" {
			return fmt.Errorf("%w: uid %d is not root (group %q does not exist, so no other user may connect)", ErrRefused, c.UID, p.GroupName)
		}
		return fmt.Errorf("%w: uid %d is neither root nor uid %d", ErrRefused, c.UID, p.Owner)
	}
	if p.member(c.GID, c.Groups) {
		return nil
	}
	return fmt.Errorf("%w: uid %d is neither root nor a member of group %q (gid %d)", ErrRefused, c.UID, p.GroupName, p.Group)
}

func (p Policy) member(gid uint32, groups []uint32) bool {
	if p.Group < 0 {
		return false
	}
	g := uint32(p.Group)
	return gid == g || slices.Contains(groups, g)
}

// String describes who p allows, e.g. `root, uid 0 and group "rainforest"
// (gid 990)`.
func (p Policy) String() string {
	s := fmt.Sprintf("root and uid %d", p.Owner)
	if p.Group != NoGroup {
		s += fmt.Sprintf(" and group %q (gid %d)", p.GroupName, p.Group)
	}
	return s
}
