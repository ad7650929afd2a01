package supervisor

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"rainforest/ledger"
	"rainforest/net/uplink"
	"rainforest/rfm/loopnet"
	"rainforest/rfm/netdev"
	"rainforest/rfm/vmmctl"
	"rainforest/vmm/config"
)

// Network interfaces (RFtun). Each NIC of a subOS is a virtio-net device
// in its VMM on a TAP device the supervisor creates for it, optionally in
// a bridge (the user's, or one the supervisor makes and removes again
// with its last subOS). The supervisor opens the TAP (IFF_VNET_HDR, so
// offloads pass through) and hands the descriptor to the jailed VMM,
// which needs no network privilege; the TAP lives exactly as long as a
// descriptor of it is open, so it goes with the VMM whatever happens to
// the supervisor. The VMM's backend threads that move the frames run in
// the subOS's cgroup, with its vCPUs.
//
// The host kernel's vhost-net moves a NIC's frames past its VMM (and
// past the VMM's anti-spoofing checks), so every TAP gets a source guard
// on the host as well (Network.GuardTAP: an nftables chain on the TAP's
// ingress, made right after the TAP, removed with the subOS): frames
// from another MAC than the NIC's, and with NIC.IP from another IPv4
// address, are dropped and counted (rfm stats: host_tx_spoofed_mac,
// host_tx_spoofed_ip). The chains live in the kernel, so a restarted
// supervisor finds them working.

// NIC is a network interface of a subOS.
type NIC struct {
	// ID names the device in the VMM ("net0", "net1", ... by default).
	ID string `json:"id,omitempty"`
	// Bridge, when set, is the bridge its TAP joins.
	Bridge string `json:"bridge,omitempty"`
	// CreateBridge makes Bridge when it does not exist, with the host's
	// address BridgeAddress (CIDR, optional) on it; the supervisor
	// removes a bridge it made when its last subOS is gone.
	CreateBridge  bool   `json:"create_bridge,omitempty"`
	BridgeAddress string `json:"bridge_address,omitempty"`
	// TAP is the TAP device's name (by default "rf-<subOS><index>", or a
	// hashed "rf<hex><index>" when that is too long).
	TAP string `json:"tap,omitempty"`
	// MAC is the guest's address (by default derived from the subOS's
	// name and the NIC's index, so it stays the same across re-creates).
	MAC string `json:"mac,omitempty"`
	// User puts the NIC on the rootless uplink instead of a TAP: a
	// user-mode NAT of its own (see uplink.go) that leases the guest
	// 10.0.2.15 and forwards its outbound connections, publishing the
	// guest ports Publish names ([HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|udp])
	// on the host. HostLoopback lets the guest reach the host's
	// 127.0.0.1 at its gateway, 10.0.2.2.
	User         bool     `json:"user,omitempty"`
	Publish      []string `json:"publish,omitempty"`
	HostLoopback bool     `json:"host_loopback,omitempty"`
	// Loop puts the NIC on loop network Loop (RFloop, see loops.go)
	// instead: LoopMembers are the network's members in order (this
	// subOS among them; a later member may leave them out), LoopSubnet
	// its IPv4 subnet (DefaultLoopSubnet when unset). Member k's MAC and
	// address (k+2 in the subnet) are fixed by the network.
	Loop        string   `json:"loop,omitempty"`
	LoopMembers []string `json:"loop_members,omitempty"`
	LoopSubnet  string   `json:"loop_subnet,omitempty"`
	// Vhost says whether the TAP NIC's data path is in the host kernel
	// (vhost-net): "auto" (the default, ""): when /dev/vhost-net opens;
	// "on": required, the subOS is refused without it; "off": the VMM
	// moves the frames itself. The VMM falls back to its own data path
	// when vhost-net fails at run time (NICInfo.Vhost says which serves).
	Vhost string `json:"vhost,omitempty"`
	// IP locks the TAP NIC to one IPv4 address (CIDR, such as
	// 10.77.0.2/24): the host drops (and counts) the IPv4 frames the
	// guest sends from another source (0.0.0.0 passes, for DHCP) and
	// the ARP frames that claim another sender address or MAC, and the
	// guest is told the address on its command line (rf.addr=, see
	// addrCmdline). Without it only the source MAC is held.
	IP string `json:"ip,omitempty"`
}

