// Package images builds, reproducibly and from Debian packages, the boot
// artifacts of the default subOS ("L2") image: the Debian 12 cloud kernel
// (bzImage and the uncompressed PVH vmlinux cut out of it), a busybox
// initramfs with the virtio modules the VMM's devices need, and a small
// ext2 test disk. Outputs are cached in a directory and rebuilt only when
// the package versions or inputs change.
//
// On request, BuildDebian also builds a Debian system (systemd, networkd,
// OpenSSH, iperf3, fio, the agent as a service) on an ext4 disk with
// mmdebstrap, which the same kernel and initramfs boot with root= (see
// "Switching to a root disk" below and debiandisk.go).
//
// BuildFlavour builds the same image with another Debian flavour of the
// same kernel version (FlavourGeneric: the generic kernel, which has the
// 9p modules the cloud kernel lacks), booted as a bzImage; its package is
// downloaded only when a caller asks for it.
//
// The package also provides the deterministic newc cpio writer (Archive)
// and the kernel module resolver (ModuleIndex) that other image builders,
// such as the nested test layer, reuse.
//
// # The L2 /init
//
// The init script reads these kernel command line parameters:
//
//	rf.cat=/path      after mounting /dev/vda read-only on /mnt, print /mnt/path
//	rf.cmd=CMD        run CMD with sh -c (quote it: rf.cmd="echo a b"),
//	                  then print "RF-CMD-EXIT <status>"
//	rf.poweroff=1     power off after rf.cmd instead of starting a shell
//	rf.agent=0        do not start /usr/bin/rf-agent
//	rf.addr=MAC=A/N,.. give the NIC of each MAC address A/N (loop networks, nets[].ip)
//	rf.ip=A/N[,GW]    give the first NIC address A/N (and a default
//	                  route through GW), and set it up
//	rf.shares=T1,T2   mount the virtio-fs shares tagged T1, T2 at /mnt/T1,
//	                  /mnt/T2 (the supervisor sets it for a subOS's
//	                  shares) and print "RF-SHARE <tag> <dir>" for each
//
// Before powering off it writes a non-zero exit status of rf.cmd (or of the
// shell) to the VMM's status register (port 0x501, memory-mapped at
// 0xFEB00000, written with busybox devmem), which the VMM makes its own exit
// status.
//
// It prints "RF-INIT-REACHED" right after mounting /proc (for boot timing),
// then "RF-CPUS <n>" and "RF-MEMTOTAL-KB <n>".
//
// # Switching to a root disk
//
// With root=DEV (or rf.root=DEV, which wins) on the command line, /init
// boots a full system from a disk instead, such as the Debian image of
// BuildDebian: after the lines above it loads the root modules
// (Options.RootModules: ext4 where the kernel has it as a module; the
// virtio modules are loaded already), waits up to 5 s for DEV (a path,
// or LABEL=/UUID= found with findfs), mounts it read-only (read-write with
// rw on the command line; type rootfstype= or detected) on /newroot, moves
// /dev, /proc and /sys there, prints "RF-SWITCH-ROOT <device>" and
// switch_roots to init= (default /sbin/init, systemd). rf.cat, rf.cmd,
// rf.poweroff and the agent loop are then the new system's business.
// When the disk cannot be used it prints "RF-ROOT-FAILED <reason>" and
// goes on as without root=. Without root= nothing of this runs.
//
// # Guest tools and the agent
//
// The static programs in Options.ToolsDir (default <OutDir>/tools; `make
// image` builds rfcom and rf-agent there) are placed at /usr/bin/<name>
// (mode 0755); the stamp records their digests, so a changed tool rebuilds
// the initramfs, and every caller building into the same OutDir gets the
// same image. It is the one way programs get into the image.
//
// When /usr/bin/rf-agent is there (and rf.agent is not 0), /init runs it
// in the background before rf.cmd or the shell, in a loop that restarts
// it whenever it exits, after a pause doubling from 1 to 32 seconds, with
// one console line per exit ("RF-AGENT-EXIT <status>"). The agent itself
// prints nothing while all is well, and waits silently where the guest
// has no vsock device.
package images

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// DefaultOutDir is where Build caches its outputs when Options.OutDir is
// empty (relative to the current directory; the repository's build/images).
const DefaultOutDir = "build/images"

