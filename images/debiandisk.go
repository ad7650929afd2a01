package images

import (
	"bufio"
	"bytes"
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
	"sort"
	"strconv"
	"strings"
	"syscall"

	"rainforest/internal/shquote"
)

// The Debian system image (BuildDebian): a bootable ext4 root disk made
// with mmdebstrap from Debian's packages. It boots with the default
// image's kernel and initramfs, whose /init switches to it with root=
// (see the package doc).
//
// mmdebstrap rather than debootstrap: it resolves the whole package set,
// the extra packages included, with apt in one go (debootstrap's own
// resolver handles the base set and installs the rest one by one),
// downloads in parallel, reuses a directory of .deb files through its
// hooks, runs hooks at each stage, and is reproducible with
// SOURCE_DATE_EPOCH. It is in Debian 12 (scripts/setup.sh installs it).

// Names and defaults of the Debian image.
const (
	// DebianDiskName is the Debian disk in the output directory.
	DebianDiskName = "debian.img"
	// DebianPackagesName lists the packages installed in it ("name
	// version" per line).
	DebianPackagesName = "debian.packages"
	// DefaultDebianSuite is the Debian release installed.
	DefaultDebianSuite = "bookworm"
	// DebianCmdline is what the kernel command line needs to boot the
	// Debian disk when it is the subOS's first disk.
	DebianCmdline = "root=/dev/vda"
	// DebianDiskRoom is the free space the disk gets beyond its content
	// when DebianOptions.Size is 0 (the image file is sparse).
	DebianDiskRoom = 1 << 30
	// debianStampName records the inputs of the last Debian build.
	debianStampName = "debian.stamp"
	// debianRootName is the root file system while it is being built.
	debianRootName = "debian-root"
	// debianArchivesName is the .deb cache (under the cache directory)
	// mmdebstrap reuses between builds.
	debianArchivesName = "debian-archives"
	// debianStampFormat changes whenever the Debian build changes in a
	// way its other inputs do not show.
	debianStampFormat = 1
	// debianEpoch is SOURCE_DATE_EPOCH for mmdebstrap and mkfs
	// (2024-01-01): fixed, for reproducible output.
	debianEpoch = 1704067200
	// mergedUsrHooks makes mmdebstrap set up merged /usr itself instead
	// of installing usrmerge (and with it perl).
	mergedUsrHooks = "/usr/share/mmdebstrap/hooks/merged-usr"
)

// Sentinel errors of BuildDebian and FindDebian.
var (
	// ErrDebianNotBuilt means the output directory has no Debian image
	// (rfimage --image debian builds it).
	ErrDebianNotBuilt = errors.New("images: the Debian image is not built (rfimage --image debian)")
	// ErrDebianTools means what building the Debian image needs is
	// missing: root, mmdebstrap, mkfs.ext4, or the agent.
	ErrDebianTools = errors.New("images: cannot build the Debian image here")
)

// DebianPackages returns the packages the Debian image has beyond
// mmdebstrap's minbase variant (the essential packages and apt), with
// their dependencies but without recommended packages.
func DebianPackages() []string {
	return []string{
		"systemd", "systemd-sysv", "systemd-resolved", "udev", "dbus", "kmod",
		"iproute2", "iputils-ping", "netbase", "openssh-server",
		"iperf3", "sockperf", "fio", "procps", "e2fsprogs", "less",
	}
}

// DebianOptions configure BuildDebian. The zero value builds the default
// Debian image.
type DebianOptions struct {
	// OutDir holds the outputs and the caches (default DefaultOutDir);
	// the default image is built (or found up to date) there first, for
	// its kernel's modules.
	OutDir string
	// ToolsDir holds the guest tools, placed in DebianToolsDir; it must
	// have rf-agent. Default <OutDir>/tools, as for Build.
	ToolsDir string
	// Suite is the Debian release (default DefaultDebianSuite).
	Suite string
	// Mirrors are mmdebstrap MIRROR arguments (a URL, or a "deb ..."
	// line); none means Debian's (deb.debian.org, with the updates and
	// security archives for a stable release).
	Mirrors []string
	// Packages are installed beyond DebianPackages.
	Packages []string
	// SSHKey is a file of public keys (ParseAuthorizedKeys) installed as
	// root's authorized keys; empty for none, and then nobody can log in
	// over SSH.
	SSHKey string
	// Size is the disk size in bytes; 0 fits the content plus
	// DebianDiskRoom.
	Size int64
	// Log receives progress (mmdebstrap's output, steps); nil discards it.
	Log io.Writer
	// Force rebuilds even when the stamp matches (for newer packages
	// from the mirror: the stamp records the inputs, not the archive's
	// state).
	Force bool
}

// DebianImage is a built Debian image.
type DebianImage struct {
	// Disk is the raw ext4 disk (label DebianLabel).
	Disk string
	// Packages lists the installed packages ("name version" per line).
	Packages string
	// Kernel, BzImage and Initramfs are the default image's, which boot
	// it with DebianCmdline.
	Kernel, BzImage, Initramfs string
	// KernelVersion is the release whose modules the disk has.
	KernelVersion string
	// Suite is the Debian release.
	Suite string
	// SSHKey tells whether root has authorized keys.
	SSHKey bool
}

type debianStamp struct {
	Format        int               `json:"format"`
	Suite         string            `json:"suite"`
	Mirrors       []string          `json:"mirrors,omitempty"`
	Packages      []string          `json:"packages"`
	KernelPackage string            `json:"kernel_package"`
	KernelVersion string            `json:"kernel_package_version"`
	Release       string            `json:"release"`
	Tools         map[string]string `json:"tools"`
	SSHKey        bool              `json:"ssh_key"`
	Size          int64             `json:"size,omitempty"`
	// FilesSHA256 covers the generated files and the setup script.
	FilesSHA256 string `json:"files_sha256"`
}

// BuildDebian builds the Debian image into opts.OutDir, or returns it
// when a previous build had the same inputs. Building needs root,
// mmdebstrap and mkfs.ext4 (ErrDebianTools), and takes a minute or two;
// the downloaded packages are kept for the next build.
func BuildDebian(ctx context.Context, opts DebianOptions) (*DebianImage, error) {
	if opts.OutDir == "" {
		opts.OutDir = DefaultOutDir
	}
	if opts.Suite == "" {
		opts.Suite = DefaultDebianSuite
	}
	log := opts.Log
	if log == nil {
		log = io.Discard
	}
	out, err := filepath.Abs(opts.OutDir)
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	var cfg debianConfig
	if opts.SSHKey != "" {
		data, err := os.ReadFile(opts.SSHKey)
		if err != nil {
			return nil, fmt.Errorf("images: ssh key: %w", err)
		}
		if cfg.AuthorizedKeys, err = ParseAuthorizedKeys(data); err != nil {
			return nil, fmt.Errorf("%s: %w", opts.SSHKey, err)
		}
	}
	tools, toolSums, err := findTools(opts.ToolsDir, filepath.Join(out, ToolsDirName))
	if err != nil {
		return nil, err
	}
	if tools["rf-agent"] == "" {
		return nil, fmt.Errorf("%w: no rf-agent among the guest tools (make image builds it into %s)", ErrDebianTools, filepath.Join(out, ToolsDirName))
	}
	base, err := Build(ctx, Options{OutDir: out, ToolsDir: opts.ToolsDir, Log: log})
	if err != nil {
		return nil, err
	}
	files := debianFiles(cfg)
	script := debianSetupScript(base.KernelVersion)
	pkgs := append(DebianPackages(), opts.Packages...)
	st := debianStamp{
		Format: debianStampFormat, Suite: opts.Suite, Mirrors: opts.Mirrors, Packages: pkgs,
		KernelPackage: base.KernelPackage, KernelVersion: base.KernelPackageVersion, Release: base.KernelVersion,
		Tools: toolSums, SSHKey: cfg.AuthorizedKeys != "", Size: opts.Size, FilesSHA256: filesDigest(files, script),
	}
	stampData, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	img := debianImage(out, st)
	stampPath := filepath.Join(out, debianStampName)
	if have, err := os.ReadFile(stampPath); err == nil && bytes.Equal(have, stampData) && !opts.Force && exists(img.Disk) {
		fmt.Fprintf(log, "images: %s is up to date\n", img.Disk)
		return img, nil
	}

	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: mmdebstrap needs root to build a root file system", ErrDebianTools)
	}
	mmdebstrap, err := exec.LookPath("mmdebstrap")
	if err != nil {
		return nil, fmt.Errorf("%w: %v (apt-get install mmdebstrap, or make setup)", ErrDebianTools, err)
	}
	mkfs, err := lookSbin("mkfs.ext4")
	if err != nil {
		return nil, fmt.Errorf("%w: %v (apt-get install e2fsprogs)", ErrDebianTools, err)
	}
	os.Remove(stampPath)
	rootDir := filepath.Join(out, debianRootName)
	if err := removeRootDir(rootDir); err != nil {
		return nil, err
	}
	defer removeRootDir(rootDir)
	archives := filepath.Join(out, cacheDirName, debianArchivesName)
	if err := os.MkdirAll(archives, 0o755); err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}

	fmt.Fprintf(log, "images: mmdebstrap %s into %s\n", opts.Suite, rootDir)
	args := mmdebstrapArgs(opts.Suite, rootDir, archives, pkgs, opts.Mirrors, exists(mergedUsrHooks))
	if err := runLogged(ctx, log, []string{"SOURCE_DATE_EPOCH=" + strconv.Itoa(debianEpoch)}, mmdebstrap, args...); err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "images: kernel %s modules, guest tools, settings\n", base.KernelVersion)
	modDir := filepath.Join(rootDir, "usr", "lib", "modules")
	if err := os.MkdirAll(modDir, 0o755); err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	if err := runLogged(ctx, log, nil, "cp", "-a", "--", base.ModulesDir, filepath.Join(modDir, base.KernelVersion)); err != nil {
		return nil, err
	}
	if err := installTools(rootDir, tools); err != nil {
		return nil, err
	}
	if err := writeSystemFiles(rootDir, files); err != nil {
		return nil, err
	}
	if err := runLogged(ctx, log, nil, "chroot", rootDir, "/bin/sh", "-c", script); err != nil {
		return nil, err
	}
	var list bytes.Buffer
	manifest := exec.CommandContext(ctx, "chroot", rootDir, "dpkg-query", "-W", "-f", "${Package} ${Version}\n")
	manifest.Stdout, manifest.Stderr = &list, log
	if err := manifest.Run(); err != nil {
		return nil, fmt.Errorf("images: dpkg-query: %w", err)
	}

	used, err := treeUsage(rootDir)
	if err != nil {
		return nil, err
	}
	size, err := debianDiskSize(used, opts.Size)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "images: ext4 of %d MiB (%d MiB used) into %s\n", size>>20, used>>20, img.Disk)
	sum := sha256.Sum256(stampData)
	tmp := img.Disk + ".tmp"
	os.Remove(tmp)
	mkfsArgs := []string{"-q", "-F", "-L", DebianLabel, "-m", "1", "-U", uuidOf(sum[:16]),
		"-E", "hash_seed=" + uuidOf(sum[16:]) + ",root_owner=0:0", "-d", rootDir, tmp, strconv.FormatInt(size>>10, 10) + "k"}
	if err := runLogged(ctx, log, []string{"E2FSPROGS_FAKE_TIME=" + strconv.Itoa(debianEpoch)}, mkfs, mkfsArgs...); err != nil {
		os.Remove(tmp)
		return nil, err
	}
	if err := os.Rename(tmp, img.Disk); err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	if err := writeFileAtomic(img.Packages, list.Bytes(), 0o644); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(stampPath, stampData, 0o644); err != nil {
		return nil, err
	}
	return img, nil
}

