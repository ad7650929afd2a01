// Package hostfiles places host programs in the nested L1 guest, whose
// busybox initramfs has no C library: each program with the shared
// libraries and dynamic loader ldd names for it, at the same paths there
// (kvmhost.File), so that it runs in L1 as it does on the host.
package hostfiles

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"

	"rainforest/internal/kvmhost"
	"rainforest/internal/qemubundle"
)

// ErrNotFound means a program is not installed on this host.
var ErrNotFound = errors.New("hostfiles: program not found")

// Programs returns the files of the programs (names looked up in PATH, or
// paths) and their libraries, each once, at their host paths.
func Programs(ctx context.Context, programs ...string) ([]kvmhost.File, error) {
	var files []kvmhost.File
	seen := map[string]bool{}
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			files = append(files, kvmhost.File{Host: p, L1: p})
		}
	}
	for _, prog := range programs {
		p, err := exec.LookPath(prog)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrNotFound, prog, err)
		}
		if p, err = filepath.Abs(p); err != nil {
			return nil, fmt.Errorf("hostfiles: %w", err)
		}
		out, err := exec.CommandContext(ctx, "ldd", p).Output()
		if err != nil {
			// ldd fails on a static program ("not a dynamic executable").
			add(p)
			continue
		}
		libs, err := qemubundle.ParseLdd(string(out))
		if err != nil {
			return nil, fmt.Errorf("hostfiles: %s: %w", prog, err)
		}
		add(p)
		for _, l := range libs {
			add(l)
		}
	}
	return files, nil
}
