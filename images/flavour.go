package images

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Debian kernel flavours of the same kernel build: the package of release
// 6.1.0-57-<flavour> is linux-image-6.1.0-57-<flavour>.
const (
	// FlavourCloud is the default image's kernel (DefaultKernelPackage):
	// virtio and a few file systems, no 9p.
	FlavourCloud = "cloud-amd64"
	// FlavourGeneric is Debian's generic kernel, with 9p (CONFIG_NET_9P,
	// CONFIG_9P_FS) and most drivers as modules, ext4 among them.
	FlavourGeneric = "amd64"
)

// ErrKernelRelease means a kernel release is not a Debian one
// (VERSION-ABI-FLAVOUR, as 6.1.0-57-cloud-amd64).
var ErrKernelRelease = errors.New("images: not a Debian kernel release")

// FlavourPackage returns the package of flavour's kernel of the same
// version and ABI as release (a Debian kernel release, uname -r):
// FlavourPackage("6.1.0-57-cloud-amd64", FlavourGeneric) is
// "linux-image-6.1.0-57-amd64".
func FlavourPackage(release, flavour string) (string, error) {
	parts := strings.SplitN(release, "-", 3)
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" || flavour == "" ||
		strings.Trim(parts[1], "0123456789") != "" || strings.ContainsAny(flavour, "/ _=") {
		return "", fmt.Errorf("%w: %q (flavour %q)", ErrKernelRelease, release, flavour)
	}
	return "linux-image-" + parts[0] + "-" + parts[1] + "-" + flavour, nil
}

// NinePModules returns the modules a guest needs to mount QEMU's virtio-9p
// (mount -t 9p -o trans=virtio); Resolve adds their dependencies (netfs,
// fscache where the kernel has them as modules).
func NinePModules() []string {
	return []string{"9pnet", "9pnet_virtio", "9p"}
}

// FlavourModules returns the modules the initramfs of BuildFlavour loads
// by default: DefaultModules, then DefaultRootModules (the generic kernel
// has ext4 as a module, and /init mounts /dev/vda without root= too) and
// crc32c_generic (ext4's metadata checksums ask the crypto API for crc32c,
// a module there too, which the initramfs cannot modprobe), then extra.
func FlavourModules(extra ...string) []string {
	return append(append(append(DefaultModules(), DefaultRootModules()...), "crc32c_generic"), extra...)
}

// BuildFlavour builds the L2 image with flavour's kernel of the same
// version as base's (package version and ABI: only the configuration
// differs), booted as a bzImage (Options.NoVmlinux): a busybox initramfs
// with the same /init and tools, loading opts.Modules (default
// FlavourModules()). The package is downloaded on first use into base's
// download cache, and the outputs go to <base's directory>/flavour-<flavour>
// unless opts.OutDir says otherwise; opts.KernelPackage and
// opts.KernelPackageVersion are set from base.
func BuildFlavour(ctx context.Context, base *Image, flavour string, opts Options) (*Image, error) {
	pkg, err := FlavourPackage(base.KernelVersion, flavour)
	if err != nil {
		return nil, err
	}
	if base.KernelPackageVersion == "" {
		return nil, fmt.Errorf("images: base image %s has no kernel package version", base.BzImage)
	}
	dir := filepath.Dir(base.BzImage)
	opts.KernelPackage, opts.KernelPackageVersion = pkg, base.KernelPackageVersion
	opts.NoVmlinux = true
	if opts.OutDir == "" {
		opts.OutDir = filepath.Join(dir, "flavour-"+flavour)
	}
	if opts.CacheDir == "" {
		opts.CacheDir = filepath.Join(dir, cacheDirName)
	}
	if opts.ToolsDir == "" {
		if st, err := os.Stat(filepath.Join(dir, ToolsDirName)); err == nil && st.IsDir() {
			opts.ToolsDir = filepath.Join(dir, ToolsDirName)
		}
	}
	if opts.Modules == nil {
		opts.Modules = FlavourModules()
	}
	img, err := Build(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("images: %s kernel %s: %w", flavour, pkg, err)
	}
	return img, nil
}
