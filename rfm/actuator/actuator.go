// Package actuator applies the ledger's decisions to the host: it makes one
// cgroup per subOS with an exclusive cpuset (cgroup v1, v2, or a hybrid of
// the two), grows and shrinks the kernel's hugepage pools, and steers device
// interrupts away from subOS cores. It only touches the files under the
// cgroupfs, sysfs and procfs roots it is configured with, so tests run it
// against fake trees.
package actuator

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
)

// Sentinel errors; callers branch on them with errors.Is.
var (
	ErrNoCgroup      = errors.New("no usable cgroup hierarchy with the cpuset controller")
	ErrInvalid       = errors.New("invalid argument")
	ErrExists        = errors.New("group already exists")
	ErrNotFound      = errors.New("group not found")
	ErrBusy          = errors.New("group still has processes")
	ErrOverlap       = errors.New("cores overlap another group")
	ErrNoHugePages   = errors.New("kernel could not provide the hugepages")
	ErrHugePagesUsed = errors.New("hugepages to release are in use")
	ErrNoCPUsLeft    = errors.New("no CPU left for interrupts")
)

// DefaultParent is the cgroup under which all subOS groups are made.
const DefaultParent = "rainforest"

// Config says where the host's pseudo file systems are.
type Config struct {
	CgroupRoot string // "/sys/fs/cgroup" when empty
	SysRoot    string // "/sys" when empty
	ProcRoot   string // "/proc" when empty
	Parent     string // cgroup name for all subOSes; DefaultParent when empty
}

// Controller names the actuator uses.
const (
	cpusetController = "cpuset"
	memoryController = "memory"
	pidsController   = "pids"
)

// hierarchy is one mounted cgroup hierarchy the actuator uses.
type hierarchy struct {
	root        string   // where it is mounted
	v2          bool     // cgroup2 (unified) rather than v1
	controllers []string // the controllers of ours it carries
}

func (h hierarchy) has(controller string) bool { return slices.Contains(h.controllers, controller) }

// Actuator changes cgroups, hugepage pools and IRQ affinities. It is safe for
// concurrent use.
type Actuator struct {
	cfg     Config
	version string
	hier    []hierarchy // the cpuset hierarchy first

	mu sync.Mutex

	// mkdir and rmdir make and remove cgroup directories; tests replace
	// them to emulate the kernel populating and clearing a directory.
	mkdir func(path string) error
	rmdir func(path string) error
	// kill sends SIGKILL to a process; tests replace it to emulate the
	// kernel taking it out of its group.
	kill func(pid int) error
	// hugeSettle, when set, runs after nr_hugepages in dir is written;
	// tests use it to emulate the kernel filling the pool.
	hugeSettle func(dir string)
}

