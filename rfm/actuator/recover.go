package actuator

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

// What a restarted supervisor needs to bring the host back in line with its
// records: the groups that exist under the parent, a way to empty one, and
// the size of a hugepage pool before and after it changes it.

// killPoll is how often KillGroup looks whether the killed processes have
// left the group.
const killPoll = 10 * time.Millisecond

// Groups lists the names of the subOS groups under the parent, in any
// hierarchy in use, sorted. Directories that are not group names (the
// parent's own files, foreign directories) are left out.
func (a *Actuator) Groups() ([]string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	seen := map[string]bool{}
	for _, h := range a.hier {
		ents, err := os.ReadDir(a.parentDir(h))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list groups: %w", err)
		}
		for _, e := range ents {
			if e.IsDir() && validName(e.Name()) == nil {
				seen[e.Name()] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	slices.Sort(out)
	return out, nil
}

// groupPIDs lists the processes in group name in every hierarchy, sorted,
// each once. A hierarchy without the group counts as empty.
func (a *Actuator) groupPIDs(name string) ([]int, error) {
	var all []int
	for _, d := range a.groupDirs(name) {
		pids, err := readPIDs(filepath.Join(d, "cgroup.procs"))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		all = append(all, pids...)
	}
	slices.Sort(all)
	return slices.Compact(all), nil
}

// KillGroup sends SIGKILL to every process in group name (in every
// hierarchy) and waits until the group is empty or ctx ends. It returns
// the processes it killed, sorted; a group that does not exist has none.
// Processes forked meanwhile are killed too.
func (a *Actuator) KillGroup(ctx context.Context, name string) ([]int, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	killed := map[int]bool{}
	for {
		pids, err := a.groupPIDs(name)
		if err != nil {
			return sortedKeys(killed), fmt.Errorf("kill group %s: %w", name, err)
		}
		if len(pids) == 0 {
			return sortedKeys(killed), nil
		}
		for _, pid := range pids {
			if !killed[pid] {
				if err := a.kill(pid); err != nil && !errors.Is(err, syscall.ESRCH) {
					return sortedKeys(killed), fmt.Errorf("kill group %s: pid %d: %w", name, pid, err)
				}
				killed[pid] = true
			}
		}
		select {
		case <-ctx.Done():
			return sortedKeys(killed), fmt.Errorf("kill group %s: %w: pids %v remain: %w", name, ErrBusy, pids, ctx.Err())
		case <-time.After(killPoll):
		}
	}
}

func sortedKeys(m map[int]bool) []int {
	out := make([]int, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// PoolSize returns the size (nr_hugepages) of node's pool of pageSize
// pages. A supervisor records it before changing the pool, so that after a
// crash it can tell whether the change was made.
func (a *Actuator) PoolSize(node int, pageSize uint64) (uint64, error) {
	dir, err := a.hugePoolDir(node, pageSize)
	if err != nil {
		return 0, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return readUint(filepath.Join(dir, "nr_hugepages"))
}

func killProcess(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }
