package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"rainforest/bench/internal/rfcomresult"
	"rainforest/images"
	"rainforest/internal/shquote"
)

// plainServeFlags are the `rfm serve` flags that turn the VMM jail and the
// seccomp filter off: the plain configuration. The hardened one is the
// supervisor's default (no flags). This is the one place that names them.
const plainServeFlags = "--no-jail --no-seccomp"

// The two configurations measured.
const (
	cfgHardened = "hardened"
	cfgPlain    = "plain"
)

// The measured metrics, one sample kind each.
const (
	metricBoot = "boot"
	metricDisk = "disk"
	metricFICM = "ficm"
)

// FICM modes measured, in order.
var ficmModes = [...]string{"irq", "poll"}

// Nested L1 sizing: core 0 for the supervisor, two subOSes (FICM pair) on
// cores 1 and 2, their RAM on 2 MiB hugepages.
const (
	nestedCPUs      = 3
	nestedMemoryMiB = 3072
	nestedHugePages = 300
)

// infoPrefix starts the line the script prints first.
const infoPrefix = "RF-HARDENING-INFO"

// benchPlan is what one session runs.
type benchPlan struct {
	runs        int
	memoryMiB   int
	diskMiB     int
	diskSeconds int
	ficmN       int
	runTimeout  time.Duration
	// work is the session's directory where the script runs: the
	// supervisor's socket, state and run directory, the scratch disk.
	work string
}

// serveFlags are config's extra `rfm serve` flags.
func serveFlags(config string) string {
	if config == cfgPlain {
		return plainServeFlags
	}
	return ""
}

// order is the order of the configurations in repeat rep (from 1): it
// alternates, so that drift over the session hits both alike.
func order(rep int) [2]string {
	if rep%2 == 0 {
		return [2]string{cfgPlain, cfgHardened}
	}
	return [2]string{cfgHardened, cfgPlain}
}

// diskCommand is the disk subOS's guest command; the sleep keeps it (and
// its log) until the script has read its result and destroys it. Its end
// marker, built from $m like the FICM client's, is awaited so that the
// result line, slow on a serial console, is whole when it is read.
func (p *benchPlan) diskCommand() string {
	return fmt.Sprintf("m=RF-DISK; rfcom diskbench --dev /dev/vda --seconds %d --write --i-know-it-is-scratch; echo $m-DONE; sleep 600", p.diskSeconds)
}

// ficmServer and ficmClient are the FICM pair's guest commands. The
// client's end marker is built from $m so that the command line, which a
// kernel may echo, never holds it.
func (p *benchPlan) ficmServer() string { return rfcomresult.ServeCommand("", ficmModes[:]...) }
func (p *benchPlan) ficmClient(server string) string {
	return "m=RF-FICM; " + rfcomresult.ClientCommand("--to "+server, p.ficmN, ficmModes[:]...) + "; echo $m-DONE; sleep 600"
}

// appendArg is a kernel command line addition running cmd and powering
// the guest off after it.
func appendArg(cmd string) string { return shquote.Quote(`rf.poweroff=1 rf.cmd="` + cmd + `"`) }

// scriptHead defines the script's helpers. Each result goes out as
// `RF-HARDENING config=C rep=N metric=M | PAYLOAD`, PAYLOAD being the
// measurer's or guest's own result line, or `RF-FAILED why`.
const scriptHead = `set -u
grep -q ' /sys/fs/cgroup ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup
export RF_IMAGES="$L2"
rfm() { "$RFM" --socket "$WORK/rfm.sock" "$@"; }
tag() { tr -d '\r' | sed "s/^/` + linePrefix + ` config=$1 rep=$2 metric=$3 | /"; }
fail() { echo "` + linePrefix + ` config=$1 rep=$2 metric=$3 | ` + failedPayload + ` $4"; }
gone() { i=0; while rfm inspect "$1" -o json 2>/dev/null | grep -qE '"state": "(running|starting|stopping)"' && [ $i -lt 600 ]; do sleep 1; i=$((i+1)); done; }
# await NAME TEXT: copy NAME's log to $WORK/NAME.out until it holds TEXT,
# the subOS is gone or the run's bound passed.
await() { i=0; while [ $i -lt $AWAIT ]; do rfm logs "$1" >"$WORK/$1.new" 2>/dev/null || break; cat "$WORK/$1.new" >"$WORK/$1.out"; grep -q "$2" "$WORK/$1.out" && break; sleep 0.5; i=$((i+1)); done; }
# result C REP METRIC NAME TEXT: tag NAME's log lines holding TEXT, or fail.
result() { if grep -q "$5" "$WORK/$4.out" 2>/dev/null; then grep "$5" "$WORK/$4.out" | tag $1 $2 $3; else fail $1 $2 $3 "no '$5' line in the log of subOS $4"; fi; }
# serve FLAGS RUN: a supervisor with a fresh ledger.
serve() { rfm serve --housekeeping 0 --state-dir "$WORK/state-$2" --run-dir "$WORK/run" $1 >"$WORK/serve-$2.log" 2>&1 & spid=$!
	i=0; while ! rfm ps >/dev/null 2>&1 && [ $i -lt 300 ]; do sleep 0.2; i=$((i+1)); done; }
`

