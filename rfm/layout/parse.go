package layout

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"rainforest/internal/units"
	"rainforest/ledger"
)

// Errors Parse returns (wrapped; test with errors.Is).
var (
	// ErrTooLarge means the layout file is larger than the limit.
	ErrTooLarge = errors.New("layout file too large")
	// ErrSyntax means the layout file is not a well-formed layout: bad
	// YAML, an unknown or repeated field, or a value of the wrong kind.
	ErrSyntax = errors.New("invalid layout file")
)

// ParseError is one thing wrong with a layout file's text, at a line.
type ParseError struct {
	Line    int    // 1-based; 0 when unknown
	Path    string // where in the layout, e.g. "subos[1].disks[0]"; "" for the top
	Message string
}

func (e *ParseError) Error() string {
	var b strings.Builder
	if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Path != "" {
		b.WriteString(e.Path + ": ")
	}
	b.WriteString(e.Message)
	return b.String()
}

// Unwrap makes every ParseError an ErrSyntax.
func (e *ParseError) Unwrap() error { return ErrSyntax }

// Parse reads a layout file of at most maxBytes bytes (DefaultMaxBytes
// when maxBytes <= 0). It is strict: unknown and repeated fields, values of
// the wrong kind, anchors/aliases and more than one YAML document are
// errors. It reports every such error it finds, joined, each a *ParseError
// naming its line; they all match ErrSyntax. Beyond bounds that keep a
// small file small (CPU numbers up to MaxCPU, at most MaxSubOSes subOSes, a
// node is not negative), Parse does not judge the values (names, cores,
// alignment, files): Layout.Check does.
func Parse(r io.Reader, maxBytes int64) (*Layout, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	limit := maxBytes
	if limit < math.MaxInt64 {
		limit++ // one more byte tells an oversized file
	}
	data, err := io.ReadAll(io.LimitReader(r, limit))
	if err != nil {
		return nil, fmt.Errorf("layout: read: %w", err)
	}
	if int64(len(data)) > maxBytes {
		return nil, fmt.Errorf("layout: %w: more than %d bytes", ErrTooLarge, maxBytes)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("layout: %w", &ParseError{Message: "the file is empty"})
		}
		return nil, fmt.Errorf("layout: %w", &ParseError{Message: err.Error()})
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, fmt.Errorf("layout: %w", &ParseError{Line: extra.Line, Message: "more than one YAML document"})
	} else if !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("layout: %w", &ParseError{Message: err.Error()})
	}
	p := &parser{}
	l := p.layout(&doc)
	if len(p.errs) > 0 {
		return nil, fmt.Errorf("layout: %w", errors.Join(p.errs...))
	}
	return l, nil
}

// parser walks the YAML node tree and collects every error.
type parser struct {
	errs []error
	// cpuEntries counts the CPUs listed so far in the layout, against
	// maxCPUEntries, so that cpulist ranges cannot blow up a small file.
	cpuEntries int
}

// MaxCPU is the largest CPU number a layout may name (Linux supports at
// most 8192 CPUs).
const MaxCPU = units.MaxCPU

// MaxSubOSes is the most subOSes a layout may have.
const MaxSubOSes = 1024

// maxCPUEntries bounds the CPUs listed in a whole layout: twice every CPU
// there can be, enough to list each once and still report overlaps.
const maxCPUEntries = 2 * (MaxCPU + 1)

func (p *parser) errorf(n *yaml.Node, path, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	p.errs = append(p.errs, &ParseError{Line: line, Path: path, Message: fmt.Sprintf(format, args...)})
}

// field is one known key of a mapping and what to do with its value.
type field struct {
	name string
	set  func(v *yaml.Node, path string)
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// usable reports whether n can be looked at (not an alias), reporting
// aliases.
func (p *parser) usable(n *yaml.Node, path string) bool {
	if n.Kind == yaml.AliasNode || n.Anchor != "" {
		p.errorf(n, path, "anchors and aliases are not supported")
		return false
	}
	return true
}

// mapping applies fields to the mapping n; a null n is an empty mapping.
func (p *parser) mapping(n *yaml.Node, path string, fields []field) {
	if !p.usable(n, path) || isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		p.errorf(n, path, "want a mapping of fields, got %s", describe(n))
		return
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			p.errorf(k, path, "field names must be plain words, got %s", describe(k))
			continue
		}
		if line, dup := seen[k.Value]; dup {
			p.errorf(k, path, "field %q repeated (first on line %d)", k.Value, line)
			continue
		}
		seen[k.Value] = k.Line
		var f *field
		for j := range fields {
			if fields[j].name == k.Value {
				f = &fields[j]
			}
		}
		if f == nil {
			names := make([]string, len(fields))
			for j := range fields {
				names[j] = fields[j].name
			}
			p.errorf(k, path, "unknown field %q (known: %s)", k.Value, strings.Join(names, ", "))
			continue
		}
		if p.usable(v, join(path, k.Value)) {
			f.set(v, join(path, k.Value))
		}
	}
}

