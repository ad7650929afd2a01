package actuator

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"rainforest/internal/units"
)

// Group is one subOS's cgroup, a directory in each hierarchy in use.
type Group struct {
	a         *Actuator
	name      string
	dirs      []string // parallel to a.hier
	exclusive bool
	note      string
}

// Name is the subOS name the group was made for.
func (g *Group) Name() string { return g.name }

// Path is the group's directory in the cpuset hierarchy.
func (g *Group) Path() string { return g.dirs[0] }

// Paths are the group's directories in every hierarchy, the cpuset one first.
func (g *Group) Paths() []string { return slices.Clone(g.dirs) }

// Exclusive reports whether the kernel holds the group's CPUs exclusively
// (v1 cpuset.cpu_exclusive=1, v2 a valid "root" partition).
func (g *Group) Exclusive() bool { return g.exclusive }

// ExclusiveNote says why the group is not exclusive; "" when it is.
func (g *Group) ExclusiveNote() string { return g.note }

// Cores reads the group's cpuset.cpus.
func (g *Group) Cores() ([]int, error) { return readList(filepath.Join(g.dirs[0], "cpuset.cpus")) }

// MemNodes reads the group's cpuset.mems.
func (g *Group) MemNodes() ([]int, error) { return readList(filepath.Join(g.dirs[0], "cpuset.mems")) }

func validName(name string) error {
	if !groupName.MatchString(name) {
		return fmt.Errorf("%w: group name %q (want [a-z0-9][a-z0-9-]{0,31})", ErrInvalid, name)
	}
	return nil
}

func validIDs(what string, ids []int) error {
	if len(ids) == 0 {
		return fmt.Errorf("%w: no %s given", ErrInvalid, what)
	}
	for _, id := range ids {
		if id < 0 {
			return fmt.Errorf("%w: negative %s %d", ErrInvalid, what, id)
		}
	}
	return nil
}

func (a *Actuator) parentDir(h hierarchy) string { return filepath.Join(h.root, a.cfg.Parent) }

func (a *Actuator) groupDirs(name string) []string {
	dirs := make([]string, len(a.hier))
	for i, h := range a.hier {
		dirs[i] = filepath.Join(a.parentDir(h), name)
	}
	return dirs
}

// CreateGroup makes the cgroup for subOS name with an exclusive cpuset of
// cores and memNodes, in every hierarchy in use. The parent group is made
// (or widened) to include the cores. Exclusivity is asked for and, where the
// kernel refuses it, recorded (Exclusive, ExclusiveNote) rather than failed.
// On error nothing the call made is left behind.
func (a *Actuator) CreateGroup(name string, cores []int, memNodes []int) (*Group, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	if err := validIDs("cores", cores); err != nil {
		return nil, err
	}
	if err := validIDs("memory nodes", memNodes); err != nil {
		return nil, err
	}
	cores, memNodes = normalize(cores), normalize(memNodes)

	a.mu.Lock()
	defer a.mu.Unlock()
	g := &Group{a: a, name: name, dirs: a.groupDirs(name)}
	for _, d := range g.dirs {
		if exists(d) {
			return nil, fmt.Errorf("%w: %s", ErrExists, d)
		}
	}
	if taken := minus(cores, minus(cores, childCPUs(a.parentDir(a.hier[0])))); len(taken) > 0 {
		return nil, fmt.Errorf("create group %s: %w: cores %s already in another group", name, ErrOverlap, units.FormatCPUList(taken))
	}
	var undo undoStack
	for i, h := range a.hier {
		if err := a.ensureParent(h, cores, memNodes, &undo); err != nil {
			return nil, undo.fail(fmt.Errorf("create group %s: %w", name, err))
		}
		dir := g.dirs[i]
		if err := a.mkdir(dir); err != nil {
			return nil, undo.fail(fmt.Errorf("create group %s: %w", name, err))
		}
		undo.push(func() error { return a.rmdir(dir) })
		if !h.has(cpusetController) {
			continue
		}
		// Memory nodes first: v1 needs both lists non-empty, and a
		// v1 cpuset refuses cpus before mems on some kernels' checks.
		if err := writeString(filepath.Join(dir, "cpuset.mems"), units.FormatCPUList(memNodes)); err != nil {
			return nil, undo.fail(fmt.Errorf("create group %s: %w", name, err))
		}
		if err := writeString(filepath.Join(dir, "cpuset.cpus"), units.FormatCPUList(cores)); err != nil {
			return nil, undo.fail(fmt.Errorf("create group %s: %w", name, err))
		}
		if h.v2 {
			g.exclusive, g.note = a.makePartition(h, dir, cores, &undo)
		} else {
			g.exclusive, g.note = a.makeExclusiveV1(h, dir, &undo)
		}
	}
	return g, nil
}