// FindDebian returns the Debian image built in outDir, without building
// or checking that it is up to date; ErrDebianNotBuilt when there is
// none.
func FindDebian(outDir string) (*DebianImage, error) {
	out, err := filepath.Abs(outDir)
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	data, err := os.ReadFile(filepath.Join(out, debianStampName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: no %s in %s", ErrDebianNotBuilt, debianStampName, out)
	}
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	var st debianStamp
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("images: %s: %w", debianStampName, err)
	}
	img := debianImage(out, st)
	for _, p := range []string{img.Disk, img.Kernel, img.Initramfs} {
		if !exists(p) {
			return nil, fmt.Errorf("%w: no %s", ErrDebianNotBuilt, p)
		}
	}
	return img, nil
}

func debianImage(out string, st debianStamp) *DebianImage {
	return &DebianImage{
		Disk:          filepath.Join(out, DebianDiskName),
		Packages:      filepath.Join(out, DebianPackagesName),
		Kernel:        filepath.Join(out, VmlinuxName),
		BzImage:       filepath.Join(out, BzImageName),
		Initramfs:     filepath.Join(out, InitramfsName),
		KernelVersion: st.Release,
		Suite:         st.Suite,
		SSHKey:        st.SSHKey,
	}
}

// mmdebstrapArgs returns the mmdebstrap command line that installs suite
// with pkgs into the directory root: minbase and pkgs without
// recommended packages, no manual pages, documentation (copyright files
// kept) or translations, and the .deb files shared with the directory
// archives, which is left holding exactly this build's packages.
func mmdebstrapArgs(suite, root, archives string, pkgs, mirrors []string, mergedUsr bool) []string {
	const inside = `"$1"/var/cache/apt/archives`
	a := shquote.Quote(archives)
	args := []string{"--mode=root", "--format=directory", "--variant=minbase",
		"--include=" + strings.Join(pkgs, ","),
		"--dpkgopt=path-exclude=/usr/share/man/*",
		"--dpkgopt=path-exclude=/usr/share/info/*",
		"--dpkgopt=path-exclude=/usr/share/locale/*",
		"--dpkgopt=path-include=/usr/share/locale/locale.alias",
		"--dpkgopt=path-exclude=/usr/share/doc/*",
		"--dpkgopt=path-include=/usr/share/doc/*/copyright",
		// Keep the essential packages' .deb files too, for the cache.
		"--skip=essential/unlink",
		"--setup-hook=mkdir -p " + inside + "/partial",
		// Hard links where the cache is on the same file system.
		"--setup-hook=for f in " + a + "/*.deb; do [ -e \"$f\" ] || continue; ln \"$f\" " + inside + "/ 2>/dev/null || cp \"$f\" " + inside + "/; done",
		"--customize-hook=rm -f " + a + "/*.deb; for f in " + inside + "/*.deb; do [ -e \"$f\" ] || continue; ln \"$f\" " + a + "/ 2>/dev/null || cp \"$f\" " + a + "/; done",
	}
	if mergedUsr {
		args = append(args, "--hook-dir="+mergedUsrHooks)
	}
	args = append(args, "--", suite, root)
	return append(args, mirrors...)
}

