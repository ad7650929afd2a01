package main

import (
	"strings"
	"testing"
	"time"
)

func TestScript(t *testing.T) {
	p := &benchPlan{runs: 2, runTimeout: time.Minute, qemuCPU: "host"}
	s := p.script(vmmPaths{rfbench: "/bin/rfbench", rfm: "/bin/rfm", qemu: "/usr/bin/qemu-system-x86_64",
		qemuData: "/usr/share/qemu", kernel: "/l2/vmlinux", initrd: "/l2/initrd", hugetlbfs: "/dev/hugepages",
		libraryPath: "/lib/x86_64-linux-gnu:/lib64"})
	lines := strings.Split(strings.TrimSpace(s), "\n")
	var runs []string
	for _, l := range lines {
		if strings.HasPrefix(l, "/bin/rfbench ") {
			f := strings.Fields(l)
			runs = append(runs, f[2]+f[4])
		}
	}
	if strings.Join(runs, " ") != "rfm1 qemu1 qemu2 rfm2" {
		t.Fatalf("run order %v in\n%s", runs, s)
	}
	if !strings.Contains(s, "export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/lib64\n") {
		t.Error("no LD_LIBRARY_PATH")
	}
	quoted := "'" + cmdline + "'"
	for _, name := range []string{vmmRFM, vmmQEMU} {
		c := p.commands[name]
		if !strings.Contains(c, quoted) || !strings.Contains(c, "/l2/vmlinux") || !strings.Contains(c, "/l2/initrd") {
			t.Errorf("%s command %q lacks the shared kernel, initrd or cmdline", name, c)
		}
	}
	for _, want := range []string{"--page-size 2M", "--memory 512M", "--cpus 0-1"} {
		if !strings.Contains(p.commands[vmmRFM], want) {
			t.Errorf("rfm command lacks %q", want)
		}
	}
	for _, want := range []string{"-M microvm,acpi=on,memory-backend=ram", "-enable-kvm", "-smp 2", "-m 512M",
		"mem-path=/dev/hugepages,prealloc=on", "-nodefaults", "-no-user-config", "-nographic", "-serial stdio", "-L /usr/share/qemu"} {
		if !strings.Contains(p.commands[vmmQEMU], want) {
			t.Errorf("qemu command lacks %q", want)
		}
	}
}
