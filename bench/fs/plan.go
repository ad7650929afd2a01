package main

import (
	"fmt"
	"strconv"
	"strings"

	"rainforest/bench/fs/fio"
	"rainforest/bench/fs/report"
	"rainforest/internal/shquote"
	"rainforest/rfm/share"
	"rainforest/vmm"
)

// Lines the scripts print besides result lines.
const (
	infoPrefix = "RF-FS-INFO"
	// skipPrefix starts `RF-FS-SKIP SYSTEM REASON`: the system was not
	// measured.
	skipPrefix = "RF-FS-SKIP"
)

// Share tags and guest directories.
const (
	shareTag = "fsb"
	p9Tag    = "fsb9p"
	// guestRoot is where the QEMU guest's initramfs has the Debian disk.
	guestRoot = "/mnt"
)

// Guest sizing: one core, guestMemoryMiB of RAM (the subOS's on 2 MiB
// hugepages, QEMU's in a shared memfd as vhost-user needs).
const (
	guestMemoryMiB = 512
	guestCore      = 1
)

// plan is what the session measures.
type plan struct {
	runs     int
	settings fio.Settings
	// systems are those measured (report.Systems order).
	systems map[string]bool
	// virtiofsd is the virtio-fs back end (QEMU's row runs it as rfm does).
	virtiofsd share.Binary
	// fioTimeout bounds one fio run, seconds.
	fioTimeout int
	// systemd boots the subOS's Debian disk (root=/dev/vda, systemd);
	// otherwise the subOS stays in its initramfs and runs fio from the
	// disk in a chroot, as the QEMU guest does.
	systemd bool
}

// qemuGuest is one boot of the QEMU guest, measuring one system.
type qemuGuest struct {
	system string
	// kernel and initrd are the guest's, as the L1 script names them.
	kernel, initrd string
}

// guestScriptName is the name of the guest script of system (in the
// share's _tools directory).
func guestScriptName(system string) string { return "guest-" + system + ".sh" }

// qemuGuests are the QEMU boots, in order: the virtio-fs row with the
// image's (cloud) kernel; the 9p row with Debian's generic kernel of the
// same version ($L2G), since the cloud flavour has no 9p.
func (p *plan) qemuGuests() []qemuGuest {
	var out []qemuGuest
	if p.systems[report.QEMUVirtiofsd] {
		out = append(out, qemuGuest{report.QEMUVirtiofsd, "$L2/vmlinux", "$L2/initramfs.cpio.gz"})
	}
	if p.systems[report.QEMU9p] {
		out = append(out, qemuGuest{report.QEMU9p, "$L2G/bzImage", "$L2G/initramfs.cpio.gz"})
	}
	return out
}

// fioArgs is one workload's fio command line in dir.
func fioArgs(w fio.Workload, dir string) []string {
	return append(append([]string{"FIOBIN", "--directory=" + dir + "/" + w.Subdir}, w.Args...), "--output-format=json")
}

// benchFunction renders the shell function `fsbench SYSTEM DIR RUN`:
// each workload in DIR through the function x (which runs a command
// where the file system is: here, in the subOS, in the guest's chroot)
// with fio $FIOBIN,
// fio's JSON into $OUTJSON, then $FSRESULT's result line. DIR is
// emptied before and after.
func (p *plan) benchFunction() string {
	var b strings.Builder
	b.WriteString("fsbench() {\n")
	b.WriteString("\tx rm -rf \"$2/data\" \"$2/meta\"; x mkdir -p \"$2/data\" \"$2/meta\"\n")
	for _, w := range fio.Workloads(p.settings) {
		args := fioArgs(w, "DIR")
		cmd := strings.Replace(shquote.Join(args), shquote.Quote("--directory=DIR/"+w.Subdir), "\"--directory=$2/"+w.Subdir+"\"", 1)
		cmd = strings.Replace(cmd, "FIOBIN", "\"$FIOBIN\"", 1)
		fmt.Fprintf(&b, "\tx timeout %d %s >\"$OUTJSON\" 2>&1; \"$FSRESULT\" -system \"$1\" -workload %s -run \"$3\" -status $? <\"$OUTJSON\"\n",
			p.fioTimeout, cmd, w.Name)
	}
	b.WriteString("\tx rm -rf \"$2/data\" \"$2/meta\"\n}\n")
	return b.String()
}

