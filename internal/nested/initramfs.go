package nested

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strconv"
	"time"

	"rainforest/images"
)

// BuildInitramfs writes the uncompressed L1 initramfs for cfg to w.
func BuildInitramfs(ctx context.Context, cfg Config, w io.Writer) error {
	a, err := l1Archive(ctx, cfg)
	if err != nil {
		return err
	}
	if _, err := a.WriteTo(w); err != nil {
		return fmt.Errorf("nested: %w", err)
	}
	return nil
}

func writeInitramfs(ctx context.Context, cfg Config, dst string) error {
	f, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("nested: %w", err)
	}
	if err := BuildInitramfs(ctx, cfg, f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("nested: %w", err)
	}
	return nil
}

func l1Archive(ctx context.Context, cfg Config) (*images.Archive, error) {
	if cfg.L1Kernel == nil {
		return nil, fmt.Errorf("%w: no L1Kernel", ErrBadConfig)
	}
	ix, err := images.LoadModuleIndex(cfg.L1Kernel.ModulesDir)
	if err != nil {
		return nil, err
	}
	mods, err := ix.Resolve(append(L1Modules(), cfg.Modules...)...)
	if err != nil {
		return nil, err
	}
	a := images.NewArchive()
	if err := images.AddBusybox(ctx, a, cfg.L1Kernel.Busybox); err != nil {
		return nil, err
	}
	if err := images.AddModules(a, cfg.L1Kernel.ModulesDir, mods, "lib/modules"); err != nil {
		return nil, err
	}
	guestPaths := make([]string, 0, len(cfg.ExtraFiles))
	for g := range cfg.ExtraFiles {
		guestPaths = append(guestPaths, g)
	}
	sort.Strings(guestPaths)
	for _, g := range guestPaths {
		clean := path.Clean("/" + g)
		if clean == "/" || clean == "/init" || clean == scriptPath {
			return nil, fmt.Errorf("%w: extra file may not replace %q", ErrBadConfig, clean)
		}
		st, err := os.Stat(cfg.ExtraFiles[g])
		if err != nil {
			return nil, fmt.Errorf("nested: extra file %s: %w", g, err)
		}
		if err := a.AddHostFile(clean, st.Mode().Perm(), cfg.ExtraFiles[g]); err != nil {
			return nil, err
		}
	}
	if err := a.AddFile(scriptPath, 0o755, []byte(cfg.Script)); err != nil {
		return nil, err
	}
	if err := a.AddFile("init", 0o755, []byte(l1Init(mods, cfg.HugePages))); err != nil {
		return nil, err
	}
	return a, nil
}

// l1Init renders the L1 /init script.
func l1Init(mods []images.Module, hugePages int) string {
	return `#!/bin/sh
export PATH=/bin:/usr/bin
mount -t proc proc /proc
# Kernel messages would interleave with the script's output on the console.
dmesg -n 1
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/hugepages
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
# The heartbeat (nested.HeartbeatMarker): the host kills a session that
# prints neither it nor anything else for a while.
while :; do read -r up idle </proc/uptime; echo "` + HeartbeatMarker + ` $up"; sleep ` + strconv.Itoa(int(HeartbeatInterval/time.Second)) + `; done </dev/null &
echo $! >` + HeartbeatPIDFile + `
` + images.InsmodLines(mods, "/lib/modules") + `mount -t hugetlbfs hugetlbfs /dev/hugepages
echo ` + strconv.Itoa(hugePages) + ` > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
echo "RF-NESTED-HUGEPAGES $(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages)"
cd /
echo ` + BeginMarker + `
sh ` + scriptPath + ` </dev/null 2>&1
echo "` + ExitMarker + ` $?"
poweroff -f
`
}
