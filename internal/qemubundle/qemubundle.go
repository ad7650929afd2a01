// Package qemubundle collects what a dynamically linked QEMU needs to run
// in a minimal initramfs (the nested L1 guest): the binary, every shared
// library ldd lists, the dynamic loader, and the firmware files of the
// microvm machine. Files maps guest paths to host paths, ready for
// nested.Config.ExtraFiles; internal/kvmhost uses it for scripts that run
// QEMU.
package qemubundle

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Guest paths of the bundle.
const (
	GuestBinary  = "/usr/bin/qemu-system-x86_64"
	GuestDataDir = "/usr/share/qemu"
)

// ErrMissing means ldd reported a library as not found, or a required
// firmware file is missing.
var ErrMissing = errors.New("qemubundle: missing file")

// MicrovmFirmware lists the data files microvm may load: bios-microvm.bin
// (qboot) is required, the option ROMs are copied when present.
func MicrovmFirmware() []string {
	return []string{"bios-microvm.bin", "qboot.rom", "pvh.bin", "linuxboot_dma.bin", "linuxboot.bin", "kvmvapic.bin"}
}

// Bundle is a QEMU ready to be copied into an initramfs.
type Bundle struct {
	// Files maps guest paths to host files.
	Files map[string]string
	// LibDirs are the guest directories of the libraries (for
	// LD_LIBRARY_PATH: the initramfs has no ld.so.cache).
	LibDirs []string
}

// Collect bundles the QEMU binary at qemu (a path), its libraries (from
// ldd) and the microvm firmware from its data directory (../share/qemu
// next to the binary).
func Collect(ctx context.Context, qemu string) (*Bundle, error) {
	real, err := filepath.EvalSymlinks(qemu)
	if err != nil {
		return nil, fmt.Errorf("qemubundle: %w", err)
	}
	out, err := exec.CommandContext(ctx, "ldd", real).Output()
	if err != nil {
		return nil, fmt.Errorf("qemubundle: ldd %s: %w", real, err)
	}
	libs, err := ParseLdd(string(out))
	if err != nil {
		return nil, err
	}
	b := &Bundle{Files: map[string]string{GuestBinary: real}}
	dirs := map[string]bool{}
	for _, l := range libs {
		b.Files[l] = l
		dirs[path.Dir(l)] = true
	}
	for d := range dirs {
		b.LibDirs = append(b.LibDirs, d)
	}
	sort.Strings(b.LibDirs)
	dataDir := filepath.Join(filepath.Dir(real), "..", "share", "qemu")
	for i, name := range MicrovmFirmware() {
		src := filepath.Join(dataDir, name)
		if _, err := os.Stat(src); err != nil {
			if i == 0 {
				return nil, fmt.Errorf("%w: microvm firmware %s: %v", ErrMissing, src, err)
			}
			continue
		}
		b.Files[path.Join(GuestDataDir, name)] = src
	}
	return b, nil
}

// ParseLdd returns the absolute paths of the libraries and the loader in
// ldd's output, in order, skipping the vDSO. A "not found" library is an
// ErrMissing error.
func ParseLdd(out string) ([]string, error) {
	var libs []string
	seen := map[string]bool{}
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		name, target, arrow := strings.Cut(line, "=>")
		if arrow {
			target = strings.TrimSpace(target)
			if strings.HasPrefix(target, "not found") {
				return nil, fmt.Errorf("%w: library %s not found", ErrMissing, strings.TrimSpace(name))
			}
		} else {
			target = line
		}
		f := strings.Fields(target)
		if len(f) == 0 || !strings.HasPrefix(f[0], "/") {
			continue // linux-vdso.so.1 (0x...), or "statically linked"
		}
		if !seen[f[0]] {
			seen[f[0]] = true
			libs = append(libs, f[0])
		}
	}
	return libs, nil
}
