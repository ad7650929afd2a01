package actuator

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
)

// hugePoolDir is the sysfs directory of node's pool of pageSize pages: the
// per-node one, or the global one on a machine without NUMA nodes in sysfs.
func (a *Actuator) hugePoolDir(node int, pageSize uint64) (string, error) {
	if node < 0 {
		return "", fmt.Errorf("%w: node %d", ErrInvalid, node)
	}
	if pageSize < 1<<12 || pageSize&(pageSize-1) != 0 {
		return "", fmt.Errorf("%w: page size %d", ErrInvalid, pageSize)
	}
	sub := "hugepages-" + strconv.FormatUint(pageSize>>10, 10) + "kB"
	nodeDir := filepath.Join(a.cfg.SysRoot, "devices", "system", "node", "node"+strconv.Itoa(node))
	if exists(nodeDir) {
		dir := filepath.Join(nodeDir, "hugepages", sub)
		if !exists(dir) {
			return "", fmt.Errorf("%w: no %d-byte hugepages on node %d (%s)", ErrInvalid, pageSize, node, dir)
		}
		return dir, nil
	}
	if node != 0 || exists(filepath.Join(a.cfg.SysRoot, "devices", "system", "node")) {
		return "", fmt.Errorf("%w: no NUMA node %d", ErrInvalid, node)
	}
	dir := filepath.Join(a.cfg.SysRoot, "kernel", "mm", "hugepages", sub)
	if !exists(dir) {
		return "", fmt.Errorf("%w: no %d-byte hugepages (%s)", ErrInvalid, pageSize, dir)
	}
	return dir, nil
}

// EnsureHugePages makes sure at least pages hugepages of pageSize are free on
// node, raising the kernel's pool (nr_hugepages) by the shortfall. It returns
// how many pages it added to the pool, for ReleaseHugePages. When the kernel
// cannot provide them all (fragmented or short memory), the pool is put back
// as it was and the error wraps ErrNoHugePages.
func (a *Actuator) EnsureHugePages(node int, pageSize uint64, pages uint64) (added uint64, err error) {
	dir, err := a.hugePoolDir(node, pageSize)
	if err != nil {
		return 0, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	nrFile, freeFile := filepath.Join(dir, "nr_hugepages"), filepath.Join(dir, "free_hugepages")
	nr, err := readUint(nrFile)
	if err != nil {
		return 0, err
	}
	free, err := readUint(freeFile)
	if err != nil {
		return 0, err
	}
	if free >= pages {
		return 0, nil
	}
	need := pages - free
	if nr+need < nr {
		return 0, fmt.Errorf("%w: %d pages", ErrInvalid, pages)
	}
	if err := writeString(nrFile, strconv.FormatUint(nr+need, 10)); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrNoHugePages, err)
	}
	if a.hugeSettle != nil {
		a.hugeSettle(dir)
	}
	gotNr, err1 := readUint(nrFile)
	gotFree, err2 := readUint(freeFile)
	if err1 == nil && err2 == nil && gotNr >= nr+need && gotFree >= pages {
		return need, nil
	}
	short := fmt.Errorf("%w: node %d: asked for nr_hugepages=%d of %d bytes, got %d (%d free, want %d)",
		ErrNoHugePages, node, nr+need, pageSize, gotNr, gotFree, pages)
	if err1 != nil || err2 != nil {
		short = fmt.Errorf("%w: node %d: %w", ErrNoHugePages, node, errors.Join(err1, err2))
	}
	if err := writeString(nrFile, strconv.FormatUint(nr, 10)); err != nil {
		return 0, fmt.Errorf("%w (undo also failed: %w)", short, err)
	}
	return 0, short
}

// ReleaseHugePages shrinks node's pool of pageSize pages by pages, giving back
// what EnsureHugePages added. It changes nothing and fails with
// ErrHugePagesUsed unless that many pages are free.
func (a *Actuator) ReleaseHugePages(node int, pageSize uint64, pages uint64) error {
	if pages == 0 {
		return nil
	}
	dir, err := a.hugePoolDir(node, pageSize)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	nrFile, freeFile := filepath.Join(dir, "nr_hugepages"), filepath.Join(dir, "free_hugepages")
	nr, err := readUint(nrFile)
	if err != nil {
		return err
	}
	free, err := readUint(freeFile)
	if err != nil {
		return err
	}
	if free < pages || nr < pages {
		return fmt.Errorf("%w: node %d: release %d pages of %d bytes, only %d of %d free",
			ErrHugePagesUsed, node, pages, pageSize, free, nr)
	}
	return writeString(nrFile, strconv.FormatUint(nr-pages, 10))
}