// runs renders the loop measuring systems (system:dir pairs) in turn, run
// after run.
func (p *plan) runsLoop(pairs ...string) string {
	return fmt.Sprintf("for r in $(seq 1 %d); do for sd in %s; do fsbench \"${sd%%%%:*}\" \"${sd#*:}\" $r; done; done\n",
		p.runs, strings.Join(pairs, " "))
}

// qemuCmdline is the QEMU guest's kernel command line: rfm's defaults,
// the virtio-fs share mounted by the initramfs (at /shares/fsb: the
// Debian disk is on /mnt), and system's guest script run from it, then
// off.
func qemuCmdline(system string) string {
	return vmm.DefaultCmdline("rf.agent=0", "rf.poweroff=1", "rf.shares="+shareTag,
		`rf.cmd="sh /shares/`+shareTag+`/_tools/`+guestScriptName(system)+`"`)
}

// qemuArgv is QEMU's command line in L1 for guest g ($-variables are the
// script's). Both guests have both devices: the virtio-fs share carries
// the guest script and fsresult to the 9p guest too.
func (p *plan) qemuArgv(g qemuGuest) string {
	mem := strconv.Itoa(guestMemoryMiB) + "M"
	argv := []string{"-M", "pc,memory-backend=mem", "-enable-kvm", "-cpu", "host", "-smp", "1", "-m", mem,
		"-object", "memory-backend-memfd,id=mem,size=" + mem + ",share=on",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio", "-append", qemuCmdline(g.system),
		"-chardev", "socket,id=vfs,path=/tmp/fsb/qv.sock", "-device", "vhost-user-fs-pci,chardev=vfs,tag=" + shareTag,
		"-fsdev", "local,id=p9,path=/tmp/fsb/q9,security_model=passthrough", "-device", "virtio-9p-pci,fsdev=p9,mount_tag=" + p9Tag}
	return `taskset -c ` + strconv.Itoa(guestCore) + ` "$QEMU" -L "$QEMU_DATA" -kernel "` + g.kernel + `" -initrd "` + g.initrd + `" ` +
		`-drive "file=$DEBIANQ,format=raw,if=virtio" ` + shquote.Join(argv)
}

// virtiofsdArgv is the QEMU row's virtiofsd: what rfm runs for a share,
// listening on a socket.
func (p *plan) virtiofsdArgv() string {
	return `"$VIRTIOFSD" ` + shquote.Join(p.virtiofsd.SocketArgs("/tmp/fsb/qv.sock", "/tmp/fsb/qv", false, share.SandboxChroot))
}

// chrootSetup renders the commands that make the Debian disk, mounted
// read-only at $R by the initramfs (no root=), a chroot for fio: read-write,
// with /proc, /sys, /dev and /tmp, and the share (at /shares/fsb) bound
// at /mnt/fsb in it.
func chrootSetup() string {
	return "mount -o remount,rw $R && mount -t proc proc $R/proc && mount -t sysfs sysfs $R/sys && " +
		"mount -t devtmpfs dev $R/dev && mount -t tmpfs tmp $R/tmp && mkdir -p $R/mnt/" + shareTag +
		" && mount -o bind /shares/" + shareTag + " $R/mnt/" + shareTag
}

// p9Mount is the guest's 9p mount options.
const p9Mount = "trans=virtio,version=9p2000.L,msize=524288,cache=mmap"