// debianDiskSize returns the disk size for a tree using used bytes: want
// when set (at least the content plus a tenth, for the file system's
// own use), otherwise that plus DebianDiskRoom; a multiple of 64 MiB.
func debianDiskSize(used, want int64) (int64, error) {
	const align = 64 << 20
	need := used + used/10
	if want > 0 {
		if want < need {
			return 0, fmt.Errorf("images: a %d MiB disk cannot hold the %d MiB Debian root file system", want>>20, need>>20)
		}
		return (want + align - 1) / align * align, nil
	}
	return (need + DebianDiskRoom + align - 1) / align * align, nil
}

// treeUsage estimates what the tree at dir takes on ext4: each file
// rounded up to 4 KiB, plus an inode (256 bytes) per entry.
func treeUsage(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		total += 256
		if d.Type().IsRegular() || d.IsDir() || d.Type()&fs.ModeSymlink != 0 {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += (info.Size() + 4095) / 4096 * 4096
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("images: %w", err)
	}
	return total, nil
}

// filesDigest is the SHA-256 of the generated files and the setup script.
func filesDigest(files []SystemFile, script string) string {
	h := sha256.New()
	for _, f := range files {
		fmt.Fprintf(h, "%s\x00%o\x00%d\x00%s", f.Path, uint32(f.Mode), len(f.Data), f.Data)
	}
	fmt.Fprintf(h, "script\x00%s", script)
	return hex.EncodeToString(h.Sum(nil))
}

// installTools copies the guest tools into DebianToolsDir of the tree.
func installTools(rootDir string, tools map[string]string) error {
	names := make([]string, 0, len(tools))
	for n := range tools {
		names = append(names, n)
	}
	sort.Strings(names)
	files := make([]SystemFile, 0, len(names))
	for _, n := range names {
		data, err := os.ReadFile(tools[n])
		if err != nil {
			return fmt.Errorf("images: tool: %w", err)
		}
		files = append(files, SystemFile{Path: DebianToolsDir + "/" + n, Mode: 0o755, Data: string(data)})
	}
	return writeSystemFiles(rootDir, files)
}

// uuidOf formats 16 bytes as a version 4 UUID.
func uuidOf(b []byte) string {
	var u [16]byte
	copy(u[:], b)
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	x := hex.EncodeToString(u[:])
	return x[:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:]
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// lookSbin finds a program in PATH or in /usr/sbin and /sbin (not in a
// non-root user's PATH on Debian).
func lookSbin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		if p, err := exec.LookPath(filepath.Join(dir, name)); err == nil {
			return p, nil
		}
	}
	return exec.LookPath(name)
}

// runLogged runs a command with its output going to log; its error
// carries the output's last lines.
func runLogged(ctx context.Context, log io.Writer, env []string, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive"), env...)
	tail := &tailBuffer{max: 4096}
	w := io.MultiWriter(log, tail)
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("images: %s: %w\n%s", filepath.Base(name), err, tail.String())
	}
	return nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return strings.TrimSpace(string(t.buf)) }

// removeRootDir removes a root file system tree left by a build, first
// detaching what an interrupted mmdebstrap left mounted in it (/proc,
// /sys, /dev), so that removing it cannot reach into those.
func removeRootDir(dir string) error {
	mounts, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	for _, m := range mounts { // deepest first
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			return fmt.Errorf("images: unmount %s: %w", m, err)
		}
	}
	if mounts, err := mountsUnder(dir); err != nil || len(mounts) > 0 {
		return fmt.Errorf("images: %s still has mounts (%v, %v); unmount them", dir, mounts, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("images: %w", err)
	}
	return nil
}

// mountsUnder lists the mount points at or below dir, deepest first.
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	defer f.Close()
	return parseMountsUnder(f, dir)
}

// parseMountsUnder lists the mount points of a mountinfo file at or
// below dir, deepest first.
func parseMountsUnder(r io.Reader, dir string) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountinfo(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("images: mountinfo: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, nil
}

// unescapeMountinfo undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