// ensureParent makes the parent group in h if needed, with the controllers
// enabled (v2) and, in the cpuset hierarchy, cpus and mems that include
// cores and memNodes.
func (a *Actuator) ensureParent(h hierarchy, cores, memNodes []int, undo *undoStack) error {
	parent := a.parentDir(h)
	if h.v2 {
		if err := enableControllers(h.root, h.controllers, undo); err != nil {
			return err
		}
	}
	if !exists(parent) {
		if err := a.mkdir(parent); err != nil {
			return err
		}
		undo.push(func() error { return a.rmdir(parent) })
		if !h.v2 && h.has(cpusetController) {
			// A new v1 cpuset starts empty; copy the root's lists.
			for _, f := range []string{"cpuset.mems", "cpuset.cpus"} {
				v, err := readString(filepath.Join(h.root, f))
				if err != nil {
					return err
				}
				if err := writeString(filepath.Join(parent, f), v); err != nil {
					return err
				}
			}
		}
	}
	if h.v2 {
		if err := enableControllers(parent, h.controllers, undo); err != nil {
			return err
		}
	}
	if !h.has(cpusetController) {
		return nil
	}
	for _, f := range []struct {
		file string
		want []int
	}{{"cpuset.mems", memNodes}, {"cpuset.cpus", cores}} {
		path := filepath.Join(parent, f.file)
		old, err := readString(path)
		if err != nil {
			return err
		}
		have, err := parseList(old)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		// An empty v2 list means "inherit everything from above".
		if (h.v2 && len(have) == 0) || containsAll(have, f.want) {
			continue
		}
		if err := writeString(path, units.FormatCPUList(union(have, f.want))); err != nil {
			return err
		}
		undo.push(func() error { return writeString(path, old) })
	}
	return nil
}

// enableControllers turns controllers on in dir's cgroup.subtree_control.
func enableControllers(dir string, controllers []string, undo *undoStack) error {
	path := filepath.Join(dir, "cgroup.subtree_control")
	s, err := readString(path)
	if err != nil {
		return err
	}
	on := strings.Fields(s)
	for _, c := range controllers {
		if slices.Contains(on, c) {
			continue
		}
		if err := writeString(path, "+"+c); err != nil {
			return err
		}
		undo.push(func() error { return writeString(path, "-"+c) })
	}
	return nil
}

// makeExclusiveV1 sets cpuset.cpu_exclusive in the parent and the group. The
// kernel allows it only when the parent is exclusive and no sibling overlaps;
// a refusal is reported, not failed.
func (a *Actuator) makeExclusiveV1(h hierarchy, dir string, undo *undoStack) (bool, string) {
	file := filepath.Join(dir, "cpuset.cpu_exclusive")
	if !exists(file) {
		return false, "cpuset.cpu_exclusive not supported"
	}
	pfile := filepath.Join(a.parentDir(h), "cpuset.cpu_exclusive")
	if v, err := readString(pfile); err != nil {
		return false, err.Error()
	} else if v != "1" {
		if err := writeString(pfile, "1"); err != nil {
			return false, "parent not exclusive: " + err.Error()
		}
		undo.push(func() error { return writeString(pfile, v) })
	}
	if err := writeString(file, "1"); err != nil {
		return false, err.Error()
	}
	undo.push(func() error { return writeString(file, "0") })
	return true, ""
}

// makePartition makes the group a v2 "root" partition where the kernel
// supports it, using cpuset.cpus.exclusive (Linux 6.7+ remote partitions)
// when the parent is not itself a partition root. A refusal leaves the group
// a "member" and is reported, not failed.
func (a *Actuator) makePartition(h hierarchy, dir string, cores []int, undo *undoStack) (bool, string) {
	file := filepath.Join(dir, "cpuset.cpus.partition")
	if !exists(file) {
		return false, "cpuset.cpus.partition not supported"
	}
	var local undoStack
	pex := filepath.Join(a.parentDir(h), "cpuset.cpus.exclusive")
	cex := filepath.Join(dir, "cpuset.cpus.exclusive")
	if exists(pex) && exists(cex) {
		if old, err := readString(pex); err == nil {
			if have, err := parseList(old); err == nil && !containsAll(have, cores) {
				if writeString(pex, units.FormatCPUList(union(have, cores))) == nil {
					local.push(func() error { return writeString(pex, old) })
				}
			}
		}
		if writeString(cex, units.FormatCPUList(cores)) == nil {
			local.push(func() error { return writeString(cex, "") })
		}
	}
	ok, note := tryPartitionRoot(file)
	if !ok {
		// Before remote partitions (Linux 6.7) a partition's parent must
		// be a partition root too: make the parent one, holding only
		// the subOS cores, and try again.
		_ = writeString(file, "member")
		if err := a.makeParentPartition(h, cores, &local); err != nil {
			note += "; " + err.Error()
		} else if ok2, note2 := tryPartitionRoot(file); ok2 {
			ok = true
		} else {
			note += "; under a partition root parent: " + note2
		}
	}
	if ok {
		*undo = append(*undo, local...)
		return true, ""
	}
	_ = writeString(file, "member")
	if uerr := local.run(); uerr != nil {
		note += "; " + uerr.Error()
	}
	return false, note
}