// Vhost modes of a NIC.
const (
	VhostAuto = "auto"
	VhostOn   = "on"
	VhostOff  = "off"
)

// NICInfo is a NIC of a running subOS and who moves its frames (rfm
// inspect).
type NICInfo struct {
	ID  string `json:"id"`
	TAP string `json:"tap,omitempty"`
	// Vhost is who serves the NIC's queues, as its VMM reports: "on"
	// (the host kernel's vhost-net), "ready" (vhost-net, once the
	// guest's driver starts the device), "fallback" (the VMM, after
	// vhost-net failed), "off" (the VMM), or "unknown" (the VMM did not
	// say).
	Vhost string `json:"vhost"`
}

// Network makes the host side of NICs (rfm/netdev in production).
type Network interface {
	// CheckBridge says whether bridge name exists (netdev.ErrNoBridge,
	// netdev.ErrNotBridge).
	CheckBridge(name string) error
	// EnsureBridge makes bridge name exist and be up, creating it (with
	// the host address addr, when not "") when create is set.
	EnsureBridge(name string, create bool, addr string) (created bool, err error)
	// RemoveBridge removes bridge name when it has no ports left.
	RemoveBridge(name string) error
	// Made says whether bridge name was made by EnsureBridge (a mark the
	// host keeps with the device, so a successor knows it too).
	Made(name string) bool
	// Exists says whether a network device called name exists.
	Exists(name string) bool
	// OpenTAP creates TAP name, puts it in bridge (when not "") and sets
	// it up; it returns its descriptor.
	OpenTAP(name, bridge string) (*os.File, error)
	// OpenVhostNet opens the host's vhost-net device (/dev/vhost-net);
	// an error says why there is none.
	OpenVhostNet() (*os.File, error)
	// GuardTAP installs the source guard of TAP tap (netdev's nftables
	// chain on its ingress): what its guest sends from another source
	// MAC than mac, and with ip valid from another IPv4 address (IPv4
	// and ARP), is dropped and counted. It replaces a guard tap has.
	GuardTAP(tap, mac string, ip netip.Addr) error
	// UnguardTAP removes TAP tap's guard; none (the kernel removed it
	// with the TAP) is not an error.
	UnguardTAP(tap string) error
	// GuardCounters returns TAP tap's guard counters by name
	// (host_tx_spoofed_mac, host_tx_spoofed_ip).
	GuardCounters(tap string) (map[string]uint64, error)
}

// nicAddr is a TAP NIC's locked address (its IP, parsed; the zero
// prefix when it has none or it does not parse).
func nicAddr(n NIC) netip.Prefix {
	p, err := netip.ParsePrefix(n.IP)
	if n.IP == "" || err != nil || !p.Addr().Is4() {
		return netip.Prefix{}
	}
	return p
}

// guestAddr is the address subOS name's NIC n (defaults filled in) is
// held to and given: a loop member's, or a TAP NIC's address lock.
func guestAddr(name string, n NIC) (netip.Prefix, bool) {
	switch {
	case n.Loop != "":
		return loopAddr(name, n)
	case n.User:
		return netip.Prefix{}, false
	}
	a := nicAddr(n)
	return a, a.IsValid()
}

