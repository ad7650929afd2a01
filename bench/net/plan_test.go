package main

import (
	"os/exec"
	"strings"
	"testing"

	"rainforest/internal/shquote"
)

func testPaths() sessionPaths {
	p := sessionPaths{rfm: "/bin/rfm", rfnet: "/bin/rfnet", kernel: "/l2/vmlinux", initrd: "/l2/initramfs.cpio.gz",
		qemu: "/opt/qemu/bin/qemu-system-x86_64", qemuData: "/opt/qemu/share/qemu"}
	for i, v := range diskVars() {
		p.disks[i] = "$" + v
	}
	return p
}

// TestScript checks that the session's script is valid sh, measures each
// row with the measurer, and falls back without RFloop.
func TestScript(t *testing.T) {
	p := &sessionPlan{runs: 2, secs: 5, loop: true, qemu: true}
	s := p.script(testPaths())
	if _, err := exec.LookPath("sh"); err == nil {
		if out, err := exec.Command("sh", "-n", "-c", s).CombinedOutput(); err != nil {
			t.Fatalf("sh -n: %v: %s\n%s", err, out, s)
		}
	}
	for _, want := range []string{
		"-row host -addr 127.0.0.1 -server local -client local -n 2 -secs 5",
		"-row rfloop -addr 10.99.0.3 -server rfm:b -client rfm:a",
		"-row rftun -addr 10.77.0.3 -server rfm:b -client rfm:a",
		"-row uplink -addr 10.0.2.2 -server local -client rfm:a",
		"-row qemu-vhost -addr 10.78.0.3 -server vsock:4 -client vsock:3",
		"-row slirp -addr 10.0.2.2 -server local -client vsock:3",
		"--net loop=lan0,members=a+b", "--net bridge=rfbr0,create,address=10.77.0.1/24,mac=52:54:00:77:00:02",
		"--net user,host-loopback", "vhost=on", "-netdev user,id=u0", "vhost-vsock-pci,guest-cid=3",
		"RF-NET-INFO row=rfloop skipped=",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks %q", want)
		}
	}
	if !strings.Contains(p.commands["qemu a"], "taskset -c 1") || !strings.Contains(p.commands["qemu b"], "taskset -c 2") {
		t.Errorf("QEMU guests not on cores 1 and 2: %q %q", p.commands["qemu a"], p.commands["qemu b"])
	}
	noLoop := (&sessionPlan{runs: 1, secs: 1}).script(testPaths())
	if strings.Contains(noLoop, "loop=lan0") || strings.Contains(noLoop, "vsock:") || !strings.Contains(noLoop, `row=qemu-vhost skipped=`) {
		t.Errorf("without RFloop and QEMU:\n%s", noLoop)
	}
}

// TestExpandDisks checks that the disk variables expand in a quoted
// command line.
func TestExpandDisks(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	args := qemuArgv(testPaths(), "qa", 1, "$DEB_QA", qemuMACA, qemuCIDA, false)
	cmd := "DEB_A=/dev/vda DEB_QA=/dev/vdc; set -- " + subOSCreate(testPaths(), "a", 1, "$DEB_A", nil) + `; printf '%s\n' "$@"`
	out, err := exec.Command("sh", "-c", cmd).Output()
	if err != nil || !strings.Contains(string(out), "\n/dev/vda\n") {
		t.Errorf("subOS disk: %v %q", err, out)
	}
	cmd = "DEB_QA=/dev/vdc; set -- " + expandDisks(shquote.Join(args)) + `; printf '%s\n' "$@"`
	out, err = exec.Command("sh", "-c", cmd).Output()
	if err != nil || !strings.Contains(string(out), "\nfile=/dev/vdc,format=raw,if=virtio,cache=none\n") {
		t.Errorf("QEMU disk: %v %q", err, out)
	}
}
