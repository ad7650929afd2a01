package main

import (
	"os/exec"
	"strings"
	"testing"

	"rainforest/bench/fs/fio"
	"rainforest/bench/fs/report"
	"rainforest/rfm/share"
)

func testPlan(systems ...string) *plan {
	m := map[string]bool{}
	for _, s := range systems {
		m[s] = true
	}
	return &plan{runs: 2, settings: fio.Settings{FileMiB: 8, RuntimeSec: 1, Files: 100}, systems: m,
		virtiofsd: share.Binary{Path: "/usr/lib/qemu/virtiofsd"}, fioTimeout: 60, systemd: true}
}

// shellCheck parses script with sh -n.
func shellCheck(t *testing.T, name, script string) {
	t.Helper()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip(err)
	}
	cmd := exec.Command(sh, "-n")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("%s does not parse: %v\n%s\n%s", name, err, out, script)
	}
}

func TestScripts(t *testing.T) {
	p := testPlan(report.Systems()...)
	l1, guest, guest9p := p.script(), p.guestScript(report.QEMUVirtiofsd), p.guestScript(report.QEMU9p)
	shellCheck(t, "L1 script", l1)
	shellCheck(t, "guest script", guest)
	shellCheck(t, "9p guest script", guest9p)
	for _, want := range []string{
		`"$RFM" create fs --cores 1 --memory 512M --disk "$DEBIAN" --append root=/dev/vda --share /tmp/fsb/rf:fsb`,
		"mount -t virtiofs fsb /mnt/fsb",
		"for r in $(seq 1 2); do for sd in host:/tmp/fsb/host;",
		"for sd in rffuse:/mnt/fsb/run virtio-blk:/root/fsb;",
		`"$VIRTIOFSD" -f --socket-path=/tmp/fsb/qv.sock -o source=/tmp/fsb/qv -o sandbox=chroot -o cache=auto --thread-pool-size=0`,
		"vhost-user-fs-pci,chardev=vfs,tag=fsb", "memory-backend-memfd,id=mem,size=512M,share=on", "virtio-9p-pci,fsdev=p9,mount_tag=fsb9p",
		`x timeout 60 "$FIOBIN" "--directory=$2/meta" --name=create --ioengine=filecreate --nrfiles=100`,
		`'--filename_format=f.$filenum'`,
		`-workload seqwrite -run "$3" -status $?`,
		`cp "$GUESTS"/guest-*.sh /tmp/fsb/qv/_tools/`,
		`-kernel "$L2/vmlinux" -initrd "$L2/initramfs.cpio.gz"`, `-kernel "$L2G/bzImage" -initrd "$L2G/initramfs.cpio.gz"`,
	} {
		if !strings.Contains(l1, want) {
			t.Errorf("L1 script lacks %q:\n%s", want, l1)
		}
	}
	// The virtio-fs guest boots first, then the 9p one.
	if i, j := strings.Index(l1, "$L2/vmlinux"), strings.Index(l1, "$L2G/bzImage"); i < 0 || j < i {
		t.Errorf("QEMU boots out of order:\n%s", l1)
	}
	if n := strings.Count(l1, "rm -f /tmp/fsb/qv.sock"); n != 2 {
		t.Errorf("%d virtiofsd starts, want one per QEMU boot:\n%s", n, l1)
	}
	for _, want := range []string{"chroot $R", "for sd in qemu-virtiofsd:/mnt/fsb/run;"} {
		if !strings.Contains(guest, want) {
			t.Errorf("guest script lacks %q:\n%s", want, guest)
		}
	}
	if strings.Contains(guest, "9p") {
		t.Errorf("virtio-fs guest script mentions 9p:\n%s", guest)
	}
	for _, want := range []string{"chroot $R", "mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,cache=mmap fsb9p $R/srv/fsb9p",
		"p9=" + report.QEMU9p + ":/srv/fsb9p/run", "for sd in $p9;", "RF-FS-SKIP " + report.QEMU9p} {
		if !strings.Contains(guest9p, want) {
			t.Errorf("9p guest script lacks %q:\n%s", want, guest9p)
		}
	}
	if strings.Contains(guest9p, report.QEMUVirtiofsd) {
		t.Errorf("9p guest script measures virtio-fs:\n%s", guest9p)
	}
	for _, sys := range []string{report.QEMUVirtiofsd, report.QEMU9p} {
		c := qemuCmdline(sys)
		if !strings.Contains(c, `rf.cmd="sh /shares/fsb/_tools/guest-`+sys+`.sh"`) || !strings.Contains(c, "rf.shares=fsb") {
			t.Errorf("cmdline %s", c)
		}
	}
}

func TestScriptChroot(t *testing.T) {
	p := testPlan(report.RFfuse, report.VirtioBlk)
	p.systemd = false
	l1 := p.script()
	shellCheck(t, "L1 script", l1)
	for _, want := range []string{
		`"$RFM" create fs --cores 1 --memory 512M --disk "$DEBIAN" --share /tmp/fsb/rf:fsb;`,
		"mount -o bind /shares/fsb $R/mnt/fsb", `exec chroot /mnt "$@"`,
	} {
		if !strings.Contains(l1, want) {
			t.Errorf("L1 script lacks %q:\n%s", want, l1)
		}
	}
	if strings.Contains(l1, "root=/dev/vda") || strings.Contains(l1, "systemctl") {
		t.Errorf("no systemd asked, but:\n%s", l1)
	}
}

func TestScriptsSomeSystems(t *testing.T) {
	p := testPlan(report.Host)
	l1 := p.script()
	shellCheck(t, "L1 script", l1)
	if strings.Contains(l1, "rfm") && strings.Contains(l1, "create fs") || strings.Contains(l1, "QEMU") {
		t.Errorf("host only, but:\n%s", l1)
	}
	p = testPlan(report.QEMUVirtiofsd)
	if l1 := p.script(); strings.Contains(l1, "$L2G") || len(p.qemuGuests()) != 1 {
		t.Errorf("no 9p asked, but:\n%s", l1)
	}
	p = testPlan(report.QEMU9p)
	if l1 := p.script(); strings.Contains(l1, "$L2/vmlinux") || !strings.Contains(l1, "$L2G/bzImage") || !strings.Contains(l1, `"$VIRTIOFSD"`) {
		t.Errorf("9p only (virtiofsd still carries the tools), but:\n%s", l1)
	}
}

func TestParseSystems(t *testing.T) {
	m, err := parseSystems("rffuse, host")
	if err != nil || len(m) != 2 || !m[report.RFfuse] || !m[report.Host] {
		t.Errorf("%v %v", m, err)
	}
	if _, err := parseSystems("rffuse,nfs"); err == nil {
		t.Error("nfs accepted")
	}
}