var groupName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// New detects the cgroup layout under cfg.CgroupRoot: pure v2 (cgroup2 at the
// root), v1 (one directory per controller) or hybrid (v1 controllers plus a
// cgroup2 at "unified"). The v1 cpuset is used whenever cpuset is on v1.
func New(cfg Config) (*Actuator, error) {
	if cfg.CgroupRoot == "" {
		cfg.CgroupRoot = "/sys/fs/cgroup"
	}
	if cfg.SysRoot == "" {
		cfg.SysRoot = "/sys"
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	if cfg.Parent == "" {
		cfg.Parent = DefaultParent
	}
	if cfg.Parent != filepath.Base(cfg.Parent) || cfg.Parent == "." || cfg.Parent == ".." || strings.HasPrefix(cfg.Parent, "cgroup.") {
		return nil, fmt.Errorf("%w: parent cgroup %q must be one plain path component", ErrInvalid, cfg.Parent)
	}
	a := &Actuator{
		cfg:   cfg,
		mkdir: func(p string) error { return os.Mkdir(p, 0o755) },
		rmdir: os.Remove,
		kill:  killProcess,
	}
	hier, version, err := detect(cfg.CgroupRoot)
	if err != nil {
		return nil, err
	}
	a.hier, a.version = hier, version
	return a, nil
}

// v2Controllers reads the controllers a cgroup2 mount offers, or nil when dir
// is not a cgroup2 mount.
func v2Controllers(dir string) ([]string, bool) {
	s, err := readString(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return nil, false
	}
	return strings.Fields(s), true
}

func detect(root string) ([]hierarchy, string, error) {
	if ctrls, ok := v2Controllers(root); ok {
		if !slices.Contains(ctrls, cpusetController) {
			return nil, "", fmt.Errorf("%w: cgroup2 at %s offers %q", ErrNoCgroup, root, ctrls)
		}
		h := hierarchy{root: root, v2: true, controllers: []string{cpusetController}}
		if slices.Contains(ctrls, memoryController) {
			h.controllers = append(h.controllers, memoryController)
		}
		if slices.Contains(ctrls, pidsController) {
			h.controllers = append(h.controllers, pidsController)
		}
		return []hierarchy{h}, "v2", nil
	}
	unified := filepath.Join(root, "unified")
	unifiedCtrls, haveUnified := v2Controllers(unified)
	v1Cpuset := filepath.Join(root, cpusetController)
	v1Memory := filepath.Join(root, memoryController)
	haveV1Memory := exists(filepath.Join(v1Memory, "cgroup.procs"))

	if exists(filepath.Join(v1Cpuset, "cpuset.cpus")) {
		hier := []hierarchy{{root: v1Cpuset, controllers: []string{cpusetController}}}
		switch {
		case haveV1Memory && sameDir(v1Cpuset, v1Memory): // co-mounted "cpuset,memory"
			hier[0].controllers = append(hier[0].controllers, memoryController)
		case haveV1Memory:
			hier = append(hier, hierarchy{root: v1Memory, controllers: []string{memoryController}})
		case haveUnified && slices.Contains(unifiedCtrls, memoryController):
			hier = append(hier, hierarchy{root: unified, v2: true, controllers: []string{memoryController}})
		}
		// The root of a v1 pids hierarchy has no pids.max (only its
		// children do): it is found by its cgroup.procs.
		if v1Pids := filepath.Join(root, pidsController); exists(filepath.Join(v1Pids, "cgroup.procs")) && !sameDir(v1Pids, v1Cpuset) && !sameDir(v1Pids, v1Memory) {
			hier = append(hier, hierarchy{root: v1Pids, controllers: []string{pidsController}})
		}
		return hier, "v1", nil
	}
	if haveUnified && slices.Contains(unifiedCtrls, cpusetController) {
		h := hierarchy{root: unified, v2: true, controllers: []string{cpusetController}}
		hier := []hierarchy{h}
		switch {
		case slices.Contains(unifiedCtrls, memoryController):
			hier[0].controllers = append(hier[0].controllers, memoryController)
		case haveV1Memory:
			hier = append(hier, hierarchy{root: v1Memory, controllers: []string{memoryController}})
		}
		return hier, "v2", nil
	}
	return nil, "", fmt.Errorf("%w under %s", ErrNoCgroup, root)
}

func sameDir(a, b string) bool {
	ra, err1 := filepath.EvalSymlinks(a)
	rb, err2 := filepath.EvalSymlinks(b)
	return err1 == nil && err2 == nil && ra == rb
}

// Version is "v1" when the cpuset controller is on a v1 hierarchy (pure v1
// or hybrid), "v2" when it is on cgroup2.
func (a *Actuator) Version() string { return a.version }

// Hierarchies lists the mount points of the cgroup hierarchies in use, the
// cpuset one first, each with the controllers used there, e.g.
// "/sys/fs/cgroup/cpuset (v1: cpuset)".
func (a *Actuator) Hierarchies() []string {
	out := make([]string, 0, len(a.hier))
	for _, h := range a.hier {
		v := "v1"
		if h.v2 {
			v = "v2"
		}
		out = append(out, fmt.Sprintf("%s (%s: %s)", h.root, v, strings.Join(h.controllers, ",")))
	}
	return out
}

// undoStack collects the steps that reverse what an operation did so far.
type undoStack []func() error

func (u *undoStack) push(f func() error) { *u = append(*u, f) }

// run undoes everything in reverse order; it returns the errors of the
// undo steps that failed.
func (u *undoStack) run() error {
	var errs []error
	for i := len(*u) - 1; i >= 0; i-- {
		if err := (*u)[i](); err != nil {
			errs = append(errs, err)
		}
	}
	*u = nil
	return errors.Join(errs...)
}

// fail undoes and returns err, with any undo failure attached.
func (u *undoStack) fail(err error) error {
	if uerr := u.run(); uerr != nil {
		return fmt.Errorf("%w (undo also failed: %w)", err, uerr)
	}
	return err
}