// script renders the session: the scratch disk, then for each repeat
// both configurations in alternating order, each a fresh supervisor
// measuring boot, disk and FICM in turn.
func (p *benchPlan) script() string {
	var b strings.Builder
	fmt.Fprintf(&b, "WORK=%s\nAWAIT=%d\n", shquote.Quote(p.work), int(p.runTimeout/(500*time.Millisecond)))
	b.WriteString(scriptHead)
	b.WriteString(`mkdir -p "$WORK"
echo "` + infoPrefix + ` kernel=$(uname -r) cpus=$(nproc) hugepages_free=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages)"
`)
	// Random data, written out: a scratch disk that is not sparse.
	fmt.Fprintf(&b, "dd if=/dev/urandom of=\"$WORK/scratch.img\" bs=1M count=%d 2>/dev/null\n", p.diskMiB)
	for rep := 1; rep <= p.runs; rep++ {
		for _, c := range order(rep) {
			p.writeRun(&b, c, rep)
		}
	}
	b.WriteString(`echo "== supervisor logs"; tail -n 20 "$WORK"/serve-*.log
true
`)
	return b.String()
}

// writeRun renders one configuration's run: its supervisor, then boot,
// disk and FICM.
func (p *benchPlan) writeRun(b *strings.Builder, c string, rep int) {
	id := fmt.Sprintf("%s %d", c, rep)
	suffix := fmt.Sprintf("%c%d", c[0], rep)
	mem := strconv.Itoa(p.memoryMiB) + "M"
	fmt.Fprintf(b, "echo '== %s'\nserve %s %s\n", id, shquote.Quote(serveFlags(c)), suffix)
	// Boot: the lifecycle measurer, one create->init cycle.
	fmt.Fprintf(b, `"$RFLIFECYCLE" -socket "$WORK/rfm.sock" -n 1 -name boot-%s- -kernel "$L2/vmlinux" -initrd "$L2/initramfs.cpio.gz" -cpus 1 -memory-mib %d -marker %s -timeout %s | tag %s %s`+"\n",
		suffix, p.memoryMiB, images.InitReachedMarker, p.runTimeout, id, metricBoot)
	// Disk: a subOS on the scratch disk running diskbench.
	d := "disk-" + suffix
	fmt.Fprintf(b, "rfm create %s --cores 1 --memory %s --disk \"$WORK/scratch.img\" --append %s >/dev/null && await %s RF-DISK-DONE\n",
		d, mem, appendArg(p.diskCommand()), d)
	fmt.Fprintf(b, "result %s %s %s 'RF-DISK '\nrfm destroy %s >/dev/null 2>&1; gone %s\n", id, metricDisk, d, d, d)
	// FICM: the pair, the server first.
	srv, cli := "fa-"+suffix, "fb-"+suffix
	fmt.Fprintf(b, "rfm create %s --cores 1 --memory %s --append %s >/dev/null\n", srv, mem, appendArg(p.ficmServer()))
	fmt.Fprintf(b, "rfm create %s --cores 2 --memory %s --append %s >/dev/null && await %s RF-FICM-DONE\n", cli, mem, appendArg(p.ficmClient(srv)), cli)
	fmt.Fprintf(b, "result %s %s %s 'bench: peer [0-9][0-9]* mode'\nrfm destroy %s %s >/dev/null 2>&1; gone %s; gone %s\n", id, metricFICM, cli, cli, srv, cli, srv)
	b.WriteString("kill $spid; wait $spid\n")
}