// DefaultKernelPackage is the Debian 12 cloud kernel meta-package.
const DefaultKernelPackage = "linux-image-cloud-amd64"

// DefaultBusyboxPackage provides the static busybox.
const DefaultBusyboxPackage = "busybox-static"

// DiskText is the content of /hello.txt on the test disk (and of its first
// sector when mkfs.ext2 is unavailable).
const DiskText = "hello from virtio-blk\n"

// InitReachedMarker is printed by the L2 /init right after /proc is mounted.
const InitReachedMarker = "RF-INIT-REACHED"

// Output file names inside the output directory.
const (
	VmlinuxName   = "vmlinux"
	BzImageName   = "bzImage"
	InitramfsName = "initramfs.cpio.gz"
	DiskName      = "disk.img"
	stampName     = "build.stamp"
	cacheDirName  = "cache"
	// stampFormat changes whenever the layout of the outputs changes.
	stampFormat = 1
)

// DefaultModules returns the modules the L2 image loads, in load order
// (their dependencies are added automatically). Modules that the kernel
// does not have (virtio_pci_legacy_dev on some configs) are skipped.
func DefaultModules() []string {
	return []string{
		"virtio", "virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
		"virtio_pci", "virtio_blk", "virtio_console", "uio", "uio_pci_generic",
		// virtio-vsock, the agent's channel to the supervisor.
		"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport",
		// virtio-mem, memory resize while the guest runs.
		"virtio_mem",
		// virtio-net, the subOS's NICs.
		"virtio_net",
		// virtio-fs, the subOS's shares (RFfuse).
		"fuse", "virtiofs",
	}
}

// DefaultRootModules returns the modules /init loads before mounting a
// root disk (root=): the file system of the Debian image. Modules the
// kernel does not have (built in, as ext4 is in Debian's cloud kernel)
// are skipped; the virtio modules of DefaultModules are loaded already.
func DefaultRootModules() []string {
	return []string{"ext4"}
}

// ErrNoKernel means the kernel package did not contain /boot/vmlinuz-*.
var ErrNoKernel = errors.New("images: kernel package has no /boot/vmlinuz")

// toolName is what a guest tool may be called.
var toolName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

// ToolsDirName is the default tools directory under OutDir.
const ToolsDirName = "tools"

// findTools lists the programs in dir (def when dir is empty; a missing
// default is empty) with their digests.
func findTools(dir, def string) (paths, sums map[string]string, err error) {
	explicit := dir != ""
	if !explicit {
		dir = def
	}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("images: tools: %w", err)
	}
	paths, sums = map[string]string{}, map[string]string{}
	for _, e := range ents {
		if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if !toolName.MatchString(e.Name()) {
			return nil, nil, fmt.Errorf("images: tool %s: want a name of a-z, 0-9 and '-'", filepath.Join(dir, e.Name()))
		}
		p := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, nil, fmt.Errorf("images: tool: %w", err)
		}
		sum := sha256.Sum256(data)
		paths[e.Name()], sums[e.Name()] = p, hex.EncodeToString(sum[:])
	}
	return paths, sums, nil
}

