package images

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestFlavourPackage(t *testing.T) {
	for _, c := range []struct{ release, flavour, want string }{
		{"6.1.0-57-cloud-amd64", FlavourGeneric, "linux-image-6.1.0-57-amd64"},
		{"6.1.0-57-amd64", FlavourCloud, "linux-image-6.1.0-57-cloud-amd64"},
		{"6.1.0-57-cloud-amd64", FlavourCloud, "linux-image-6.1.0-57-cloud-amd64"},
		{"6.12.9-1-rt-amd64", "rt-amd64", "linux-image-6.12.9-1-rt-amd64"},
	} {
		got, err := FlavourPackage(c.release, c.flavour)
		if err != nil || got != c.want {
			t.Errorf("FlavourPackage(%q, %q) = %q, %v; want %q", c.release, c.flavour, got, err, c.want)
		}
	}
	for _, c := range []struct{ release, flavour string }{
		{"", FlavourGeneric}, {"6.1.0", FlavourGeneric}, {"6.1.0-57", FlavourGeneric},
		{"6.1.0-x57-cloud-amd64", FlavourGeneric}, {"6.1.0--amd64", FlavourGeneric},
		{"6.1.0-57-cloud-amd64", ""}, {"6.1.0-57-cloud-amd64", "amd64 evil"}, {"6.1.0-57-cloud-amd64", "../x"},
	} {
		if got, err := FlavourPackage(c.release, c.flavour); !errors.Is(err, ErrKernelRelease) {
			t.Errorf("FlavourPackage(%q, %q) = %q, %v; want ErrKernelRelease", c.release, c.flavour, got, err)
		}
	}
}

// The generic kernel's 9p modules (6.1: 9p needs netfs; 9pnet_virtio the
// virtio core), as its .modinfo depends= fields give them.
const fixture9pModulesDep = `kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko kernel/lib/crc16.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/fs/netfs/netfs.ko:
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko
`

func TestNinePModulesResolve(t *testing.T) {
	ix, err := ParseModulesDep(strings.NewReader(fixture9pModulesDep))
	if err != nil {
		t.Fatal(err)
	}
	mods, err := ix.Resolve(append([]string{"virtio", "ext4"}, NinePModules()...)...)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"virtio_ring", "virtio", "jbd2", "mbcache", "crc16", "ext4", "9pnet", "9pnet_virtio", "netfs", "9p"}
	if got := names(mods); !reflect.DeepEqual(got, want) {
		t.Errorf("load order %v, want %v", got, want)
	}
}

func TestFlavourModules(t *testing.T) {
	got := FlavourModules(NinePModules()...)
	def := DefaultModules()
	if !slices.Equal(got[:len(def)], def) {
		t.Errorf("FlavourModules does not start with DefaultModules: %v", got)
	}
	for _, m := range append(append(DefaultRootModules(), "crc32c_generic"), NinePModules()...) {
		if !slices.Contains(got[len(def):], m) {
			t.Errorf("FlavourModules lacks %s: %v", m, got)
		}
	}
	if i, j := slices.Index(got, "ext4"), slices.Index(got, "9p"); i < 0 || j < i {
		t.Errorf("ext4 (the root file system) should come before the extra modules: %v", got)
	}
	// The default modules' list is not aliased.
	FlavourModules("x")[0] = "changed"
	if DefaultModules()[0] == "changed" {
		t.Error("FlavourModules aliases DefaultModules")
	}
}

// BuildFlavour checks the base image before it runs any package tool.
func TestBuildFlavourRejectsBadBase(t *testing.T) {
	dir := t.TempDir()
	base := &Image{BzImage: filepath.Join(dir, BzImageName), KernelVersion: "custom", KernelPackageVersion: "1"}
	if _, err := BuildFlavour(context.Background(), base, FlavourGeneric, Options{}); !errors.Is(err, ErrKernelRelease) {
		t.Errorf("release %q: err = %v, want ErrKernelRelease", base.KernelVersion, err)
	}
	base.KernelVersion, base.KernelPackageVersion = "6.1.0-57-cloud-amd64", ""
	if _, err := BuildFlavour(context.Background(), base, FlavourGeneric, Options{}); err == nil {
		t.Error("a base image without a package version was accepted")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("BuildFlavour wrote %d entries for a rejected base", len(ents))
	}
}

// An image without a vmlinux (Options.NoVmlinux) is up to date without one.
func TestUpToDateWithoutVmlinux(t *testing.T) {
	dir := t.TempDir()
	img := &Image{BzImage: filepath.Join(dir, BzImageName), Initramfs: filepath.Join(dir, InitramfsName), Disk: filepath.Join(dir, DiskName)}
	stampPath := filepath.Join(dir, stampName)
	for _, p := range []string{img.BzImage, img.Initramfs, img.Disk, stampPath} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if !upToDate(stampPath, []byte("x"), img) {
		t.Error("not up to date without Kernel")
	}
	img.Kernel = filepath.Join(dir, VmlinuxName)
	if upToDate(stampPath, []byte("x"), img) {
		t.Error("up to date with a missing vmlinux")
	}
}
