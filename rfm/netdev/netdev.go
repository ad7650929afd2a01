// Package netdev makes the host side of a subOS's network: TAP devices
// (one per NIC, opened through /dev/net/tun and held open by the VMM, so
// that the device goes away when the VMM does, whatever happens to the
// supervisor), the bridges they join, and locally administered MAC
// addresses. It decides nothing: the supervisor says what to make, and
// netdev makes it or says exactly why not.
//
// It speaks netlink through github.com/vishvananda/netlink (the library
// Docker's libnetwork and the CNI plugins use), never `ip` commands, and
// nftables' netlink through github.com/google/nftables for the TAPs'
// source guards (guard.go), never `nft`.
package netdev

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
)

// Errors callers branch on.
var (
	// ErrNoBridge means the bridge named does not exist (and was not to
	// be created).
	ErrNoBridge = errors.New("no such bridge")
	// ErrNotBridge means the link named exists but is not a bridge.
	ErrNotBridge = errors.New("not a bridge")
	// ErrNameTaken means a network device of that name exists already.
	ErrNameTaken = errors.New("network device name taken")
	// ErrName means a device name is not one Linux takes.
	ErrName = errors.New("invalid network device name")
)

// maxNameLen is IFNAMSIZ less its terminating NUL.
const maxNameLen = 15

// CheckName says whether Linux takes name as a network device's: 1 to 15
// bytes, none of them '/', ':', whitespace or control characters, and not
// "." or "..".
func CheckName(name string) error {
	switch {
	case name == "" || len(name) > maxNameLen:
		return fmt.Errorf("%w: %q: 1 to %d bytes", ErrName, name, maxNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("%w: %q", ErrName, name)
	}
	for _, r := range name {
		if r == '/' || r == ':' || r <= ' ' || r == 0x7f || r > 0x7e {
			return fmt.Errorf("%w: %q: no '/', ':', spaces or non-ASCII characters", ErrName, name)
		}
	}
	return nil
}

// TAP is an open TAP device: the first (and only) queue's descriptor,
// with IFF_VNET_HDR (frames carry a virtio_net_hdr, so checksum and
// segmentation offloads pass through) and IFF_NO_PI. The device lives as
// long as a descriptor of it is open.
type TAP struct {
	Name string
	File *os.File
}

// Close closes the supervisor's descriptor; the device goes once the VMM
// has closed its copy too.
func (t *TAP) Close() error { return t.File.Close() }

// OpenTAP creates a TAP device called name (a name such as "rf-web0";
// CheckName), not persistent, and returns it open. A device of that name
// that exists already is ErrNameTaken, never attached to.
func OpenTAP(name string) (*TAP, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	if _, err := netlink.LinkByName(name); err == nil {
		return nil, fmt.Errorf("%w: %q exists already (choose another TAP name, or remove that device)", ErrNameTaken, name)
	}
	t := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TAP,
		Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE, NonPersist: true, Queues: 1}
	if err := netlink.LinkAdd(t); err != nil {
		return nil, fmt.Errorf("create TAP %s: %w", name, err)
	}
	if len(t.Fds) != 1 {
		for _, f := range t.Fds {
			f.Close()
		}
		return nil, fmt.Errorf("create TAP %s: %d descriptors, want 1", name, len(t.Fds))
	}
	return &TAP{Name: t.Name, File: t.Fds[0]}, nil
}

// Join puts device dev into bridge (when not "") and sets it up.
func Join(dev, bridge string) error {
	link, err := netlink.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("%s: %w", dev, err)
	}
	if bridge != "" {
		br, err := bridgeLink(bridge)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMaster(link, br); err != nil {
			return fmt.Errorf("put %s in bridge %s: %w", dev, bridge, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", dev, err)
	}
	return nil
}

// bridgeLink returns bridge name's link: ErrNoBridge when there is none,
// ErrNotBridge when the device is something else.
func bridgeLink(name string) (*netlink.Bridge, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, fmt.Errorf("%w: %q (create it, or let the layout's networks: create it)", ErrNoBridge, name)
		}
		return nil, fmt.Errorf("bridge %s: %w", name, err)
	}
	br, ok := link.(*netlink.Bridge)
	if !ok {
		return nil, fmt.Errorf("%w: %q is a %s device", ErrNotBridge, name, link.Type())
	}
	return br, nil
}

// CheckBridge says whether bridge name exists and is a bridge.
func CheckBridge(name string) error {
	_, err := bridgeLink(name)
	return err
}

