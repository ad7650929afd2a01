package kvmhost

import (
	"context"
	"fmt"
	"os/exec"

	"rainforest/internal/qemubundle"
)

// DynamicFiles are a dynamically linked program of this host and every
// library ldd lists for it (the loader included), each placed at the same
// path in the nested L1 guest, which has none of them (virtiofsd, fio).
// The L1 guest has no ld.so.cache: the loader finds the libraries in
// its default directories, where they are on this host.
func DynamicFiles(ctx context.Context, bin string) ([]File, error) {
	out, err := exec.CommandContext(ctx, "ldd", bin).Output()
	if err != nil {
		return nil, fmt.Errorf("kvmhost: ldd %s: %w", bin, err)
	}
	libs, err := qemubundle.ParseLdd(string(out))
	if err != nil {
		return nil, fmt.Errorf("kvmhost: %s: %w", bin, err)
	}
	files := []File{{Host: bin, L1: bin}}
	for _, l := range libs {
		files = append(files, File{Host: l, L1: l})
	}
	return files, nil
}