// addrCmdline is what the guest's command line gets for spec's NICs with
// an address (guestAddr; loop members filled in):
// rf.addr=MAC=ADDR/LEN[,MAC=ADDR/LEN...], which the images apply to the
// NIC of each MAC; nothing when the command line sets rf.addr itself.
func addrCmdline(spec Spec) string {
	if strings.Contains(spec.CmdlineAppend, "rf.addr=") {
		return ""
	}
	var addrs []string
	for _, n := range withNICDefaults(spec) {
		mac, err := netdev.ParseMAC(n.MAC)
		if a, ok := guestAddr(spec.Name, n); ok && err == nil {
			addrs = append(addrs, mac.String()+"="+a.String())
		}
	}
	if len(addrs) == 0 {
		return ""
	}
	return "rf.addr=" + strings.Join(addrs, ",")
}

// nicIDPattern is what a NIC's id may be (the VMM's device id rule).
var nicIDPattern = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,32}$`)

// withNICDefaults fills in the ids, TAP names and MACs spec's NICs leave
// out.
func withNICDefaults(spec Spec) []NIC {
	out := append([]NIC(nil), spec.Nets...)
	for i := range out {
		n := &out[i]
		if n.ID == "" {
			n.ID = "net" + strconv.Itoa(i)
		}
		if n.TAP == "" && !n.User && n.Loop == "" {
			n.TAP = defaultTAPName(spec.Name, i)
		}
		if k := slices.Index(n.LoopMembers, spec.Name); n.MAC == "" && n.Loop != "" && k >= 0 {
			n.MAC = loopnet.MemberMAC(n.Loop, k)
		}
		if n.MAC == "" {
			n.MAC = netdev.MAC(spec.Name, i).String()
		}
	}
	return out
}

// defaultTAPName is the TAP name of NIC i of subOS name: "rf-<name><i>",
// or "rf<8 hex digits of the name's hash><i>" when that is longer than a
// device name may be.
func defaultTAPName(name string, i int) string {
	n := "rf-" + name + strconv.Itoa(i)
	if netdev.CheckName(n) == nil {
		return n
	}
	sum := sha256.Sum256([]byte(name))
	return "rf" + hex.EncodeToString(sum[:4]) + strconv.Itoa(i)
}

// nicProblems lists what is wrong with spec's NICs, on their own and
// beside others (the NICs of the subOSes that exist): ids, TAP names and
// MACs unique, TAP names free on the host, bridges there unless they are
// to be made, addresses well-formed, loop networks whole (loopProblems).
func (s *Supervisor) nicProblems(spec Spec, others []NIC) []ledger.Problem {
	spec = s.withLoopMembers(spec)
	var probs []ledger.Problem
	add := func(i int, field, format string, args ...any) {
		probs = append(probs, ledger.Problem{Field: fmt.Sprintf("nets[%d].%s", i, field), Message: fmt.Sprintf(format, args...)})
	}
	if len(spec.Nets) > config.MaxNets {
		return []ledger.Problem{{Field: "nets", Message: fmt.Sprintf("%d NICs, at most %d", len(spec.Nets), config.MaxNets)}}
	}
	taken := map[string]string{} // TAP, MAC or locked address -> what holds it
	for _, o := range others {
		taken["tap "+o.TAP], taken["mac "+o.MAC] = "another subOS", "another subOS"
		if a := nicAddr(o); a.IsValid() {
			taken["ip "+a.Addr().String()] = "another subOS"
		}
	}
	ids, loops := map[string]bool{}, map[string]bool{}
	for i, n := range withNICDefaults(spec) {
		switch {
		case !nicIDPattern.MatchString(n.ID):
			add(i, "id", "%q: 1 to 32 of letters, digits, _ . -", n.ID)
		case ids[n.ID]:
			add(i, "id", "%q names two NICs", n.ID)
		}
		ids[n.ID] = true
		if n.Loop != "" {
			probs = append(probs, s.loopProblems(spec.Name, i, spec.Nets[i])...)
			if loops[n.Loop] {
				add(i, "loop", "two NICs on loop network %q", n.Loop)
			}
			loops[n.Loop] = true
		}
		mac, err := netdev.ParseMAC(n.MAC)
		if err != nil {
			add(i, "mac", "%v", err)
		} else if who := taken["mac "+mac.String()]; who != "" {
			add(i, "mac", "%s is %s's already: two NICs cannot share a MAC", mac, who)
		} else {
			taken["mac "+mac.String()] = "an earlier NIC of this subOS"
		}
		if n.IP != "" && (n.Loop != "" || n.User) {
			add(i, "ip", "ip is for a NIC on a TAP (a loop network gives its members their addresses; the uplink leases one)")
		}
		if n.Loop != "" {
			continue
		}
		if n.User {
			if n.Bridge != "" || n.TAP != "" {
				add(i, "user", "a NIC is on the uplink (user), in a bridge or on a TAP: give one")
			}
			if n.Vhost == VhostOn {
				add(i, "vhost", "vhost-net is for a NIC on a TAP, not on the uplink (user)")
			}
			for _, msg := range publishProblems(n) {
				add(i, "publish", "%s", msg)
			}
			continue
		}
		if len(n.Publish) > 0 || n.HostLoopback {
			add(i, "publish", "publish and host_loopback are for a NIC on the uplink (user)")
		}
		switch n.Vhost {
		case "", VhostAuto, VhostOff:
		case VhostOn:
			if s.cfg.Network != nil {
				if f, err := s.cfg.Network.OpenVhostNet(); err != nil {
					add(i, "vhost", "vhost on, but this host has no usable /dev/vhost-net (%v): load vhost_net, or give vhost auto or off", err)
				} else {
					f.Close()
				}
			}
		default:
			add(i, "vhost", "%q: want auto, on or off", n.Vhost)
		}
		if err := netdev.CheckName(n.TAP); err != nil {
			add(i, "tap", "%v", err)
		} else if who := taken["tap "+n.TAP]; who != "" {
			add(i, "tap", "TAP %q is %s's already", n.TAP, who)
		} else if s.cfg.Network != nil && s.cfg.Network.Exists(n.TAP) {
			add(i, "tap", "a network device called %q exists already on the host (choose another tap name)", n.TAP)
		} else {
			taken["tap "+n.TAP] = "an earlier NIC of this subOS"
		}
		switch {
		case n.Bridge == "" && (n.CreateBridge || n.BridgeAddress != ""):
			add(i, "bridge", "create_bridge and bridge_address need a bridge name")
		case n.Bridge != "":
			if err := netdev.CheckName(n.Bridge); err != nil {
				add(i, "bridge", "%v", err)
			} else if !n.CreateBridge && s.cfg.Network != nil {
				if err := s.cfg.Network.CheckBridge(n.Bridge); err != nil {
					add(i, "bridge", "%v", err)
				}
			}
		}
		if n.IP != "" && !n.User {
			p, err := netip.ParsePrefix(n.IP)
			switch {
			case err != nil || !p.Addr().Is4() || p.Bits() == 0:
				add(i, "ip", "%q: want an IPv4 address with its prefix length, such as 10.77.0.2/24", n.IP)
			case p.Addr().IsUnspecified() || p.Addr().IsMulticast() || p.Addr() == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
				add(i, "ip", "%s is not an address a NIC can have", p.Addr())
			case taken["ip "+p.Addr().String()] != "":
				add(i, "ip", "%s is %s's already: two NICs cannot share an address", p.Addr(), taken["ip "+p.Addr().String()])
			default:
				taken["ip "+p.Addr().String()] = "an earlier NIC of this subOS"
			}
		}
		if n.BridgeAddress != "" {
			if _, err := netip.ParsePrefix(n.BridgeAddress); err != nil {
				add(i, "bridge_address", "%q: want an address with its prefix length, such as 10.77.0.1/24", n.BridgeAddress)
			}
		}
	}
	needTAPs, needUplinks := false, false
	for _, n := range spec.Nets {
		needTAPs, needUplinks = needTAPs || !n.User && n.Loop == "", needUplinks || n.User
	}
	if needTAPs && s.cfg.Network == nil {
		probs = append(probs, ledger.Problem{Field: "nets", Message: "this supervisor makes no network devices (no network back end configured)"})
	}
	if needUplinks && s.cfg.Uplinks == nil {
		probs = append(probs, ledger.Problem{Field: "nets", Message: "this supervisor starts no uplinks"})
	}
	return probs
}

// allNICs lists the NICs of every subOS but name.
func (s *Supervisor) allNICs(except string) []NIC {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []NIC
	for n, so := range s.subos {
		if n != except {
			out = append(out, withNICDefaults(so.info.Spec)...)
		}
	}
	return out
}

// openNICs makes the TAPs (and the bridges to be made) and the uplinks
// (joined to the subOS's cgroup by join) of spec's NICs and returns the
// VMM's nets and their descriptors (named by config.NetFile). undo
// closes the descriptors, stops the uplinks and removes bridges it made;
// after a launch the descriptors are the VMM's.
func (s *Supervisor) openNICs(spec Spec, join func(pid int) error) (nets []config.Net, files map[string]*os.File, uplinks []UplinkProcess, undo func(), err error) {
	files = map[string]*os.File{}
	var made, guarded []string
	var undoLoops []func()
	undo = func() {
		for _, t := range guarded {
			if err := s.cfg.Network.UnguardTAP(t); err != nil {
				s.log.Warn("remove TAP guard", "subos", spec.Name, "tap", t, "err", err)
			}
		}
		for _, f := range files {
			f.Close()
		}
		for _, p := range uplinks {
			_ = p.Signal(syscall.SIGKILL)
		}
		for _, br := range made {
			s.removeBridgeWhenEmpty(br, spec.Name, nil)
		}
		for _, u := range undoLoops {
			u()
		}
	}
	defer func() {
		if err != nil {
			undo()
		}
	}()
	for _, n := range withNICDefaults(spec) {
		if n.Loop != "" {
			net, lf, undoLoop, err := s.openLoop(spec.Name, n)
			if err != nil {
				return nil, nil, nil, undo, err
			}
			undoLoops = append(undoLoops, undoLoop)
			maps.Copy(files, lf)
			nets = append(nets, net)
			continue
		}
		if n.User {
			f, p, err := s.startUplink(n, join)
			if err != nil {
				return nil, nil, nil, undo, err
			}
			uplinks = append(uplinks, p)
			files[config.NetFile(n.ID)] = f
			nets = append(nets, config.Net{ID: n.ID, MAC: n.MAC, Backend: config.NetBackendSocket})
			continue
		}
		if n.Bridge != "" {
			created, err := s.cfg.Network.EnsureBridge(n.Bridge, n.CreateBridge, n.BridgeAddress)
			if err != nil {
				return nil, nil, nil, undo, fmt.Errorf("%w: nets %s: %w", ErrInvalid, n.ID, err)
			}
			if created {
				made = append(made, n.Bridge)
			}
		}
		f, err := s.cfg.Network.OpenTAP(n.TAP, n.Bridge)
		if err != nil {
			return nil, nil, nil, undo, fmt.Errorf("nets %s: %w", n.ID, err)
		}
		files[config.NetFile(n.ID)] = f
		if err := s.cfg.Network.GuardTAP(n.TAP, n.MAC, nicAddr(n).Addr()); err != nil {
			return nil, nil, nil, undo, fmt.Errorf("nets %s: source guard: %w", n.ID, err)
		}
		guarded = append(guarded, n.TAP)
		if n.Vhost != VhostOff {
			vf, err := s.cfg.Network.OpenVhostNet()
			switch {
			case err == nil:
				files[config.VhostNetFile(n.ID)] = vf
			case n.Vhost == VhostOn:
				return nil, nil, nil, undo, fmt.Errorf("%w: nets %s: vhost on: %w", ErrInvalid, n.ID, err)
			default:
				s.log.Info("no vhost-net; the VMM moves the NIC's frames itself", "subos", spec.Name, "nic", n.ID, "err", err)
			}
		}
		nets = append(nets, config.Net{ID: n.ID, MAC: n.MAC, Tap: n.TAP})
	}
	return nets, files, uplinks, undo, nil
}

// uplinkCmdline is what the guest's command line gets for spec's NICs:
// the small image's static address on the uplink (rf.ip=) when its first
// NIC is on one and the command line sets none (an image of its own
// takes the uplink's DHCP lease instead).
func uplinkCmdline(spec Spec) string {
	if len(spec.Nets) == 0 || !spec.Nets[0].User || strings.Contains(spec.CmdlineAppend, "rf.ip=") {
		return ""
	}
	arg, err := uplink.ImageCmdline(uplink.Config{})
	if err != nil {
		return ""
	}
	return arg
}

// removeBridgeWhenEmpty removes bridge br once the TAPs in taps are gone
// (they go when their VMM's last descriptor closes) and no subOS but
// except has a NIC in it; a bridge with other ports is left alone.
func (s *Supervisor) removeBridgeWhenEmpty(br, except string, taps []string) {
	for _, n := range s.allNICs(except) {
		if n.Bridge == br {
			return // another subOS still uses it
		}
	}
	deadline := time.Now().Add(3 * time.Second)
	for _, t := range taps {
		for s.cfg.Network.Exists(t) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if err := s.cfg.Network.RemoveBridge(br); err != nil {
		s.log.Warn("remove bridge", "bridge", br, "err", err)
	}
}

// releaseNICs removes the source guards of so's TAPs and the bridges
// so's NICs are in that the supervisor made (whichever subOS asked for
// them) and no other subOS uses, once its VMM is gone (its TAPs go with
// it), and closes the loop networks it was the last member of.
func (s *Supervisor) releaseNICs(so *subOS) {
	s.releaseLoops(so)
	if s.cfg.Network == nil {
		return
	}
	nics := withNICDefaults(so.info.Spec)
	for _, n := range nics {
		if n.TAP != "" && !n.User && n.Loop == "" {
			if err := s.cfg.Network.UnguardTAP(n.TAP); err != nil {
				s.log.Warn("remove TAP guard", "subos", so.info.Name, "tap", n.TAP, "err", err)
			}
		}
	}
	done := map[string]bool{}
	for _, n := range nics {
		if n.Bridge != "" && !done[n.Bridge] && s.cfg.Network.Made(n.Bridge) {
			done[n.Bridge] = true
			var taps []string
			for _, m := range nics {
				if m.Bridge == n.Bridge {
					taps = append(taps, m.TAP)
				}
			}
			s.removeBridgeWhenEmpty(n.Bridge, so.info.Name, taps)
		}
	}
}

// firstMAC is the MAC of a subOS's first NIC, as the board lists it.
func firstMAC(spec Spec) [6]byte {
	var out [6]byte
	if nics := withNICDefaults(spec); len(nics) > 0 {
		if mac, err := netdev.ParseMAC(nics[0].MAC); err == nil {
			copy(out[:], mac)
		}
	}
	return out
}

// nicInfo lists so's TAP NICs and who serves their queues, as its VMM
// reports in devices (nil: it did not answer).
func nicInfo(spec Spec, devs []vmmctl.Device, asked bool) []NICInfo {
	reported := map[string]string{}
	for _, d := range devs {
		if d.Kind == "net" {
			reported[d.ID] = d.Vhost
		}
	}
	var out []NICInfo
	for _, n := range withNICDefaults(spec) {
		if n.User {
			continue
		}
		ni := NICInfo{ID: n.ID, TAP: n.TAP, Vhost: "unknown"}
		if asked {
			switch v := reported[n.ID]; v {
			case "":
				ni.Vhost = VhostOff
			case "on", "ready", "fallback", "off":
				ni.Vhost = v
			}
		}
		out = append(out, ni)
	}
	return out
}
