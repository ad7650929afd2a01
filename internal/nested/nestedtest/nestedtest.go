// Package nestedtest provides stand-ins for the nested layer's inputs in
// tests that cannot boot a real L1 guest: an L1 image of fake files and a
// shell script in the place of qemu-system-x86_64.
package nestedtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"rainforest/images"
)

// WriteFile writes content to p with perm, creating its directory.
func WriteFile(t testing.TB, p, content string, perm os.FileMode) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), perm); err != nil {
		t.Fatal(err)
	}
	return p
}

// L1Image returns an Image whose modules directory has a modules.dep and
// fake module files for kvm-amd, tun, bridge, vhost_net, nf_tables, virtio_pci and
// virtio_blk and their dependencies, and a busybox that is not executable.
func L1Image(t testing.TB) *images.Image {
	t.Helper()
	dir := t.TempDir()
	mods := filepath.Join(dir, "lib/modules/6.1.0-test")
	WriteFile(t, filepath.Join(mods, "modules.dep"),
		"kernel/virt/lib/irqbypass.ko:\n"+
			"kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko\n"+
			"kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko kernel/drivers/crypto/ccp/ccp.ko kernel/virt/lib/irqbypass.ko\n"+
			"kernel/drivers/crypto/ccp/ccp.ko:\n"+
			"kernel/drivers/net/tun.ko:\n"+
			"kernel/drivers/net/tap.ko:\n"+
			"kernel/drivers/vhost/vhost_iotlb.ko:\n"+
			"kernel/drivers/vhost/vhost.ko: kernel/drivers/vhost/vhost_iotlb.ko\n"+
			"kernel/drivers/vhost/vhost_net.ko: kernel/drivers/vhost/vhost.ko kernel/drivers/net/tap.ko kernel/drivers/net/tun.ko\n"+
			"kernel/net/llc/llc.ko:\n"+
			"kernel/net/802/stp.ko: kernel/net/llc/llc.ko\n"+
			"kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n"+
			"kernel/lib/libcrc32c.ko:\n"+
			"kernel/net/netfilter/nfnetlink.ko:\n"+
			"kernel/net/netfilter/nf_tables.ko: kernel/net/netfilter/nfnetlink.ko kernel/lib/libcrc32c.ko\n"+
			"kernel/drivers/virtio/virtio.ko:\n"+
			"kernel/drivers/virtio/virtio_ring.ko:\n"+
			"kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n"+
			"kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n", 0o644)
	for _, m := range []string{"kernel/virt/lib/irqbypass.ko", "kernel/arch/x86/kvm/kvm.ko", "kernel/arch/x86/kvm/kvm-amd.ko", "kernel/drivers/crypto/ccp/ccp.ko",
		"kernel/drivers/net/tun.ko", "kernel/drivers/net/tap.ko", "kernel/drivers/vhost/vhost_iotlb.ko", "kernel/drivers/vhost/vhost.ko",
		"kernel/drivers/vhost/vhost_net.ko", "kernel/net/llc/llc.ko", "kernel/net/802/stp.ko", "kernel/net/bridge/bridge.ko",
		"kernel/lib/libcrc32c.ko", "kernel/net/netfilter/nfnetlink.ko", "kernel/net/netfilter/nf_tables.ko",
		"kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio_pci.ko", "kernel/drivers/block/virtio_blk.ko"} {
		WriteFile(t, filepath.Join(mods, m), "module "+m, 0o644)
	}
	return &images.Image{
		BzImage:    WriteFile(t, filepath.Join(dir, "bzImage"), "kernel", 0o644),
		ModulesDir: mods,
		Busybox:    WriteFile(t, filepath.Join(dir, "busybox"), "busybox", 0o644),
	}
}

// QEMU writes a shell script standing in for qemu-system-x86_64: body
// runs with QEMU's arguments and its stdout is L1's serial console. The
// test is skipped where there is no sh.
func QEMU(t testing.TB, body string) string {
	t.Helper()
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	return WriteFile(t, filepath.Join(t.TempDir(), "qemu"), "#!/bin/sh\n"+body, 0o755)
}
