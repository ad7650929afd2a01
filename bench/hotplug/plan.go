package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"rainforest/bench/internal/qemuguest"
	"rainforest/internal/kvmhost"
	"rainforest/internal/shquote"
	"rainforest/vmm"
)

// System names in the results.
const (
	sysRFM  = "rfm"
	sysQEMU = "qemu"
)

// Guest settings shared by both systems: one vCPU on core 1 (core 0 stays
// with the supervisor and the measurer), RAM on 2 MiB hugepages, the
// image's disk as /dev/vda (read-only), a copy of it hot-added as
// /dev/vdb.
const (
	guestCore      = 1
	guestMemoryMiB = 256
	hotDisk        = "/tmp/hot.img"
)

// Guest markers. The guest builds them from $m, so that the text of its
// command line (which a kernel may echo) never holds them.
const (
	markerReady   = "RF-HOT-READY"
	markerAdded   = "RF-HOT-ADDED"
	markerRemoved = "RF-HOT-REMOVED"
)

// guestCommand waits for /dev/vdb to appear and then to go, checking every
// 5 ms with the shell's read builtin (no process started per check),
// printing a marker each time; then it sleeps until the VMM is stopped.
const guestCommand = `m=RF-HOT; mkfifo /tmp/w; echo $m-READY; ` +
	`until [ -b /dev/vdb ]; do read -t 0.005 x <>/tmp/w; done; echo $m-ADDED; ` +
	`until [ ! -b /dev/vdb ]; do read -t 0.005 x <>/tmp/w; done; echo $m-REMOVED; sleep 600`

// guestAppend is what both systems add to the VMM's default kernel
// command line.
const guestAppend = `rf.poweroff=1 rf.cmd="` + guestCommand + `"`

// Nested L1 sizing: one guest at a time.
const (
	nestedCPUs      = 2
	nestedMemoryMiB = 3072
	nestedHugePages = 300
)

// infoPrefix starts the line the script prints first.
const infoPrefix = "RF-BENCH-INFO"

// benchPlan is what one session runs.
type benchPlan struct {
	runs       int
	qemuCPU    string
	settle     time.Duration
	opTimeout  time.Duration
	runTimeout time.Duration
	verbose    bool
	// commands are the measurer's command lines of run 1, by system
	// (set by script).
	commands map[string]string
}

// cmdline is the guests' whole kernel command line.
func cmdline() string { return vmm.DefaultCmdline(guestAppend) }

// measurer returns the measurer's command line for system's run i. The
// script's variables: $RFHOTBENCH, $RFM, $L2, $QEMU, $QEMU_DATA.
func (p *benchPlan) measurer(system string, i int) string {
	common := fmt.Sprintf(`"$RFHOTBENCH" -system %s -run %d -hot %s -settle %s -op-timeout %s -timeout %s -echo=%t -ready %s -added %s -removed %s`,
		system, i, hotDisk, p.settle, p.opTimeout, p.runTimeout, p.verbose, markerReady, markerAdded, markerRemoved)
	mem := strconv.Itoa(guestMemoryMiB) + "M"
	if system == sysRFM {
		return common + fmt.Sprintf(` -rfm "$RFM" -name hp%d -- --cores %d --memory %s --kernel "$L2/vmlinux" --initrd "$L2/initramfs.cpio.gz" --disk "$L2/disk.img,ro" --append %s`,
			i, guestCore, mem, shquote.Quote(guestAppend))
	}
	qmp := fmt.Sprintf("/tmp/qmp-%d.sock", i)
	return common + fmt.Sprintf(` -qmp %s -- taskset -c %d "$QEMU" -M pc,memory-backend=ram -enable-kvm -cpu %s -smp 1 -m %s`+
		` -object memory-backend-file,id=ram,size=%s,mem-path=/dev/hugepages,prealloc=on`+
		` -nodefaults -no-user-config -nographic -serial stdio -L "$QEMU_DATA" -name hp%d,debug-threads=on`+
		` -qmp unix:%s,server=on,wait=off`+
		` -drive file="$L2/disk.img",if=none,id=boot,format=raw,readonly=on -device virtio-blk-pci,drive=boot`+
		` -kernel "$L2/vmlinux" -initrd "$L2/initramfs.cpio.gz" -append %s`,
		qmp, guestCore, shquote.Quote(p.qemuCPU), mem, mem, i, qmp, shquote.Quote(cmdline()))
}

// script renders the session: the supervisor, then each run's rfm and
// QEMU measurements, the order alternating from run to run.
func (p *benchPlan) script() string {
	p.commands = map[string]string{sysRFM: p.measurer(sysRFM, 1), sysQEMU: p.measurer(sysQEMU, 1)}
	var b strings.Builder
	b.WriteString(`set -u
grep -q ' /sys/fs/cgroup ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "` + infoPrefix + ` kernel=$(uname -r) cpus=$(nproc) hugepages_free=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages)"
"$QEMU" --version | head -n 1
cp "$L2/disk.img" ` + hotDisk + `
"$RFM" serve --housekeeping 0 >>/tmp/serve.log 2>&1 & spid=$!
i=0; while ! "$RFM" ps >/dev/null 2>&1 && [ $i -lt 150 ]; do sleep 0.2; i=$((i+1)); done
`)
	for i := 1; i <= p.runs; i++ {
		order := []string{sysRFM, sysQEMU}
		if i%2 == 0 {
			order = []string{sysQEMU, sysRFM}
		}
		for _, sys := range order {
			b.WriteString(p.measurer(sys, i) + "\n")
		}
	}
	b.WriteString(`kill $spid; wait $spid
echo "== supervisor log"; tail -n 20 /tmp/serve.log
true
`)
	return b.String()
}

// files are what the script needs besides QEMU's bundle: the measurer,
// rfm, the image, and (nested) the BIOS of QEMU's pc machine, which the
// bundle (microvm firmware only) lacks.
func files(h *kvmhost.Host, qemu, rfhotbench, rfm, imageDir string) ([]kvmhost.File, error) {
	fs := []kvmhost.File{
		{Var: "RFHOTBENCH", Host: rfhotbench, L1: "/bin/rfhotbench"},
		{Var: "RFM", Host: rfm, L1: "/bin/rfm"},
		{Var: "L2", Host: imageDir, L1: "/l2", Names: []string{"vmlinux", "initramfs.cpio.gz", "disk.img"}},
	}
	if !h.Nested {
		return fs, nil
	}
	bios, err := qemuguest.BIOSFile(qemu)
	if err != nil {
		return nil, err
	}
	return append(fs, bios), nil
}