// Options configure Build. The zero value builds the default image.
type Options struct {
	// OutDir holds the outputs and the download cache (default
	// DefaultOutDir).
	OutDir string
	// KernelPackage is the kernel package or meta-package (default
	// DefaultKernelPackage).
	KernelPackage string
	// KernelPackageVersion, when set, pins the version of KernelPackage,
	// which must then be a concrete package (no meta-package followed):
	// BuildFlavour asks for the same version as the base image's kernel.
	KernelPackageVersion string
	// NoVmlinux skips the PVH vmlinux (Image.Kernel is empty): for a
	// kernel booted as a bzImage only, such as Debian's generic flavour,
	// whose XZ-compressed bzImage extractVmlinux cannot cut open.
	NoVmlinux bool
	// CacheDir holds the downloaded and unpacked packages (default
	// <OutDir>/cache).
	CacheDir string
	// BusyboxPackage is the static busybox package (default
	// DefaultBusyboxPackage).
	BusyboxPackage string
	// Modules overrides DefaultModules.
	Modules []string
	// RootModules overrides DefaultRootModules.
	RootModules []string
	// ToolsDir holds static programs for /usr/bin (see the package doc);
	// default <OutDir>/tools, which may be missing.
	ToolsDir string
	// Log receives progress (apt output, steps); nil discards it.
	Log io.Writer
	// Force rebuilds even when the stamp matches.
	Force bool
}

// Image is a built L2 image.
type Image struct {
	// Kernel is the uncompressed ELF vmlinux with the PVH entry note
	// (empty with Options.NoVmlinux).
	Kernel string
	// BzImage is the Debian /boot/vmlinuz-* (LZ4 bzImage).
	BzImage string
	// Initramfs is the gzip-compressed newc initramfs.
	Initramfs string
	// Disk is the raw test disk (ext2 with /hello.txt, or a raw image
	// whose first sector holds DiskText when mkfs.ext2 is missing).
	Disk string
	// KernelVersion is the kernel release (uname -r), e.g.
	// "6.1.0-56-cloud-amd64".
	KernelVersion string
	// KernelPackage and KernelPackageVersion name the Debian package used.
	KernelPackage        string
	KernelPackageVersion string
	// ModulesDir is the unpacked lib/modules/<release> tree on the host,
	// for builders that need other modules of the same kernel.
	ModulesDir string
	// Busybox is the unpacked static busybox binary on the host.
	Busybox string
	// Modules are the modules /init always loads, in load order.
	Modules []Module
	// RootModules are the further modules /init loads for a root disk
	// (root=), in load order.
	RootModules []Module
}

type stamp struct {
	Format         int      `json:"format"`
	KernelPackage  string   `json:"kernel_package"`
	KernelVersion  string   `json:"kernel_package_version"`
	NoVmlinux      bool     `json:"no_vmlinux,omitempty"`
	Release        string   `json:"release"`
	BusyboxPackage string   `json:"busybox_package"`
	BusyboxVersion string   `json:"busybox_version"`
	Modules        []Module `json:"modules"`
	RootModules    []Module `json:"root_modules,omitempty"`
	// Tools maps each guest tool's name to its SHA-256.
	Tools    map[string]string `json:"tools,omitempty"`
	DiskKind string            `json:"disk_kind"`
	// InitSHA256 changes with the /init script, so editing it rebuilds.
	InitSHA256 string `json:"init_sha256"`
}