// guestScript is run by the initramfs of the QEMU guest measuring system
// (rf.cmd): fio from the Debian disk in a chroot, on the virtio-fs share
// (qemu-virtiofsd) or on 9p (qemu-9p: its initramfs has loaded the 9p
// modules of its kernel).
func (p *plan) guestScript(system string) string {
	var b strings.Builder
	b.WriteString("set -u\nexport PATH=/usr/sbin:/usr/bin:/sbin:/bin\n")
	fmt.Fprintf(&b, "T=/shares/%s/_tools\nFSRESULT=$T/fsresult\nOUTJSON=/tmp/fio.json\nR=%s\n", shareTag, guestRoot)
	b.WriteString(chrootSetup() + " || echo \"" + skipPrefix + " " + system + " the Debian disk could not be set up\"\n")
	b.WriteString("mkdir -p /tmp\n")
	b.WriteString("x() { chroot $R \"$@\"; }\nFIOBIN=fio\n")
	b.WriteString(p.benchFunction())
	pair := system + ":/mnt/fsb/run"
	if system == report.QEMU9p {
		b.WriteString("mkdir -p $R/srv/fsb9p\n")
		b.WriteString("if mount -t 9p -o " + p9Mount + " " + p9Tag + " $R/srv/fsb9p 2>/tmp/9p.err; then p9=" + report.QEMU9p +
			":/srv/fsb9p/run; else p9=; echo \"" + skipPrefix + " " + report.QEMU9p +
			" the guest cannot mount 9p (kernel $(uname -r)): $(tr '\\n' ' ' </tmp/9p.err | cut -c1-300)\"; fi\n")
		pair = "$p9"
	}
	b.WriteString("echo \"" + infoPrefix + " qemu guest (" + system + ") kernel=$(uname -r) cpus=$(nproc) fio=$(x fio --version)\"\n")
	b.WriteString(p.runsLoop(pair))
	b.WriteString("sync\n")
	return b.String()
}