// sequence calls each for every item of the sequence n; a null n is empty.
func (p *parser) sequence(n *yaml.Node, path string, each func(item *yaml.Node, path string)) {
	if isNull(n) {
		return
	}
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, path, "want a list, got %s", describe(n))
		return
	}
	for i, item := range n.Content {
		ip := fmt.Sprintf("%s[%d]", path, i)
		if p.usable(item, ip) {
			each(item, ip)
		}
	}
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if isNull(n) {
			return "nothing"
		}
		return strconv.Quote(n.Value)
	default:
		return "an alias"
	}
}

func (p *parser) scalar(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		p.errorf(n, path, "want a value, got %s", describe(n))
		return "", false
	}
	return n.Value, true
}

func (p *parser) str(n *yaml.Node, path string, dst *string) {
	if v, ok := p.scalar(n, path); ok {
		*dst = v
	}
}

// strings reads a sequence of strings.
func (p *parser) strings(n *yaml.Node, path string, dst *[]string) {
	p.sequence(n, path, func(item *yaml.Node, ip string) {
		var v string
		p.str(item, ip, &v)
		*dst = append(*dst, v)
	})
}

func (p *parser) integer(n *yaml.Node, path string) (int, bool) {
	v, ok := p.scalar(n, path)
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(v)
	if err != nil {
		p.errorf(n, path, "want a whole number, got %q", v)
		return 0, false
	}
	return i, true
}

// count reads a whole number of 0 or more.
func (p *parser) count(n *yaml.Node, path string, dst *uint64) {
	if c, ok := p.integer(n, path); ok {
		if c < 0 {
			p.errorf(n, path, "want 0 or more, got %d", c)
			return
		}
		*dst = uint64(c)
	}
}

// duration reads a Go duration ("5ms", "1.5s").
func (p *parser) duration(n *yaml.Node, path string, dst *time.Duration) {
	v, ok := p.scalar(n, path)
	if !ok {
		return
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		p.errorf(n, path, "want a duration such as 5ms or 10s, got %q", v)
		return
	}
	*dst = d
}

func (p *parser) boolean(n *yaml.Node, path string, dst *bool) {
	v, ok := p.scalar(n, path)
	if !ok {
		return
	}
	switch v {
	case "true", "True", "TRUE":
		*dst = true
	case "false", "False", "FALSE":
		*dst = false
	default:
		p.errorf(n, path, "want true or false, got %q", v)
	}
}

func (p *parser) size(n *yaml.Node, path string, dst *uint64) {
	v, ok := p.scalar(n, path)
	if !ok {
		return
	}
	s, err := units.ParseSize(v)
	if err != nil {
		p.errorf(n, path, "%v", err)
		return
	}
	*dst = s
}

// cpuList reads a list of CPU numbers, either a YAML list of integers or
// a string in the kernel's cpulist form ("2-5,8", see internal/units).
func (p *parser) cpuList(n *yaml.Node, path string, dst *[]int) {
	if n.Kind == yaml.ScalarNode && !isNull(n) {
		cpus, err := units.ParseCPUList(n.Value)
		if err != nil {
			p.errorf(n, path, "%v", err)
			return
		}
		if p.cpuEntries+len(cpus) > maxCPUEntries {
			p.errorf(n, path, "too many CPUs listed in the layout (more than %d)", maxCPUEntries)
			return
		}
		p.cpuEntries += len(cpus)
		*dst = cpus
		return
	}
	out := []int{}
	p.sequence(n, path, func(item *yaml.Node, ip string) {
		c, ok := p.integer(item, ip)
		switch {
		case !ok:
		case c < 0 || c > MaxCPU:
			p.errorf(item, ip, "cpu %d is out of range (0 to %d)", c, MaxCPU)
		case p.cpuEntries >= maxCPUEntries:
			p.errorf(item, ip, "too many CPUs listed in the layout (more than %d)", maxCPUEntries)
		default:
			p.cpuEntries++
			out = append(out, c)
		}
	})
	*dst = out
}