// Build produces the L2 image in opts.OutDir, reusing the outputs when a
// previous build used the same package versions and inputs.
func Build(ctx context.Context, opts Options) (*Image, error) {
	if opts.OutDir == "" {
		opts.OutDir = DefaultOutDir
	}
	if opts.KernelPackage == "" {
		opts.KernelPackage = DefaultKernelPackage
	}
	if opts.BusyboxPackage == "" {
		opts.BusyboxPackage = DefaultBusyboxPackage
	}
	if opts.Modules == nil {
		opts.Modules = DefaultModules()
	}
	if opts.RootModules == nil {
		opts.RootModules = DefaultRootModules()
	}
	log := opts.Log
	if log == nil {
		log = io.Discard
	}
	out, err := filepath.Abs(opts.OutDir)
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	cacheDir := opts.CacheDir
	if cacheDir == "" {
		cacheDir = filepath.Join(out, cacheDirName)
	}
	deb := &debTools{log: log, cacheDir: cacheDir}

	var kroot, kpkg, kver string
	if opts.KernelPackageVersion != "" {
		kpkg, kver = opts.KernelPackage, opts.KernelPackageVersion
		kroot, err = deb.fetchVersion(ctx, kpkg, kver)
	} else {
		kroot, kpkg, kver, err = deb.fetch(ctx, opts.KernelPackage, true)
	}
	if err != nil {
		return nil, err
	}
	broot, bpkg, bver, err := deb.fetch(ctx, opts.BusyboxPackage, false)
	if err != nil {
		return nil, err
	}
	vmlinuz, release, err := findKernel(kroot)
	if err != nil {
		return nil, err
	}
	busybox := filepath.Join(broot, "bin", "busybox")
	if _, err := os.Stat(busybox); err != nil {
		return nil, fmt.Errorf("images: %s has no bin/busybox: %w", bpkg, err)
	}
	modDir := filepath.Join(kroot, "lib", "modules", release)
	ix, err := loadAndCacheModuleIndex(modDir)
	if err != nil {
		return nil, err
	}
	builtin := builtinModules(modDir)
	mods, err := ix.Resolve(available(ix, builtin, opts.Modules, release, log)...)
	if err != nil {
		return nil, err
	}
	rootMods, err := ix.Resolve(append(available(ix, builtin, opts.Modules, release, io.Discard), available(ix, builtin, opts.RootModules, release, log)...)...)
	if err != nil {
		return nil, err
	}
	rootMods = rootMods[len(mods):] // Resolve keeps the order: the always-loaded ones come first
	tools, toolSums, err := findTools(opts.ToolsDir, filepath.Join(out, ToolsDirName))
	if err != nil {
		return nil, err
	}
	mkfs := findMkfs()
	diskKind := "raw"
	if mkfs != "" {
		diskKind = "ext2"
	}
	st := stamp{
		Format: stampFormat, KernelPackage: kpkg, KernelVersion: kver, NoVmlinux: opts.NoVmlinux, Release: release,
		BusyboxPackage: bpkg, BusyboxVersion: bver, Modules: mods, RootModules: rootMods,
		Tools: toolSums, DiskKind: diskKind, InitSHA256: fmt.Sprintf("%x", sha256.Sum256([]byte(l2Init(mods, rootMods)))),
	}
	img := &Image{
		Kernel:               filepath.Join(out, VmlinuxName),
		BzImage:              filepath.Join(out, BzImageName),
		Initramfs:            filepath.Join(out, InitramfsName),
		Disk:                 filepath.Join(out, DiskName),
		KernelVersion:        release,
		KernelPackage:        kpkg,
		KernelPackageVersion: kver,
		ModulesDir:           modDir,
		Busybox:              busybox,
		Modules:              mods,
		RootModules:          rootMods,
	}
	stampData, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	if opts.NoVmlinux {
		img.Kernel = ""
	}
	stampPath := filepath.Join(out, stampName)
	if !opts.Force && upToDate(stampPath, stampData, img) {
		fmt.Fprintf(log, "images: %s is up to date (%s %s)\n", out, kpkg, kver)
		return img, nil
	}
	os.Remove(stampPath)

	fmt.Fprintf(log, "images: kernel %s (%s %s)\n", release, kpkg, kver)
	bz, err := os.ReadFile(vmlinuz)
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	if err := writeFileAtomic(img.BzImage, bz, 0o644); err != nil {
		return nil, err
	}
	if !opts.NoVmlinux {
		vmlinux, err := extractVmlinux(bz)
		if err != nil {
			return nil, err
		}
		if err := writeFileAtomic(img.Kernel, vmlinux, 0o644); err != nil {
			return nil, err
		}
	}

	fmt.Fprintf(log, "images: initramfs with %d modules\n", len(mods)+len(rootMods))
	a := NewArchive()
	if err := AddBusybox(ctx, a, busybox); err != nil {
		return nil, err
	}
	if err := AddModules(a, modDir, append(append([]Module(nil), mods...), rootMods...), "lib/modules"); err != nil {
		return nil, err
	}
	names := make([]string, 0, len(tools))
	for n := range tools {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := a.AddHostFile("usr/bin/"+n, 0o755, tools[n]); err != nil {
			return nil, err
		}
	}
	if err := a.AddFile("init", 0o755, []byte(l2Init(mods, rootMods))); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := WriteGzip(&buf, a); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(img.Initramfs, buf.Bytes(), 0o644); err != nil {
		return nil, err
	}

	fmt.Fprintf(log, "images: test disk (%s)\n", diskKind)
	if err := buildDisk(ctx, mkfs, img.Disk); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(stampPath, stampData, 0o644); err != nil {
		return nil, err
	}
	return img, nil
}