// EnsureBridge makes bridge name exist and be up: an existing bridge is
// used as it is (created false); a missing one is created when create is
// set, else it is ErrNoBridge.
func EnsureBridge(name string, create bool) (created bool, err error) {
	if err := CheckName(name); err != nil {
		return false, err
	}
	_, err = bridgeLink(name)
	switch {
	case err == nil:
		return false, nil
	case !errors.Is(err, ErrNoBridge) || !create:
		return false, err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := netlink.LinkAdd(br); err != nil {
		return false, fmt.Errorf("create bridge %s: %w", name, err)
	}
	if err := netlink.LinkSetAlias(br, madeAlias); err != nil {
		_ = netlink.LinkDel(br)
		return false, fmt.Errorf("mark bridge %s as RainForest's: %w", name, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		_ = netlink.LinkDel(br)
		return false, fmt.Errorf("set bridge %s up: %w", name, err)
	}
	return true, nil
}

// madeAlias is the alias (ifalias) of the bridges EnsureBridge creates:
// the mark, kept by the kernel with the device, that lets a supervisor
// (this one or a successor) know which bridges are its to remove.
const madeAlias = "rainforest: made by rfm, removed with its last subOS"

// Made says whether bridge name exists and was made by EnsureBridge.
func Made(name string) bool {
	br, err := bridgeLink(name)
	return err == nil && br.Attrs().Alias == madeAlias
}

// Ports lists the devices in bridge name.
func Ports(name string) ([]string, error) {
	br, err := bridgeLink(name)
	if err != nil {
		return nil, err
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []string
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Index {
			out = append(out, l.Attrs().Name)
		}
	}
	return out, nil
}

// RemoveBridge deletes bridge name if it has no ports left (a bridge the
// supervisor created, once its last subOS is gone); one that still has
// some is left alone and named in the error. A bridge that is gone
// already is not an error.
func RemoveBridge(name string) error {
	br, err := bridgeLink(name)
	if errors.Is(err, ErrNoBridge) {
		return nil
	}
	if err != nil {
		return err
	}
	ports, err := Ports(name)
	if err != nil {
		return err
	}
	if len(ports) > 0 {
		return fmt.Errorf("bridge %s still has %s; left in place", name, strings.Join(ports, ", "))
	}
	if err := netlink.LinkDel(br); err != nil {
		return fmt.Errorf("delete bridge %s: %w", name, err)
	}
	return nil
}

// MAC is the locally administered unicast MAC address of a subOS's NIC
// index, derived from the subOS's name: the same name and index give the
// same address, so a recreated subOS keeps its address (and its DHCP
// lease). The supervisor refuses two NICs with the same address.
func MAC(subos string, index int) net.HardwareAddr {
	sum := sha256.Sum256([]byte(fmt.Sprintf("rainforest/%s/%d", subos, index)))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&^0x01 | 0x02 // unicast, locally administered
	return mac
}

// ParseMAC parses a MAC address for a NIC: six bytes, unicast, not all
// zero.
func ParseMAC(s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(s)
	switch {
	case err != nil:
		return nil, fmt.Errorf("MAC address %q: %w", s, err)
	case len(mac) != 6:
		return nil, fmt.Errorf("MAC address %q: want 6 bytes", s)
	case mac[0]&0x01 != 0:
		return nil, fmt.Errorf("MAC address %q is a multicast address; a NIC needs a unicast one", s)
	case string(mac) == string(make([]byte, 6)):
		return nil, fmt.Errorf("MAC address %q is all zero", s)
	}
	return mac, nil
}

// Host is the host's network as the supervisor uses it (its Network
// interface): the functions above, on the host's current network
// namespace.
type Host struct{}

// CheckBridge implements supervisor.Network.
func (Host) CheckBridge(name string) error { return CheckBridge(name) }

// EnsureBridge implements supervisor.Network: a bridge it creates gets
// the host address addr (CIDR) when not "".
func (Host) EnsureBridge(name string, create bool, addr string) (bool, error) {
	created, err := EnsureBridge(name, create)
	if err != nil || !created || addr == "" {
		return created, err
	}
	a, err := netlink.ParseAddr(addr)
	if err == nil {
		var link netlink.Link
		if link, err = netlink.LinkByName(name); err == nil {
			err = netlink.AddrAdd(link, a)
		}
	}
	if err != nil {
		_ = RemoveBridge(name)
		return false, fmt.Errorf("address %s on bridge %s: %w", addr, name, err)
	}
	return true, nil
}

// RemoveBridge implements supervisor.Network.
func (Host) RemoveBridge(name string) error { return RemoveBridge(name) }

// Made implements supervisor.Network.
func (Host) Made(name string) bool { return Made(name) }

// Exists implements supervisor.Network.
func (Host) Exists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

// OpenTAP implements supervisor.Network: TAP name, created, in bridge
// (when not "") and up.
func (Host) OpenTAP(name, bridge string) (*os.File, error) {
	t, err := OpenTAP(name)
	if err != nil {
		return nil, err
	}
	if err := Join(t.Name, bridge); err != nil {
		t.Close()
		return nil, err
	}
	return t.File, nil
}

// OpenVhostNet implements supervisor.Network: the host's
// /dev/vhost-net, read-write (its holder sets it up for one NIC).
func (Host) OpenVhostNet() (*os.File, error) {
	return os.OpenFile("/dev/vhost-net", os.O_RDWR, 0) // os opens with O_CLOEXEC
}