// tryPartitionRoot asks for a "root" partition in the cpuset.cpus.partition
// file and reports whether the kernel made a valid one, or what it said.
func tryPartitionRoot(file string) (bool, string) {
	err := writeString(file, "root")
	if err != nil {
		return false, "partition: " + err.Error()
	}
	state, err := readString(file)
	if err != nil {
		return false, "partition: " + err.Error()
	}
	return state == "root", "partition: " + state
}

// childCPUs is the union of the cpuset.cpus of the groups under parent.
func childCPUs(parent string) []int {
	entries, _ := os.ReadDir(parent)
	var cpus []int
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if l, err := readList(filepath.Join(parent, e.Name(), "cpuset.cpus")); err == nil {
			cpus = union(cpus, l)
		}
	}
	return cpus
}

// makeParentPartition makes the v2 parent group a "root" partition whose
// cpuset.cpus are the CPUs of the groups under it plus cores, so that the
// rest stay with the host. Its undo steps go onto undo.
func (a *Actuator) makeParentPartition(h hierarchy, cores []int, undo *undoStack) error {
	parent := a.parentDir(h)
	pfile := filepath.Join(parent, "cpuset.cpus.partition")
	state, err := readString(pfile)
	if err != nil {
		return fmt.Errorf("parent partition: %w", err)
	}
	if state == "root" {
		return errors.New("parent partition: already root")
	}
	cfile := filepath.Join(parent, "cpuset.cpus")
	old, err := readString(cfile)
	if err != nil {
		return fmt.Errorf("parent partition: %w", err)
	}
	if err := writeString(cfile, units.FormatCPUList(union(childCPUs(parent), cores))); err != nil {
		return fmt.Errorf("parent partition: %w", err)
	}
	undo.push(func() error { return writeString(cfile, old) })
	if err := writeString(pfile, "root"); err != nil {
		return fmt.Errorf("parent partition: %w", err)
	}
	undo.push(func() error { return writeString(pfile, "member") })
	if state, err = readString(pfile); err != nil || state != "root" {
		return fmt.Errorf("parent partition: %s %v", state, err)
	}
	return nil
}

// shrinkParentPartition gives the host back the CPUs a v2 parent partition
// root holds for no group any more; best effort.
func (a *Actuator) shrinkParentPartition(h hierarchy) {
	parent := a.parentDir(h)
	pfile := filepath.Join(parent, "cpuset.cpus.partition")
	if state, err := readString(pfile); err != nil || state != "root" {
		return
	}
	keep := childCPUs(parent)
	if len(keep) == 0 {
		_ = writeString(pfile, "member")
		_ = writeString(filepath.Join(parent, "cpuset.cpus"), "")
		return
	}
	_ = writeString(filepath.Join(parent, "cpuset.cpus"), units.FormatCPUList(keep))
}

// OpenGroup finds an existing group, e.g. after a supervisor restart.
func (a *Actuator) OpenGroup(name string) (*Group, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	g := &Group{a: a, name: name, dirs: a.groupDirs(name)}
	for _, d := range g.dirs {
		if !exists(d) {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, d)
		}
	}
	h := a.hier[0]
	if h.v2 {
		s, _ := readString(filepath.Join(g.dirs[0], "cpuset.cpus.partition"))
		g.exclusive = s == "root"
		if !g.exclusive {
			g.note = "partition: " + s
		}
	} else {
		s, _ := readString(filepath.Join(g.dirs[0], "cpuset.cpu_exclusive"))
		g.exclusive = s == "1"
		if !g.exclusive {
			g.note = "cpuset.cpu_exclusive: " + s
		}
	}
	return g, nil
}