// available returns the modules of names that ix has, telling log about
// the others that are not built into the kernel either.
func available(ix *ModuleIndex, builtin map[string]bool, names []string, release string, log io.Writer) []string {
	var have []string
	for _, m := range names {
		switch {
		case ix.Has(m):
			have = append(have, m)
		case !builtin[ModuleName(m)]:
			fmt.Fprintf(log, "images: kernel %s has no module %s, skipped\n", release, m)
		}
	}
	return have
}

// builtinModules returns the names of the modules built into the kernel
// (its modules.builtin; none when that is missing).
func builtinModules(modDir string) map[string]bool {
	data, err := os.ReadFile(filepath.Join(modDir, "modules.builtin"))
	if err != nil {
		return nil
	}
	names := map[string]bool{}
	for _, l := range strings.Fields(string(data)) {
		names[ModuleName(l)] = true
	}
	return names
}

// loadAndCacheModuleIndex indexes an unpacked kernel's modules and, the
// first time, stores the index as modules.dep in that (cache) directory.
func loadAndCacheModuleIndex(modDir string) (*ModuleIndex, error) {
	depFile := filepath.Join(modDir, "modules.dep")
	_, statErr := os.Stat(depFile)
	ix, err := LoadModuleIndex(modDir)
	if err != nil || statErr == nil {
		return ix, err
	}
	var buf bytes.Buffer
	if err := ix.WriteModulesDep(&buf); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(depFile, buf.Bytes(), 0o644); err != nil {
		return nil, err
	}
	return ix, nil
}

func upToDate(stampPath string, want []byte, img *Image) bool {
	have, err := os.ReadFile(stampPath)
	if err != nil || !bytes.Equal(have, want) {
		return false
	}
	for _, p := range []string{img.Kernel, img.BzImage, img.Initramfs, img.Disk} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return false
		}
	}
	return true
}

// findKernel returns the vmlinuz file and the kernel release of an
// unpacked kernel package.
func findKernel(root string) (string, string, error) {
	matches, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	sort.Strings(matches)
	if len(matches) == 0 {
		return "", "", fmt.Errorf("%w (in %s)", ErrNoKernel, root)
	}
	p := matches[len(matches)-1]
	return p, strings.TrimPrefix(filepath.Base(p), "vmlinuz-"), nil
}

// WriteGzip writes the archive gzip-compressed with a deterministic gzip
// header (no name, mtime 0).
func WriteGzip(w io.Writer, a *Archive) error {
	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return fmt.Errorf("images: %w", err)
	}
	if _, err := a.WriteTo(zw); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("images: gzip: %w", err)
	}
	return nil
}

func writeFileAtomic(path string, data []byte, perm fs.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return fmt.Errorf("images: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("images: %w", err)
	}
	return nil
}

// fallbackApplets returns the applets linked when the busybox binary cannot
// list its applets on this host.
func fallbackApplets() []string {
	return []string{
		"cat", "cut", "dmesg", "echo", "grep", "head", "insmod", "ls", "lsmod",
		"mkdir", "mount", "nproc", "poweroff", "ps", "reboot", "sed", "setsid",
		"sh", "sleep", "tail", "tr", "umount", "wc", "cttyhack", "mknod", "free",
		"dd", "hexdump", "uname", "test", "[", "true", "false", "timeout",
	}
}

