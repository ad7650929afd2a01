package images

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
)

const fixtureModulesDep = `kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/uio/uio.ko:
kernel/drivers/uio/uio_pci_generic.ko: kernel/drivers/uio/uio.ko
kernel/virt/lib/irqbypass.ko:
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko

# cycle for the error test
kernel/a.ko: kernel/b.ko
kernel/b.ko: kernel/a.ko
kernel/c.ko: kernel/missing.ko
`

func names(mods []Module) []string {
	var out []string
	for _, m := range mods {
		out = append(out, m.Name)
	}
	return out
}

func TestResolveModulesDep(t *testing.T) {
	ix, err := ParseModulesDep(strings.NewReader(fixtureModulesDep))
	if err != nil {
		t.Fatal(err)
	}
	mods, err := ix.Resolve("virtio_blk", "virtio_pci", "uio_pci_generic", "virtio")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"virtio_ring", "virtio", "virtio_blk", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "uio", "uio_pci_generic"}
	if got := names(mods); !reflect.DeepEqual(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
	if mods[2].Path != "kernel/drivers/block/virtio_blk.ko" {
		t.Errorf("path %q", mods[2].Path)
	}
	// Dashes and underscores name the same module.
	mods, err = ix.Resolve("kvm-amd")
	if err != nil {
		t.Fatal(err)
	}
	if got := names(mods); !reflect.DeepEqual(got, []string{"irqbypass", "kvm", "kvm_amd"}) {
		t.Errorf("kvm-amd: %v", got)
	}
	if !ix.Has("kvm-amd") || ix.Has("nope") {
		t.Error("Has")
	}
	if _, err := ix.Resolve("a"); !errors.Is(err, ErrModuleCycle) {
		t.Errorf("cycle: err = %v", err)
	}
	if _, err := ix.Resolve("c"); !errors.Is(err, ErrUnknownModule) || !strings.Contains(err.Error(), "needed by c") {
		t.Errorf("missing dep: err = %v", err)
	}
	if _, err := ix.Resolve("nope"); !errors.Is(err, ErrUnknownModule) {
		t.Errorf("unknown: err = %v", err)
	}
	if _, err := ParseModulesDep(strings.NewReader("no colon here\n")); err == nil {
		t.Error("bad line accepted")
	}
}

func TestWriteModulesDepRoundTrip(t *testing.T) {
	ix, err := ParseModulesDep(strings.NewReader(fixtureModulesDep))
	if err != nil {
		t.Fatal(err)
	}
	var buf strings.Builder
	if err := ix.WriteModulesDep(&buf); err != nil {
		t.Fatal(err)
	}
	ix2, err := ParseModulesDep(strings.NewReader(buf.String()))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := ix.Resolve("virtio_pci", "kvm_amd")
	b, err := ix2.Resolve("virtio_pci", "kvm_amd")
	if err != nil || !reflect.DeepEqual(a, b) {
		t.Errorf("round trip: %v vs %v (%v)", a, b, err)
	}
	if !reflect.DeepEqual(ix.Names(), ix2.Names()) {
		t.Errorf("names differ")
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/arch/x86/kvm/kvm-amd.ko": "kvm_amd",
		"virtio_blk.ko.xz":               "virtio_blk",
		"kvm-intel":                      "kvm_intel",
	} {
		if got := ModuleName(in); got != want {
			t.Errorf("ModuleName(%q) = %q, want %q", in, got, want)
		}
	}
}

// The vsock modules of DefaultModules resolve, in load order, against
// the Debian cloud kernel's dependencies (its modules.dep lines).
func TestDefaultModulesVsock(t *testing.T) {
	const dep = fixtureModulesDep + `kernel/net/vmw_vsock/vsock.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/drivers/virtio/virtio.ko kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/drivers/virtio/virtio_ring.ko kernel/net/vmw_vsock/vsock.ko
`
	ix, err := ParseModulesDep(strings.NewReader(dep))
	if err != nil {
		t.Fatal(err)
	}
	var want []string // as Build: the modules the kernel has
	for _, m := range DefaultModules() {
		if ix.Has(m) {
			want = append(want, m)
		}
	}
	mods, err := ix.Resolve(want...)
	if err != nil {
		t.Fatal(err)
	}
	got := names(mods)
	at := func(m string) int { return slices.Index(got, m) }
	if at("vsock") < 0 || at("vsock") > at("vmw_vsock_virtio_transport_common") ||
		at("vmw_vsock_virtio_transport_common") > at("vmw_vsock_virtio_transport") || at("virtio") > at("vmw_vsock_virtio_transport") {
		t.Errorf("load order %v", got)
	}
}