// script renders the L1 script. Its variables: $RFM, $FSRESULT, $FIO,
// $VIRTIOFSD, $L2 (kernel, initramfs), $L2G (the generic kernel's bzImage
// and initramfs, for qemu-9p), $DEBIAN and $DEBIANQ (the Debian disk, one
// for the subOS, one for the QEMU guests), $QEMU, $QEMU_DATA, $GUESTS (a
// directory with each QEMU system's guestScript, named guestScriptName).
func (p *plan) script() string {
	var b strings.Builder
	b.WriteString("set -u\ngrep -q ' /sys/fs/cgroup ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup\n")
	b.WriteString("export RF_IMAGES=\"$L2\"\nOUTJSON=/tmp/fsb/fio.json\nmkdir -p /tmp/fsb/host /tmp/fsb/rf /tmp/fsb/qv/_tools /tmp/fsb/q9\n")
	b.WriteString("echo \"" + infoPrefix + " L1 kernel=$(uname -r) cpus=$(nproc) fio=$(\"$FIO\" --version) root=$(grep -m1 ' / ' /proc/mounts | cut -d' ' -f3)\"\n")
	b.WriteString(p.benchFunction())
	if p.systems[report.Host] {
		b.WriteString("echo '== host'\nx() { \"$@\"; }\nFIOBIN=$FIO\n" + p.runsLoop(report.Host+":/tmp/fsb/host"))
	}
	var pairs []string
	if p.systems[report.RFfuse] {
		pairs = append(pairs, report.RFfuse+":/mnt/"+shareTag+"/run")
	}
	if p.systems[report.VirtioBlk] {
		pairs = append(pairs, report.VirtioBlk+":/root/fsb")
	}
	if len(pairs) > 0 {
		b.WriteString("echo '== rfm'\n")
		b.WriteString("\"$RFM\" serve --housekeeping 0 >/tmp/fsb/serve.log 2>&1 & serve=$!\n")
		b.WriteString("i=0; while ! \"$RFM\" ps >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done\n")
		root := " --append root=/dev/vda"
		if !p.systemd {
			root = ""
		}
		fmt.Fprintf(&b, "t0=$(date +%%s)\nif \"$RFM\" create fs --cores 1 --memory %dM --disk \"$DEBIAN\"%s --share /tmp/fsb/rf:%s; then\n", guestMemoryMiB, root, shareTag)
		b.WriteString("\ti=0; while ! \"$RFM\" inspect fs -o json | grep -q '\"state\": \"healthy\"' && [ $i -lt 900 ]; do sleep 1; i=$((i+1)); done\n")
		b.WriteString("\techo \"" + infoPrefix + " subOS agent healthy after $(( $(date +%s) - t0 )) s: $(\"$RFM\" ps | tail -n 1 | tr -s ' ')\"\n")
		if p.systemd {
			b.WriteString("\ttimeout 600 \"$RFM\" exec fs -- systemctl is-system-running --wait >/dev/null 2>&1\n")
			b.WriteString("\techo \"" + infoPrefix + " subOS systemd settled after $(( $(date +%s) - t0 )) s\"\n")
			b.WriteString("\tx() { \"$RFM\" exec fs -- \"$@\"; }\n\tFIOBIN=fio\n")
			// The Debian system does not mount the share itself.
			b.WriteString("\tx sh -c 'mkdir -p /mnt/" + shareTag + " && mount -t virtiofs " + shareTag + " /mnt/" + shareTag + "'\n")
		} else {
			b.WriteString("\t\"$RFM\" exec fs -- sh -c " + shquote.Quote("R="+guestRoot+"; "+chrootSetup()) + "\n")
			b.WriteString("\tx() { \"$RFM\" exec fs -- sh -c 'exec chroot " + guestRoot + " \"$@\"' x \"$@\"; }\n\tFIOBIN=fio\n")
		}
		b.WriteString("\techo \"" + infoPrefix + " subOS kernel=$(x uname -r) cpus=$(x nproc) fio=$(x fio --version) share=$(x grep virtiofs /proc/mounts | cut -d' ' -f1-3)\"\n")
		b.WriteString("\tfor p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = virtiofsd ] && vcpus=$(sed -n 's/^Cpus_allowed_list:\\s*//p' $p/status); done\n")
		b.WriteString("\techo \"" + infoPrefix + " rfm virtiofsd cpus=${vcpus:-?}\"\n")
		b.WriteString("\t" + p.runsLoop(pairs...))
		b.WriteString("\t\"$RFM\" destroy fs\nelse\n")
		for _, pr := range pairs {
			sys, _, _ := strings.Cut(pr, ":")
			b.WriteString("\techo \"" + skipPrefix + " " + sys + " rfm create failed: $(tail -n 5 /tmp/fsb/serve.log | tr '\\n' ' ' | cut -c1-400)\"\n")
		}
		b.WriteString("fi\nkill $serve; wait $serve\n")
	}
	if guests := p.qemuGuests(); len(guests) > 0 {
		b.WriteString("echo '== qemu'\n")
		b.WriteString("cp \"$FSRESULT\" /tmp/fsb/qv/_tools/fsresult && cp \"$GUESTS\"/guest-*.sh /tmp/fsb/qv/_tools/\n")
		for _, g := range guests {
			b.WriteString("rm -f /tmp/fsb/qv.sock\n")
			b.WriteString("taskset -c \"${vcpus:-" + strconv.Itoa(guestCore) + "}\" " + p.virtiofsdArgv() + " >/tmp/fsb/virtiofsd.log 2>&1 & vfsd=$!\n")
			b.WriteString("i=0; while [ ! -S /tmp/fsb/qv.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n")
			fmt.Fprintf(&b, "{ timeout %d %s </dev/null; echo \"%s qemu (%s) exit $?\"; } 2>&1 | tr -d '\\r'\n",
				p.qemuTimeout(), p.qemuArgv(g), infoPrefix, g.system)
			b.WriteString("kill $vfsd 2>/dev/null; wait $vfsd; tail -n 5 /tmp/fsb/virtiofsd.log\n")
		}
	}
	return b.String()
}

// qemuTimeout bounds the QEMU guest's session, seconds.
func (p *plan) qemuTimeout() int {
	return 120 + p.runs*len(fio.Workloads(p.settings))*p.fioTimeout*2
}