// AddBusybox adds the static busybox binary as /bin/busybox with a /bin
// symlink for every applet, /sbin and /usr/sbin as links to /bin, and the
// usual empty directories (/proc, /sys, /dev, /tmp, /mnt, /usr/bin, /etc).
func AddBusybox(ctx context.Context, a *Archive, busybox string) error {
	if err := a.AddHostFile("bin/busybox", 0o755, busybox); err != nil {
		return err
	}
	applets := fallbackApplets()
	if out, err := exec.CommandContext(ctx, busybox, "--list").Output(); err == nil {
		if list := strings.Fields(string(out)); len(list) > 0 {
			applets = list
		}
	}
	for _, name := range applets {
		if name == "busybox" || strings.Contains(name, "/") {
			continue
		}
		if err := a.AddSymlink("bin/"+name, "busybox"); err != nil {
			return err
		}
	}
	if err := a.AddSymlink("sbin", "bin"); err != nil {
		return err
	}
	if err := a.AddSymlink("usr/sbin", "../bin"); err != nil {
		return err
	}
	for _, d := range []string{"proc", "sys", "dev", "tmp", "mnt", "run", "etc", "root", "usr/bin", "lib/modules"} {
		if err := a.AddDir(d, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// AddModules adds the resolved modules from modDir to the archive as
// guestDir/<name>.ko, in the order given (which /init keeps).
func AddModules(a *Archive, modDir string, mods []Module, guestDir string) error {
	for _, m := range mods {
		if err := a.AddHostFile(guestDir+"/"+m.Name+".ko", 0o644, filepath.Join(modDir, filepath.FromSlash(m.Path))); err != nil {
			return err
		}
	}
	return nil
}

// InsmodLines returns shell lines that load the modules from guestDir in
// order, reporting failures without stopping.
func InsmodLines(mods []Module, guestDir string) string {
	var b strings.Builder
	for _, m := range mods {
		fmt.Fprintf(&b, "insmod %s/%s.ko || echo \"RF-INSMOD-FAILED %s\"\n", guestDir, m.Name, m.Name)
	}
	return b.String()
}

// l2Init renders the L2 /init script: mods are loaded always, rootMods
// before mounting a root disk.
func l2Init(mods, rootMods []Module) string {
	return `#!/bin/sh
export PATH=/bin:/usr/bin
mount -t proc proc /proc
echo ` + InitReachedMarker + `
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
cmdline=$(cat /proc/cmdline)
# param NAME prints the value of NAME=VALUE or NAME="VALUE WITH SPACES".
param() {
	case " $cmdline " in
	*" $1=\""*) v=${cmdline#*$1=\"}; echo "${v%%\"*}" ;;
	*" $1="*) v=" $cmdline "; v=${v#* $1=}; echo "${v%% *}" ;;
	esac
}
` + InsmodLines(mods, "/lib/modules") + `echo "RF-CPUS $(nproc) $(grep -c ^processor /proc/cpuinfo)"
echo "RF-MEMTOTAL-KB $(sed -n 's/^MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo)"
` + switchRoot(rootMods) + `ip link set lo up
# rf.ip=ADDR/LEN[,GATEWAY]: the first NIC's address and default route.
ip_conf=$(param rf.ip)
if [ -n "$ip_conf" ]; then
	nic=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
	if [ -n "$nic" ] && ip link set "$nic" up && ip addr add "${ip_conf%%,*}" dev "$nic"; then
		case "$ip_conf" in *,*) ip route add default via "${ip_conf#*,}" ;; esac
		echo "RF-IP $nic ${ip_conf%%,*}"
	else
		echo "RF-IP-FAILED ${nic:-no NIC}"
	fi
fi
# rf.addr=MAC=ADDR/LEN[,...] (the supervisor sets it for loop network
# NICs and TAP NICs with an ip): the NIC of that MAC gets that address.
for pair in $(param rf.addr | tr , ' '); do
	mac=${pair%%=*}
	nic=""
	for d in /sys/class/net/*; do
		[ "$(cat "$d/address" 2>/dev/null)" = "$mac" ] && nic=${d##*/}
	done
	if [ -n "$nic" ] && ip link set "$nic" up && ip addr add "${pair#*=}" dev "$nic"; then
		echo "RF-ADDR $nic ${pair#*=}"
	else
		echo "RF-ADDR-FAILED $mac"
	fi
done
if [ -b /dev/vda ]; then
	mount -o ro /dev/vda /mnt || echo "RF-MOUNT-FAILED /dev/vda"
fi
cat_path=$(param rf.cat)
if [ -n "$cat_path" ]; then
	cat "/mnt$cat_path"
fi
# rf.shares=TAG[,TAG...] (the supervisor sets it): each virtio-fs share is
# mounted at /mnt/TAG (at /shares/TAG where /mnt is a read-only disk).
for tag in $(param rf.shares | tr , ' '); do
	dir=/mnt/$tag
	mkdir -p "$dir" 2>/dev/null || { dir=/shares/$tag; mkdir -p "$dir"; }
	if mount -t virtiofs "$tag" "$dir"; then
		echo "RF-SHARE $tag $dir"
	else
		echo "RF-SHARE-FAILED $tag"
	fi
done
# The agent, restarted whenever it exits (one console line each time),
# after a pause doubling from 1 to 32 seconds.
if [ -x /usr/bin/rf-agent ] && [ "$(param rf.agent)" != 0 ]; then
	(
		pause=1
		while :; do
			/usr/bin/rf-agent </dev/null
			echo "RF-AGENT-EXIT $? (restarting in ${pause}s)"
			sleep $pause
			[ $pause -lt 32 ] && pause=$((pause * 2))
		done
	) &
fi
status=0
cmd=$(param rf.cmd)
if [ -n "$cmd" ]; then
	sh -c "$cmd"
	status=$?
	echo "RF-CMD-EXIT $status"
fi
if [ "$(param rf.poweroff)" != 1 ]; then
	setsid cttyhack sh
	status=$?
fi
# The VMM's exit status is the byte written to its status register (I/O
# port 0x501, memory-mapped at 0xFEB00000; this kernel has no /dev/port).
if [ "$status" != 0 ]; then
	devmem 0xFEB00000 8 $((status & 255))
fi
poweroff -f
`
}

// RootSwitchMarker starts the line /init prints right before it
// switch_roots to a root disk ("RF-SWITCH-ROOT /dev/vda").
const RootSwitchMarker = "RF-SWITCH-ROOT"

// RootFailedMarker starts the line /init prints when it cannot use the
// root disk ("RF-ROOT-FAILED /dev/vda: ..."); it then goes on as without
// root=.
const RootFailedMarker = "RF-ROOT-FAILED"

// switchRoot renders the part of /init that boots a root disk (see the
// package doc); it does nothing without root= or rf.root=.
func switchRoot(rootMods []Module) string {
	return `root=$(param rf.root)
[ -n "$root" ] || root=$(param root)
if [ -n "$root" ]; then
` + indent(InsmodLines(rootMods, "/lib/modules")) + `	# rootdev SPEC prints the block device of SPEC (a path, LABEL= or UUID=).
	rootdev() {
		case "$1" in
		LABEL=* | UUID=*) findfs "$1" 2>/dev/null ;;
		*) [ -b "$1" ] && echo "$1" ;;
		esac
	}
	i=0
	while ! dev=$(rootdev "$root") && [ $i -lt 50 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	mode=ro
	case " $cmdline " in *" rw "*) mode=rw ;; esac
	fstype=$(param rootfstype)
	rootinit=$(param init)
	[ -n "$rootinit" ] || rootinit=/sbin/init
	mkdir -p /newroot
	if [ -z "$dev" ]; then
		echo "` + RootFailedMarker + ` $root: no such block device"
	elif ! mount ${fstype:+-t "$fstype"} -o "$mode" "$dev" /newroot; then
		echo "` + RootFailedMarker + ` $root: cannot mount $dev"
	elif [ ! -e "/newroot$rootinit" ] && [ ! -L "/newroot$rootinit" ]; then
		# (-L: /sbin/init is an absolute link, /lib/systemd/systemd, that
		# only resolves inside the new root.)
		umount /newroot
		echo "` + RootFailedMarker + ` $root: no $rootinit on $dev"
	else
		echo "` + RootSwitchMarker + ` $dev"
		umount /tmp
		mount --move /dev /newroot/dev
		mount --move /sys /newroot/sys
		mount --move /proc /newroot/proc
		exec switch_root /newroot "$rootinit"
	fi
fi
`
}

// indent prefixes every line of s with a tab.
func indent(s string) string {
	if s == "" {
		return ""
	}
	return "\t" + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n\t") + "\n"
}

// findMkfs returns the mkfs.ext2 path or "".
func findMkfs() string {
	for _, p := range []string{"mkfs.ext2", "/sbin/mkfs.ext2", "/usr/sbin/mkfs.ext2"} {
		if lp, err := exec.LookPath(p); err == nil {
			return lp
		}
	}
	return ""
}

// buildDisk writes the test disk: a 4 MiB ext2 with /hello.txt built
// reproducibly (fixed UUID, hash seed and time, 128-byte inodes without
// creation times) when mkfs is set, otherwise a 1 MiB raw image whose
// first sector starts with DiskText.
func buildDisk(ctx context.Context, mkfs, dst string) error {
	tmp := dst + ".tmp"
	os.Remove(tmp)
	if mkfs == "" {
		data := make([]byte, 1<<20)
		copy(data, DiskText)
		return writeFileAtomic(dst, data, 0o644)
	}
	src, err := os.MkdirTemp("", "rf-disk-")
	if err != nil {
		return fmt.Errorf("images: %w", err)
	}
	defer os.RemoveAll(src)
	hello := filepath.Join(src, "hello.txt")
	if err := os.WriteFile(hello, []byte(DiskText), 0o644); err != nil {
		return fmt.Errorf("images: %w", err)
	}
	for _, p := range []string{hello, src} {
		if err := os.Chtimes(p, time.Unix(0, 0), time.Unix(0, 0)); err != nil {
			return fmt.Errorf("images: %w", err)
		}
	}
	cmd := exec.CommandContext(ctx, mkfs, "-q", "-F", "-b", "1024", "-I", "128", "-L", "rfdisk",
		"-U", "52460000-0000-4000-8000-000000000001",
		"-E", "hash_seed=52460000-0000-4000-8000-000000000002,root_owner=0:0",
		"-d", src, tmp, "4M")
	cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME=1", "LC_ALL=C")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("images: %s: %w: %s", mkfs, err, strings.TrimSpace(string(out)))
	}
	// mkfs -d copies the source files' ctimes, which cannot be set; reset
	// every timestamp with debugfs so that the image is reproducible.
	if debugfs, err := exec.LookPath(filepath.Join(filepath.Dir(mkfs), "debugfs")); err == nil {
		var script strings.Builder
		for _, p := range []string{"/", "/hello.txt", "/lost+found"} {
			for _, f := range []string{"atime", "ctime", "mtime"} {
				fmt.Fprintf(&script, "sif %s %s 0\n", p, f)
			}
		}
		cmd := exec.CommandContext(ctx, debugfs, "-w", "-f", "-", tmp)
		cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME=1", "LC_ALL=C")
		cmd.Stdin = strings.NewReader(script.String())
		if out, err := cmd.CombinedOutput(); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("images: %s: %w: %s", debugfs, err, strings.TrimSpace(string(out)))
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("images: %w", err)
	}
	return nil
}