func (p *parser) layout(doc *yaml.Node) *Layout {
	l := &Layout{}
	root := doc
	if doc.Kind == yaml.DocumentNode {
		if len(doc.Content) != 1 {
			p.errorf(doc, "", "the file is empty")
			return l
		}
		root = doc.Content[0]
	}
	if isNull(root) {
		p.errorf(root, "", "the file is empty")
		return l
	}
	type pending struct {
		n    *yaml.Node
		path string
	}
	var subs []pending
	p.mapping(root, "", []field{
		{"supervisor", func(v *yaml.Node, path string) {
			p.mapping(v, path, []field{
				{"cores", func(v *yaml.Node, path string) { p.cpuList(v, path, &l.Supervisor.Cores) }},
			})
		}},
		{"defaults", func(v *yaml.Node, path string) {
			p.mapping(v, path, []field{
				{"kernel", func(v *yaml.Node, path string) { p.str(v, path, &l.Defaults.Kernel) }},
				{"initrd", func(v *yaml.Node, path string) { p.str(v, path, &l.Defaults.Initrd) }},
				{"page_size", func(v *yaml.Node, path string) { p.size(v, path, &l.Defaults.PageSize) }},
			})
		}},
		{"networks", func(v *yaml.Node, path string) {
			p.sequence(v, path, func(item *yaml.Node, ip string) {
				var nw Network
				p.mapping(item, ip, []field{
					{"name", func(v *yaml.Node, path string) { p.str(v, path, &nw.Name) }},
					{"bridge", func(v *yaml.Node, path string) { p.str(v, path, &nw.Bridge) }},
					{"create", func(v *yaml.Node, path string) { p.boolean(v, path, &nw.Create) }},
					{"address", func(v *yaml.Node, path string) { p.str(v, path, &nw.Address) }},
					{"loop", func(v *yaml.Node, path string) { p.boolean(v, path, &nw.Loop) }},
					{"subnet", func(v *yaml.Node, path string) { p.str(v, path, &nw.Subnet) }},
				})
				switch {
				case nw.Name == "":
					p.errorf(item, ip, "a network needs a name")
				case nw.Loop && (nw.Bridge != "" || nw.Create || nw.Address != ""):
					p.errorf(item, ip, "a loop network has no bridge, create or address (subnet: gives its addresses)")
				case !nw.Loop && nw.Subnet != "":
					p.errorf(item, ip, "subnet is for a loop network (loop: true)")
				case nw.Name == DefaultLoopNetwork && !nw.Loop:
					p.errorf(item, ip, "network %q is the loop network of loop: true; name a bridge network otherwise", nw.Name)
				}
				if nw.Bridge == "" && !nw.Loop {
					nw.Bridge = nw.Name
				}
				l.Networks = append(l.Networks, nw)
			})
		}},
		{"subos", func(v *yaml.Node, path string) {
			// Defaults may come later in the file: apply them after.
			p.sequence(v, path, func(item *yaml.Node, ip string) {
				if len(subs) == MaxSubOSes {
					p.errorf(item, ip, "more than %d subOSes", MaxSubOSes)
				}
				if len(subs) < MaxSubOSes {
					subs = append(subs, pending{item, ip})
				}
			})
		}},
	})
	for _, sub := range subs {
		l.SubOSes = append(l.SubOSes, p.subOS(sub.n, sub.path, l.Defaults, l.Networks))
	}
	l.fillLoopMembers()
	return l
}

// fillLoopMembers gives every loop NIC its network's members: the
// subOSes with a NIC on it, in file order.
func (l *Layout) fillLoopMembers() {
	members := map[string][]string{}
	for _, so := range l.SubOSes {
		for _, n := range so.Nets {
			if n.Loop != "" && !slices.Contains(members[n.Loop], so.Name) {
				members[n.Loop] = append(members[n.Loop], so.Name)
			}
		}
	}
	for i := range l.SubOSes {
		for j := range l.SubOSes[i].Nets {
			if n := &l.SubOSes[i].Nets[j]; n.Loop != "" {
				n.LoopMembers = slices.Clone(members[n.Loop])
			}
		}
	}
}