// RemoveGroup removes the group from every hierarchy. It fails with ErrBusy,
// changing nothing, while any process remains in it.
func (a *Actuator) RemoveGroup(name string) error {
	if err := validName(name); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	dirs := a.groupDirs(name)
	found := false
	for _, d := range dirs {
		if !exists(d) {
			continue
		}
		found = true
		pids, err := readPIDs(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			return fmt.Errorf("remove group %s: %w", name, err)
		}
		if len(pids) > 0 {
			return fmt.Errorf("remove group %s: %w: pids %v in %s", name, ErrBusy, pids, d)
		}
	}
	if !found {
		return fmt.Errorf("remove group %s: %w", name, ErrNotFound)
	}
	var errs []error
	for i := len(dirs) - 1; i >= 0; i-- {
		d := dirs[i]
		if !exists(d) {
			continue
		}
		h := a.hier[i]
		if h.v2 && h.has(cpusetController) {
			a.dropParentExclusive(h, d)
		}
		if err := a.rmdirSettled(d); err != nil {
			errs = append(errs, err)
			continue
		}
		if h.v2 && h.has(cpusetController) {
			a.shrinkParentPartition(h)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove group %s: %w", name, err)
	}
	return nil
}

// dropParentExclusive gives back to the parent's cpuset.cpus.exclusive the
// CPUs that CreateGroup added there for the group in dir; best effort.
func (a *Actuator) dropParentExclusive(h hierarchy, dir string) {
	mine, err := readList(filepath.Join(dir, "cpuset.cpus.exclusive"))
	if err != nil || len(mine) == 0 {
		return
	}
	pex := filepath.Join(a.parentDir(h), "cpuset.cpus.exclusive")
	have, err := readList(pex)
	if err != nil {
		return
	}
	_ = writeString(filepath.Join(dir, "cpuset.cpus.partition"), "member")
	_ = writeString(filepath.Join(dir, "cpuset.cpus.exclusive"), "")
	_ = writeString(pex, units.FormatCPUList(minus(have, mine)))
}

// Limit bounds the group's memory (v2 memory.max, v1
// memory.limit_in_bytes) and its number of tasks, threads included
// (pids.max), in the hierarchies that carry those controllers; a
// controller the host lacks is skipped. 0 leaves a limit alone.
func (g *Group) Limit(memoryMax uint64, pidsMax int) error {
	a := g.a
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, h := range a.hier {
		dir := g.dirs[i]
		if memoryMax > 0 && h.has(memoryController) {
			file := "memory.max"
			if !h.v2 {
				file = "memory.limit_in_bytes"
			}
			if err := writeString(filepath.Join(dir, file), strconv.FormatUint(memoryMax, 10)); err != nil {
				return fmt.Errorf("limit group %s: %w", g.name, err)
			}
		}
		if pidsMax > 0 && h.has(pidsController) {
			if err := writeString(filepath.Join(dir, "pids.max"), strconv.Itoa(pidsMax)); err != nil {
				return fmt.Errorf("limit group %s: %w", g.name, err)
			}
		}
	}
	return nil
}

// AddProcess moves process pid (all its threads) into the group in every
// hierarchy. If a move fails, the hierarchies already moved are moved back.
func (g *Group) AddProcess(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("%w: pid %d", ErrInvalid, pid)
	}
	a := g.a
	a.mu.Lock()
	defer a.mu.Unlock()
	origin := a.currentCgroups(pid)
	var undo undoStack
	for i, d := range g.dirs {
		if err := writeString(filepath.Join(d, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return undo.fail(fmt.Errorf("add pid %d to group %s: %w", pid, g.name, err))
		}
		if from := origin[i]; from != "" {
			undo.push(func() error { return writeString(filepath.Join(from, "cgroup.procs"), strconv.Itoa(pid)) })
		}
	}
	return nil
}

// currentCgroups finds, from /proc/PID/cgroup, the directory pid is in for
// each hierarchy in use; "" where unknown.
func (a *Actuator) currentCgroups(pid int) []string {
	out := make([]string, len(a.hier))
	f, err := os.Open(filepath.Join(a.cfg.ProcRoot, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		ctrls := strings.Split(parts[1], ",")
		for i, h := range a.hier {
			match := false
			if h.v2 {
				match = parts[0] == "0" && parts[1] == ""
			} else {
				match = slices.Contains(ctrls, h.controllers[0])
			}
			if !match {
				continue
			}
			dir := filepath.Join(h.root, filepath.Clean("/"+parts[2]))
			if exists(dir) {
				out[i] = dir
			}
		}
	}
	return out
}

// Processes lists the processes in the group (its cpuset hierarchy).
func (g *Group) Processes() ([]int, error) {
	pids, err := readPIDs(filepath.Join(g.dirs[0], "cgroup.procs"))
	if err != nil {
		return nil, fmt.Errorf("group %s: %w", g.name, err)
	}
	slices.Sort(pids)
	return pids, nil
}

// settleTime bounds how long RemoveGroup waits for a group whose
// processes were just killed to empty.
const settleTime = 2 * time.Second

// rmdirSettled removes a group directory, retrying while the kernel says
// it is busy for at most settleTime: a process killed a moment ago has
// left cgroup.procs but may still be exiting (tearing down a guest's
// memory), and the group stays populated until it is gone.
func (a *Actuator) rmdirSettled(dir string) error {
	deadline := time.Now().Add(settleTime)
	for {
		err := a.rmdir(dir)
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(killPoll)
	}
}
