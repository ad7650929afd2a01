package layout

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"rainforest/internal/units"
	"rainforest/ledger"
	"rainforest/partitioner"
	"rainforest/rfm/autoscale"
	"rainforest/rfm/share"
	"rainforest/vmm/config"
	"rainforest/vmm/ram"
)

// Checker is the ledger as Check uses it; *ledger.Ledger satisfies it.
//
// Check reserves on it every subOS that it accepts, so that each later
// subOS of the layout is checked against the earlier ones (two subOSes that
// together want more cores or memory than there is, or devices of one
// IOMMU group, are caught). Give Check a scratch copy of the ledger's state,
// never the live ledger.
type Checker interface {
	// Check lists everything wrong with req; it changes nothing.
	Check(req ledger.Request) []ledger.Problem
	// Reserve records req's resources as taken.
	Reserve(req ledger.Request) (ledger.Allocation, error)
}

var _ Checker = (*ledger.Ledger)(nil)

var namePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

var pciAddressPattern = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$`)

// Housekeeping returns the supervisor's housekeeping cores: the layout's
// supervisor.cores, or else the first online CPU of inv (nil when inv has
// none).
func (l *Layout) Housekeeping(inv *partitioner.Inventory) []int {
	if len(l.Supervisor.Cores) > 0 {
		return slices.Clone(l.Supervisor.Cores)
	}
	if inv == nil {
		return nil
	}
	for _, c := range inv.CPUs {
		if c.Online {
			return []int{c.ID}
		}
	}
	return nil
}

// Check lists every problem of l, in layout order: problems of the
// supervisor and defaults first, then each subOS's. It looks at the names,
// cores (existence, online, the supervisor's, overlaps between subOSes),
// nodes, memory and page sizes, kernel, initrd and disk files (os.Stat),
// devices, and the command line; then it asks c about each subOS's
// resources, cumulatively (see Checker). Problems the checker reports for
// a field that Check already found wrong are left out, so each shows once.
//
// inv may be nil (no inventory checks) and c may be nil (no ledger checks).
func (l *Layout) Check(inv *partitioner.Inventory, c Checker) []Problem {
	ck := &checker{l: l, inv: inv}
	ck.housekeeping = l.Housekeeping(inv)
	ck.supervisor()
	ck.file(-1, "", "defaults.kernel", l.Defaults.Kernel, false)
	ck.file(-1, "", "defaults.initrd", l.Defaults.Initrd, false)
	if l.Defaults.PageSize != 0 {
		if msg := pageSizeProblem(l.Defaults.PageSize); msg != "" {
			ck.add(-1, "", "defaults.page_size", "%s", msg)
		}
	}
	for i := range l.SubOSes {
		ck.subOS(i)
	}
	ck.crossSubOS()
	if c != nil {
		ck.ledger(c)
	}
	slices.SortStableFunc(ck.probs, func(a, b Problem) int { return a.Index - b.Index })
	return ck.probs
}

type checker struct {
	l            *Layout
	inv          *partitioner.Inventory
	housekeeping []int
	probs        []Problem
}

func (ck *checker) add(index int, name, field, format string, args ...any) {
	ck.probs = append(ck.probs, Problem{Index: index, SubOS: name, Field: field, Message: fmt.Sprintf(format, args...)})
}

func (ck *checker) cpu(id int) (partitioner.CPU, bool) {
	for _, c := range ck.inv.CPUs {
		if c.ID == id {
			return c, true
		}
	}
	return partitioner.CPU{}, false
}

// cpuProblem says what is wrong with host CPU id, "" when nothing.
func (ck *checker) cpuProblem(id int) string {
	if ck.inv == nil {
		return ""
	}
	c, ok := ck.cpu(id)
	switch {
	case !ok:
		return fmt.Sprintf("core %d does not exist (this machine has %s)", id, ck.cpuRange())
	case !c.Online:
		return fmt.Sprintf("core %d is offline", id)
	}
	return ""
}

func (ck *checker) cpuRange() string {
	ids := make([]int, 0, len(ck.inv.CPUs))
	for _, c := range ck.inv.CPUs {
		ids = append(ids, c.ID)
	}
	if len(ids) == 0 {
		return "no CPUs"
	}
	return "CPUs " + units.FormatCPUList(ids)
}

func (ck *checker) supervisor() {
	seen := map[int]bool{}
	for _, id := range ck.l.Supervisor.Cores {
		if seen[id] {
			ck.add(-1, "", "supervisor.cores", "core %d is listed twice", id)
			continue
		}
		seen[id] = true
		if msg := ck.cpuProblem(id); msg != "" {
			ck.add(-1, "", "supervisor.cores", "%s", msg)
		}
	}
	if ck.inv != nil && len(ck.housekeeping) == 0 {
		ck.add(-1, "", "supervisor.cores", "no online CPU for the supervisor")
	}
}

// file checks that path names an existing regular file (or a block device
// when device is true). An empty path is not checked.
func (ck *checker) file(index int, name, field, path string, device bool) {
	if path == "" {
		return
	}
	fi, err := os.Stat(path)
	if err != nil {
		switch {
		case os.IsNotExist(err):
			ck.add(index, name, field, "%s does not exist", path)
		case os.IsPermission(err):
			ck.add(index, name, field, "%s: permission denied", path)
		default:
			ck.add(index, name, field, "%v", err)
		}
		return
	}
	mode := fi.Mode()
	switch {
	case mode.IsRegular():
	case device && mode&fs.ModeDevice != 0 && mode&fs.ModeCharDevice == 0:
	case mode.IsDir():
		ck.add(index, name, field, "%s is a directory, not a file", path)
	default:
		ck.add(index, name, field, "%s is not a regular file", path)
	}
}

func pageSizeProblem(size uint64) string {
	switch {
	case size == PageSize2M || size == PageSize1G:
		return ""
	case size < PageSize2M:
		return fmt.Sprintf("%s pages are not supported: subOS memory is backed by hugepages; use 2M or 1G", units.FormatSize(size))
	default:
		return fmt.Sprintf("%s is not a hugepage size; use 2M or 1G", units.FormatSize(size))
	}
}

// pageSizeOffered reports whether some node of inv has a pool of size, or
// whether inv does not say (no pools listed at all).
func (ck *checker) pageSizeOffered(size uint64) bool {
	listed := false
	for _, n := range ck.inv.Nodes {
		for _, hp := range n.HugePages {
			listed = true
			if hp.PageSize == size {
				return true
			}
		}
	}
	return !listed
}

func (ck *checker) node(id int) (partitioner.Node, bool) {
	for _, n := range ck.inv.Nodes {
		if n.ID == id {
			return n, true
		}
	}
	return partitioner.Node{}, false
}

func (ck *checker) subOS(i int) {
	s := ck.l.SubOSes[i]
	add := func(field, format string, args ...any) { ck.add(i, s.Name, field, format, args...) }

	// Name.
	switch {
	case s.Name == "":
		add("name", "missing")
	case s.Name == ledger.Supervisor:
		add("name", "%q is reserved for the supervisor", s.Name)
	case !namePattern.MatchString(s.Name):
		add("name", "%q is not a valid name: use 1 to 32 of a-z, 0-9 and '-', not starting with '-'", s.Name)
	}

	// Cores.
	switch {
	case s.CPUs < 0:
		add("cpus", "%d: want at least 1", s.CPUs)
	case len(s.Cores) == 0 && s.CPUs == 0:
		add("cpus", "missing: give cpus (how many) or cores (which host CPUs)")
	case len(s.Cores) > 0 && s.CPUs != 0 && s.CPUs != len(s.Cores):
		add("cpus", "%d does not match the %d cores listed in cores; give one of them", s.CPUs, len(s.Cores))
	}
	if size := max(s.CPUs, len(s.Cores)); s.MaxCPUs != 0 && (s.MaxCPUs < size || s.MaxCPUs > config.MaxCores) {
		add("max_cpus", "%d: want from the subOS's %d cpus to %d", s.MaxCPUs, size, config.MaxCores)
	}
	if s.Memory != 0 {
		if msg := config.MaxMemoryProblem(s.Memory, s.MaxMemory, ram.PageSize(s.PageSize)); msg != "" {
			add("max_memory", "%s", msg)
		}
	}
	switch s.Class {
	case "", ledger.Batch, ledger.LatencyCritical:
	default:
		add("class", "unknown class %q: want %q or %q", s.Class, ledger.LatencyCritical, ledger.Batch)
	}
	if a := s.Autoscale; a != nil {
		if s.Class != ledger.LatencyCritical {
			add("autoscale", "only a %s subOS autoscales (set class: %s)", ledger.LatencyCritical, ledger.LatencyCritical)
		}
		if a.MaxCPUs > 0 && s.MaxCPUs > 0 && a.MaxCPUs > s.MaxCPUs {
			add("autoscale.max_cpus", "%d is above the subOS's max_cpus %d", a.MaxCPUs, s.MaxCPUs)
		}
		name := s.Name
		if !namePattern.MatchString(name) {
			name = "subos"
		}
		if err := (autoscale.Config{Targets: []autoscale.Target{a.Target(name)}}).Validate(); err != nil {
			errs := []error{err}
			if j, ok := err.(interface{ Unwrap() []error }); ok {
				errs = j.Unwrap()
			}
			for _, e := range errs {
				msg := strings.TrimPrefix(e.Error(), "autoscale: ")
				add("autoscale", "%s", strings.TrimSuffix(msg, ": "+autoscale.ErrConfig.Error()))
			}
		}
	}
	seen := map[int]bool{}
	for _, id := range s.Cores {
		if seen[id] {
			add("cores", "core %d is listed twice", id)
			continue
		}
		seen[id] = true
		if slices.Contains(ck.housekeeping, id) {
			add("cores", "core %d is the supervisor's housekeeping core", id)
		} else if msg := ck.cpuProblem(id); msg != "" {
			add("cores", "%s", msg)
		}
	}
	if len(s.Cores) == 0 && s.CPUs > 0 && ck.inv != nil {
		free := 0
		for _, c := range ck.inv.CPUs {
			if c.Online && !slices.Contains(ck.housekeeping, c.ID) {
				free++
			}
		}
		if s.CPUs > free {
			add("cpus", "%d wanted, but this machine has only %d online cores besides the supervisor's", s.CPUs, free)
		}
	}

	// Node and memory.
	var node *partitioner.Node
	switch {
	case s.Node < -1:
		add("node", "%d: want a node number (0 or more)", s.Node)
	case s.Node >= 0 && ck.inv != nil:
		if n, ok := ck.node(s.Node); ok {
			node = &n
		} else {
			ids := make([]int, 0, len(ck.inv.Nodes))
			for _, n := range ck.inv.Nodes {
				ids = append(ids, n.ID)
			}
			add("node", "node %d does not exist (this machine has nodes %s)", s.Node, units.FormatCPUList(ids))
		}
	}
	pageOK := false
	switch {
	case s.PageSize == 0:
		add("page_size", "missing")
	default:
		if msg := pageSizeProblem(s.PageSize); msg != "" {
			add("page_size", "%s", msg)
		} else if ck.inv != nil && !ck.pageSizeOffered(s.PageSize) {
			add("page_size", "this machine has no %s hugepages", units.FormatSize(s.PageSize))
		} else {
			pageOK = true
		}
	}
	switch {
	case s.Memory == 0:
		add("memory", "missing (e.g. memory: 512M)")
	case pageOK && s.Memory%s.PageSize != 0:
		add("memory", "%s is not a multiple of the %s page size", units.FormatSize(s.Memory), units.FormatSize(s.PageSize))
	case node != nil && node.MemTotal > 0 && s.Memory > node.MemTotal:
		add("memory", "%s is more than node %d's %s", units.FormatSize(s.Memory), node.ID, units.FormatSize(node.MemTotal))
	case node == nil && ck.inv != nil:
		var total uint64
		for _, n := range ck.inv.Nodes {
			total += n.MemTotal
		}
		if total > 0 && s.Memory > total {
			add("memory", "%s is more than the machine's %s", units.FormatSize(s.Memory), units.FormatSize(total))
		}
	}

	// Files.
	if s.Kernel == "" {
		add("kernel", "missing: set defaults.kernel or the subOS's kernel")
	} else if s.Kernel != ck.l.Defaults.Kernel {
		ck.file(i, s.Name, "kernel", s.Kernel, false)
	}
	if s.Initrd != ck.l.Defaults.Initrd {
		ck.file(i, s.Name, "initrd", s.Initrd, false)
	}
	for j, k := range s.SSHKeys {
		ck.file(i, s.Name, fmt.Sprintf("ssh_keys[%d]", j), k, false)
	}
	segs := map[string]int{}
	for j, g := range s.Segments {
		field := fmt.Sprintf("segments[%d]", j)
		switch {
		case g.Name == "":
			add(field+".name", "missing")
		case !namePattern.MatchString(g.Name):
			add(field+".name", "%q is not a valid name: use 1 to 32 of a-z, 0-9 and '-', not starting with '-'", g.Name)
		}
		if k, dup := segs[g.Name]; dup && g.Name != "" {
			add(field+".name", "%q is also segments[%d]", g.Name, k)
		}
		segs[g.Name] = j
		if g.Size%4096 != 0 || g.Size > MaxSegmentSize {
			add(field+".size", "%s: want a multiple of 4 KiB up to %s", units.FormatSize(g.Size), units.FormatSize(MaxSegmentSize))
		}
	}
	disks := map[string]int{}
	for j, d := range s.Disks {
		field := fmt.Sprintf("disks[%d].path", j)
		if d.Path == "" {
			add(field, "missing")
			continue
		}
		key := diskKey(d.Path)
		if k, dup := disks[key]; dup {
			add(field, "%s is also disks[%d]", d.Path, k)
			continue
		}
		disks[key] = j
		ck.file(i, s.Name, field, d.Path, true)
		if err := d.Check(); err != nil {
			add(fmt.Sprintf("disks[%d]", j), "%v", err)
		}
	}

	// Shares: directories that exist, tags unique and mountable, / only
	// with allow_root.
	for _, p := range share.Problems("shares", s.Shares) {
		add(p.Field, "%s", p.Message)
	}

	// Devices.
	devs := map[string]bool{}
	for _, addr := range s.Devices {
		switch {
		case !pciAddressPattern.MatchString(addr):
			add("devices", "%q is not a PCI address (want domain:bus:slot.function, e.g. 0000:00:1f.2)", addr)
		case devs[addr]:
			add("devices", "%s is listed twice", addr)
		case ck.inv != nil && !slices.ContainsFunc(ck.inv.Devices, func(d partitioner.PCIDevice) bool { return d.Address == addr }):
			add("devices", "%s does not exist on this machine", addr)
		}
		devs[addr] = true
	}

	// Command line.
	if len(s.CmdlineAppend) > MaxCmdlineAppend {
		add("cmdline_append", "%d bytes long; at most %d", len(s.CmdlineAppend), MaxCmdlineAppend)
	}
	if strings.ContainsFunc(s.CmdlineAppend, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		add("cmdline_append", "contains a control character (newline, tab, NUL, ...)")
	}
}

// diskKey identifies a disk path for overlap checks.
func diskKey(path string) string {
	return filepath.Clean(path)
}

// crossSubOS finds what two subOSes of the layout share: names, cores,
// devices, and disks written by either.
func (ck *checker) crossSubOS() {
	names := map[string]int{}
	cores := map[int]int{}
	devs := map[string]int{}
	type diskUse struct {
		index    int
		readOnly bool
	}
	disks := map[string]diskUse{}
	label := func(i int) string {
		if n := ck.l.SubOSes[i].Name; n != "" {
			return fmt.Sprintf("subos %q", n)
		}
		return fmt.Sprintf("subos[%d]", i)
	}
	type segUse struct {
		index, grants int
		size          uint64
	}
	segs := map[string]*segUse{}
	for i, s := range ck.l.SubOSes {
		add := func(field, format string, args ...any) { ck.add(i, s.Name, field, format, args...) }
		for j, g := range s.Segments {
			u := segs[g.Name]
			if u == nil {
				u = &segUse{index: i}
				segs[g.Name] = u
			}
			u.grants++
			if u.grants > MaxSegmentGrants {
				add(fmt.Sprintf("segments[%d].name", j), "segment %q is granted to more than %d subOSes", g.Name, MaxSegmentGrants)
			}
			switch {
			case g.Size == 0:
			case u.size == 0:
				u.size, u.index = g.Size, i
			case u.size != g.Size:
				add(fmt.Sprintf("segments[%d].size", j), "%s, but %s gives segment %q %s", units.FormatSize(g.Size), label(u.index), g.Name, units.FormatSize(u.size))
			}
		}
	}
	for i, s := range ck.l.SubOSes {
		for j, g := range s.Segments {
			if u := segs[g.Name]; g.Size == 0 && u.size == 0 && g.Name != "" {
				ck.add(i, s.Name, fmt.Sprintf("segments[%d].size", j), "no subOS gives segment %q a size", g.Name)
			}
		}
	}
	for i, s := range ck.l.SubOSes {
		add := func(field, format string, args ...any) { ck.add(i, s.Name, field, format, args...) }
		if s.Name != "" {
			if j, dup := names[s.Name]; dup {
				add("name", "%q is also the name of subos[%d]", s.Name, j)
			} else {
				names[s.Name] = i
			}
		}
		mine := map[int]bool{}
		for _, id := range s.Cores {
			if mine[id] {
				continue
			}
			mine[id] = true
			if j, taken := cores[id]; taken {
				add("cores", "core %d is also in %s", id, label(j))
			} else {
				cores[id] = i
			}
		}
		myDevs := map[string]bool{}
		for _, addr := range s.Devices {
			if myDevs[addr] {
				continue
			}
			myDevs[addr] = true
			if j, taken := devs[addr]; taken {
				add("devices", "%s is also passed to %s", addr, label(j))
			} else {
				devs[addr] = i
			}
		}
		myDisks := map[string]bool{}
		for k, d := range s.Disks {
			if d.Path == "" {
				continue
			}
			key := diskKey(d.Path)
			if myDisks[key] {
				continue
			}
			myDisks[key] = true
			if u, used := disks[key]; used {
				if !u.readOnly || !d.ReadOnly {
					add(fmt.Sprintf("disks[%d].path", k), "%s is also used by %s; subOSes may share a disk only when all of them have it readonly", d.Path, label(u.index))
				}
				if !d.ReadOnly {
					disks[key] = diskUse{i, false}
				}
			} else {
				disks[key] = diskUse{i, d.ReadOnly}
			}
		}
	}
	ck.loopNetworks()
}

// loopNetworks checks that every loop network has two members at least.
func (ck *checker) loopNetworks() {
	for i, s := range ck.l.SubOSes {
		for j, n := range s.Nets {
			if n.Loop != "" && len(n.LoopMembers) < 2 {
				ck.add(i, s.Name, fmt.Sprintf("nets[%d]", j), "loop network %q has one member (%s): a loop network needs at least two", n.Loop, s.Name)
			}
		}
	}
}

// fieldGroup maps a field to the group it is deduplicated in: the ledger
// and Check may word the same fault under cpus or cores.
func fieldGroup(field string) string {
	f := strings.ToLower(field)
	if f == "cpus" {
		return "cores"
	}
	if k, _, ok := strings.Cut(f, "["); ok {
		return k
	}
	return f
}

// ledger asks c about each subOS in order, reserving each one c accepts.
func (ck *checker) ledger(c Checker) {
	for i, s := range ck.l.SubOSes {
		local := map[string]bool{}
		for _, p := range ck.probs {
			if p.Index == i {
				local[fieldGroup(p.Field)] = true
			}
		}
		req := s.Request()
		probs := c.Check(req)
		for _, p := range probs {
			if local[fieldGroup(p.Field)] {
				continue
			}
			ck.add(i, s.Name, p.Field, "%s", p.Message)
		}
		if len(probs) > 0 {
			continue
		}
		if _, err := c.Reserve(req); err != nil {
			ck.add(i, s.Name, "", "the ledger refused it: %v", err)
		}
	}
}

// Scratch returns a copy of led's state to give Layout.Check: a new ledger
// over inv (the inventory led was made from) with led's housekeeping cores,
// pool capacities and allocations.
func Scratch(inv *partitioner.Inventory, led *ledger.Ledger) (*ledger.Ledger, error) {
	cp, err := ledger.New(inv, led.Housekeeping())
	if err != nil {
		return nil, fmt.Errorf("layout: scratch ledger: %w", err)
	}
	for _, n := range inv.Nodes {
		for _, ps := range []uint64{PageSize2M, PageSize1G} {
			if want := led.Capacity(n.ID, ps); want != cp.Capacity(n.ID, ps) {
				if err := cp.SetCapacity(n.ID, ps, want); err != nil {
					return nil, fmt.Errorf("layout: scratch ledger: %w", err)
				}
			}
		}
	}
	for _, a := range led.Allocations() {
		if err := cp.Adopt(a); err != nil {
			return nil, fmt.Errorf("layout: scratch ledger: %w", err)
		}
	}
	return cp, nil
}