func (p *parser) subOS(n *yaml.Node, path string, d Defaults, networks []Network) SubOS {
	s := SubOS{Node: -1, Kernel: d.Kernel, Initrd: d.Initrd, PageSize: d.PageSize}
	if s.PageSize == 0 {
		s.PageSize = DefaultPageSize
	}
	if isNull(n) {
		p.errorf(n, path, "empty subos entry")
		return s
	}
	p.mapping(n, path, []field{
		{"name", func(v *yaml.Node, path string) { p.str(v, path, &s.Name) }},
		{"cpus", func(v *yaml.Node, path string) {
			if c, ok := p.integer(v, path); ok {
				s.CPUs = c
			}
		}},
		{"cores", func(v *yaml.Node, path string) { p.cpuList(v, path, &s.Cores) }},
		{"max_cpus", func(v *yaml.Node, path string) {
			if c, ok := p.integer(v, path); ok {
				s.MaxCPUs = c
			}
		}},
		{"node", func(v *yaml.Node, path string) {
			if c, ok := p.integer(v, path); ok {
				s.Node = c
				if c < 0 {
					// -1 would silently mean "any": refuse it here.
					p.errorf(v, path, "want a node number (0 or more), got %d", c)
				}
			}
		}},
		{"memory", func(v *yaml.Node, path string) { p.size(v, path, &s.Memory) }},
		{"max_memory", func(v *yaml.Node, path string) { p.size(v, path, &s.MaxMemory) }},
		{"page_size", func(v *yaml.Node, path string) { p.size(v, path, &s.PageSize) }},
		{"kernel", func(v *yaml.Node, path string) { p.str(v, path, &s.Kernel) }},
		{"initrd", func(v *yaml.Node, path string) { p.str(v, path, &s.Initrd) }},
		{"disks", func(v *yaml.Node, path string) {
			p.sequence(v, path, func(item *yaml.Node, ip string) {
				var d Disk
				p.mapping(item, ip, []field{
					{"id", func(v *yaml.Node, path string) { p.str(v, path, &d.ID) }},
					{"path", func(v *yaml.Node, path string) { p.str(v, path, &d.Path) }},
					{"readonly", func(v *yaml.Node, path string) { p.boolean(v, path, &d.ReadOnly) }},
					{"direct", func(v *yaml.Node, path string) { p.boolean(v, path, &d.Direct) }},
					{"iops", func(v *yaml.Node, path string) { p.count(v, path, &d.IOPS.Rate) }},
					{"iops_burst", func(v *yaml.Node, path string) { p.count(v, path, &d.IOPS.Burst) }},
					{"bandwidth", func(v *yaml.Node, path string) { p.size(v, path, &d.Bandwidth.Rate) }},
					{"bandwidth_burst", func(v *yaml.Node, path string) { p.size(v, path, &d.Bandwidth.Burst) }},
				})
				s.Disks = append(s.Disks, d)
			})
		}},
		{"devices", func(v *yaml.Node, path string) {
			p.sequence(v, path, func(item *yaml.Node, ip string) {
				var dev string
				p.str(item, ip, &dev)
				s.Devices = append(s.Devices, strings.ToLower(dev))
			})
		}},
		{"cmdline_append", func(v *yaml.Node, path string) { p.str(v, path, &s.CmdlineAppend) }},
		{"ssh_keys", func(v *yaml.Node, path string) { p.strings(v, path, &s.SSHKeys) }},
		{"class", func(v *yaml.Node, path string) {
			var c string
			p.str(v, path, &c)
			s.Class = ledger.Class(c)
		}},
		{"autoscale", func(v *yaml.Node, path string) {
			a := &Autoscale{}
			p.mapping(v, path, []field{
				{"lower", func(v *yaml.Node, path string) { p.duration(v, path, &a.Lower) }},
				{"upper", func(v *yaml.Node, path string) { p.duration(v, path, &a.Upper) }},
				{"window", func(v *yaml.Node, path string) { p.duration(v, path, &a.Window) }},
				{"cooldown", func(v *yaml.Node, path string) { p.duration(v, path, &a.Cooldown) }},
				{"min_cpus", func(v *yaml.Node, path string) {
					if c, ok := p.integer(v, path); ok {
						a.MinCPUs = c
					}
				}},
				{"max_cpus", func(v *yaml.Node, path string) {
					if c, ok := p.integer(v, path); ok {
						a.MaxCPUs = c
					}
				}},
			})
			s.Autoscale = a
		}},
		{"nets", func(v *yaml.Node, path string) {
			p.sequence(v, path, func(item *yaml.Node, ip string) {
				var nic NIC
				p.mapping(item, ip, []field{
					{"network", func(v *yaml.Node, path string) { p.str(v, path, &nic.Network) }},
					{"bridge", func(v *yaml.Node, path string) { p.str(v, path, &nic.Bridge) }},
					{"tap", func(v *yaml.Node, path string) { p.str(v, path, &nic.TAP) }},
					{"mac", func(v *yaml.Node, path string) { p.str(v, path, &nic.MAC) }},
					{"id", func(v *yaml.Node, path string) { p.str(v, path, &nic.ID) }},
					{"user", func(v *yaml.Node, path string) { p.boolean(v, path, &nic.User) }},
					{"host_loopback", func(v *yaml.Node, path string) { p.boolean(v, path, &nic.HostLoopback) }},
					{"publish", func(v *yaml.Node, path string) { p.strings(v, path, &nic.Publish) }},
					{"ip", func(v *yaml.Node, path string) {
						p.str(v, path, &nic.IP)
						if a, err := netip.ParsePrefix(nic.IP); err != nil || !a.Addr().Is4() {
							p.errorf(v, path, "%q: want an IPv4 address with its prefix length, such as 10.77.0.2/24", nic.IP)
						}
					}},
					{"vhost", func(v *yaml.Node, path string) {
						p.str(v, path, &nic.Vhost)
						switch nic.Vhost {
						case "auto", "on", "off":
						default:
							p.errorf(v, path, "%q: want auto, on or off", nic.Vhost)
						}
					}},
				})
				switch {
				case nic.Network != "" && nic.Bridge != "":
					p.errorf(item, ip, "give network or bridge, not both")
				case nic.Network != "":
					i := slices.IndexFunc(networks, func(nw Network) bool { return nw.Name == nic.Network })
					switch {
					case i < 0:
						p.errorf(item, ip, "network %q is not in the layout's networks", nic.Network)
					case networks[i].Loop:
						if nic.TAP != "" || nic.MAC != "" || nic.User {
							p.errorf(item, ip, "a NIC on loop network %q takes the tap, mac and address the network gives it", nic.Network)
						}
						nic.Loop, nic.LoopSubnet = nic.Network, networks[i].Subnet
					default:
						nw := networks[i]
						nic.Bridge, nic.CreateBridge, nic.BridgeAddress = nw.Bridge, nw.Create, nw.Address
					}
				case nic.Bridge == "" && nic.TAP == "" && !nic.User:
					p.errorf(item, ip, "give network, bridge, tap or user")
				}
				s.Nets = append(s.Nets, nic)
			})
		}},
		{"loop", func(v *yaml.Node, path string) {
			var on bool
			p.boolean(v, path, &on)
			if on {
				i := slices.IndexFunc(networks, func(nw Network) bool { return nw.Name == DefaultLoopNetwork })
				var subnet string
				if i >= 0 {
					subnet = networks[i].Subnet
				}
				s.Nets = append(s.Nets, NIC{Loop: DefaultLoopNetwork, LoopSubnet: subnet})
			}
		}},
		{"ports", func(v *yaml.Node, path string) {
			var ports []string
			p.strings(v, path, &ports)
			// On the first NIC on the uplink, made when there is none.
			i := slices.IndexFunc(s.Nets, func(n NIC) bool { return n.User })
			if i < 0 {
				s.Nets = append(s.Nets, NIC{User: true})
				i = len(s.Nets) - 1
			}
			s.Nets[i].Publish = append(s.Nets[i].Publish, ports...)
		}},
		{"segments", func(v *yaml.Node, path string) {
			p.sequence(v, path, func(item *yaml.Node, ip string) {
				var g Segment
				p.mapping(item, ip, []field{
					{"name", func(v *yaml.Node, path string) { p.str(v, path, &g.Name) }},
					{"size", func(v *yaml.Node, path string) { p.size(v, path, &g.Size) }},
					{"readonly", func(v *yaml.Node, path string) { p.boolean(v, path, &g.ReadOnly) }},
				})
				s.Segments = append(s.Segments, g)
			})
		}},
		{"shares", func(v *yaml.Node, path string) {
			p.sequence(v, path, func(item *yaml.Node, ip string) {
				var sh Share
				p.mapping(item, ip, []field{
					{"id", func(v *yaml.Node, path string) { p.str(v, path, &sh.ID) }},
					{"path", func(v *yaml.Node, path string) { p.str(v, path, &sh.Path) }},
					{"tag", func(v *yaml.Node, path string) { p.str(v, path, &sh.Tag) }},
					{"readonly", func(v *yaml.Node, path string) { p.boolean(v, path, &sh.ReadOnly) }},
					{"allow_root", func(v *yaml.Node, path string) { p.boolean(v, path, &sh.AllowRoot) }},
				})
				s.Shares = append(s.Shares, sh)
			})
		}},
	})
	return s
}
