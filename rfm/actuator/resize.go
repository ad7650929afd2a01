package actuator

import (
	"fmt"
	"path/filepath"

	"rainforest/internal/units"
)

// SetCores changes the cores of subOS name's group to cores while its
// processes run (a CPU resize or a loan): the parent group is widened
// first when cores grows past it, and, where the group is an exclusive v2
// partition, the parent's and the group's cpuset.cpus.exclusive follow
// (grown before cpuset.cpus, shrunk after it). Cores another group holds
// are refused (ErrOverlap). On error every file the call wrote is put back.
func (a *Actuator) SetCores(name string, cores []int) error {
	if err := validName(name); err != nil {
		return err
	}
	if err := validIDs("cores", cores); err != nil {
		return err
	}
	cores = normalize(cores)
	a.mu.Lock()
	defer a.mu.Unlock()
	dirs := a.groupDirs(name)
	for i, h := range a.hier {
		if !h.has(cpusetController) {
			continue
		}
		if err := a.setCores(h, dirs[i], cores); err != nil {
			return fmt.Errorf("set cores of group %s to %s: %w", name, units.FormatCPUList(cores), err)
		}
	}
	return nil
}

// setCores is SetCores in one cpuset hierarchy; a.mu is held.
func (a *Actuator) setCores(h hierarchy, dir string, cores []int) error {
	if !exists(dir) {
		return fmt.Errorf("%w: %s", ErrNotFound, dir)
	}
	cfile := filepath.Join(dir, "cpuset.cpus")
	oldCPUs, err := readString(cfile)
	if err != nil {
		return err
	}
	have, err := parseList(oldCPUs)
	if err != nil {
		return fmt.Errorf("%s: %w", cfile, err)
	}
	parent := a.parentDir(h)
	others := minus(childCPUs(parent), have)
	if taken := minus(cores, minus(cores, others)); len(taken) > 0 {
		return fmt.Errorf("%w: cores %s already in another group", ErrOverlap, units.FormatCPUList(taken))
	}
	added, removed := minus(cores, have), minus(have, cores)
	var undo undoStack
	// What may hold the cores grows first, outermost first.
	if len(added) > 0 {
		mems, err := readList(filepath.Join(dir, "cpuset.mems"))
		if err != nil {
			return err
		}
		if err := a.ensureParent(h, cores, mems, &undo); err != nil {
			return undo.fail(err)
		}
		if h.v2 {
			if err := a.widenPartition(h, dir, added, &undo); err != nil {
				return undo.fail(err)
			}
		}
	}
	if err := writeString(cfile, units.FormatCPUList(cores)); err != nil {
		return undo.fail(err)
	}
	undo.push(func() error { return writeString(cfile, oldCPUs) })
	// Then what held the removed cores lets them go, innermost first; the
	// group's cores are already right, so this is best effort.
	if len(removed) > 0 && h.v2 {
		a.narrowPartition(h, dir, removed)
	}
	return nil
}

// widenPartition adds cores to the exclusive lists of a v2 group and its
// parent where the group uses them, and to a partition root parent's
// cpuset.cpus (a local partition's parent must hold its CPUs).
func (a *Actuator) widenPartition(h hierarchy, dir string, added []int, undo *undoStack) error {
	parent := a.parentDir(h)
	grow := func(file string) error {
		if !exists(file) {
			return nil
		}
		old, err := readString(file)
		if err != nil {
			return err
		}
		have, err := parseList(old)
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		if containsAll(have, added) {
			return nil
		}
		if err := writeString(file, units.FormatCPUList(union(have, added))); err != nil {
			return err
		}
		undo.push(func() error { return writeString(file, old) })
		return nil
	}
	if s, _ := readString(filepath.Join(parent, "cpuset.cpus.partition")); s == "root" {
		if err := grow(filepath.Join(parent, "cpuset.cpus")); err != nil {
			return err
		}
	}
	// A group without exclusive CPUs (a member, or a local partition)
	// needs no exclusive lists.
	mine, err := readList(filepath.Join(dir, "cpuset.cpus.exclusive"))
	if err != nil || len(mine) == 0 {
		return nil
	}
	if err := grow(filepath.Join(parent, "cpuset.cpus.exclusive")); err != nil {
		return err
	}
	return grow(filepath.Join(dir, "cpuset.cpus.exclusive"))
}

// narrowPartition takes removed cores out of the exclusive lists of a v2
// group and its parent, and gives a partition root parent's spare CPUs
// back to the host; best effort.
func (a *Actuator) narrowPartition(h hierarchy, dir string, removed []int) {
	for _, file := range []string{filepath.Join(dir, "cpuset.cpus.exclusive"), filepath.Join(a.parentDir(h), "cpuset.cpus.exclusive")} {
		if have, err := readList(file); err == nil && len(have) > 0 {
			_ = writeString(file, units.FormatCPUList(minus(have, removed)))
		}
	}
	a.shrinkParentPartition(h)
}
