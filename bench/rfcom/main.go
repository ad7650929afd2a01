// Command rfcom benchmarks RFcom between two Linux guests (make bench):
// 64-byte round trips (median, p99) and streaming throughput, in interrupt
// and polling mode, measured by the `rfcom bench` tool inside the guests,
// side by side in one session for
//
//   - two rfm subOSes on the supervisor's FICM group (our shared-memory
//     device, doorbells ioeventfd -> irqfd, or the VMM's INTx bridge for
//     uio_pci_generic), and
//   - two QEMU guests (microvm with PCIe, same kernel, initramfs, memory
//     and pinning) joined by QEMU's ivshmem-doorbell device and an
//     ivshmem server (bench/rfcom/cmd/rfivshmem-server), running the same
//     FICM stack over the ivshmem memory (`rfcom bench --ivshmem`).
//
// Both guests drive their device through uio_pci_generic, the only
// user-space PCI driver Debian's kernel offers, so the comparison is of the
// device and doorbell paths under the same program. uio_pci_generic only
// has INTx, and ivshmem-doorbell signals through MSI-X only, so the QEMU
// pair has no interrupt mode: the table says so and compares polling. Where this host's KVM
// cannot run Linux guests, everything runs inside one nested L1 guest
// (QEMU TCG with emulated AMD-V): compare the rows, not absolute times.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"rainforest/bench/internal/benchkit"
	"rainforest/bench/internal/rfcomresult"
	"rainforest/e2e"
	"rainforest/internal/kvmhost"
	"rainforest/internal/shquote"
	"rainforest/rfm/supervisor"
)

// options are the command-line settings.
type options struct {
	n          int
	imagesDir  string
	nestedMode string
	qemu       string
	qemuCPU    string
	jsonPath   string
	timeout    time.Duration
}

func main() {
	var o options
	o.imagesDir = os.Getenv("RF_IMAGES")
	if o.imagesDir == "" {
		o.imagesDir = "build/images"
	}
	flag.IntVar(&o.n, "n", 1000, "round trips (and streamed messages) per mode")
	flag.StringVar(&o.imagesDir, "images", o.imagesDir, "image directory (RF_IMAGES)")
	flag.StringVar(&o.nestedMode, "nested", "auto", "run inside the nested QEMU layer: auto, always or never")
	flag.StringVar(&o.qemu, "qemu", "qemu-system-x86_64", "QEMU binary for the ivshmem guests")
	flag.StringVar(&o.qemuCPU, "qemu-cpu", "host", "the -cpu model of the QEMU guests")
	flag.StringVar(&o.jsonPath, "json", "build/bench/rfcom.json", "write results as JSON here (empty: don't)")
	flag.DurationVar(&o.timeout, "timeout", 40*time.Minute, "bound on the whole session")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := run(ctx, o, os.Stderr)
	os.Exit(benchkit.Finish(os.Stdout, os.Stderr, "rfcom bench", rep, err, writeTable, o.jsonPath))
}

// Report is the JSON result.
type Report struct {
	// Completion marks a report whose session ended early: it holds the
	// rows measured before.
	benchkit.Completion
	Time    time.Time `json:"time"`
	Setting string    `json:"setting"`
	N       int       `json:"round_trips"`
	Rows    []Row     `json:"rows"`
}

// Row is one system in one mode.
type Row struct {
	System    string  `json:"system"` // "rfm" or "qemu"
	Mode      string  `json:"mode"`   // "irq" or "poll"
	RTTMedian float64 `json:"rtt_median_ns"`
	RTTP99    float64 `json:"rtt_p99_ns"`
	OneWay    float64 `json:"one_way_ns"`
	MsgsPerS  float64 `json:"msgs_per_s"`
	Error     string  `json:"error,omitempty"`
}

// Guest layout: L1 (or the host) keeps core 0; the two guests get cores 1
// and 2, one vCPU and 256 MiB each.
const (
	guestMemory = "256M"
	hostCPUs    = 3
)

// run builds the image, rfm and the ivshmem server, runs the session
// (nested or directly) and returns the report. A session that ends early
// gives the rows measured before, marked partial, with its error.
func run(ctx context.Context, o options, log io.Writer) (*Report, error) {
	root, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "rfcom-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	bins, err := benchkit.BuildStatic(ctx, work, "./bench/rfcom/cmd/rfivshmem-server")
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(root, "build", "bench", "rfcom.log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, err
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	fmt.Fprintf(log, "rfcom bench: building the image and rfm; guest consoles go to %s\n", logPath)
	h, err := e2e.NewHost(ctx, root, o.imagesDir, work, logFile)
	if err != nil {
		return nil, err
	}
	h.KVM.Nested, h.KVM.Why = kvmhost.Choose(o.nestedMode)
	h.CPUs = hostCPUs
	setting := "direct: this host's KVM"
	if h.KVM.Nested {
		setting = "nested: L1 = QEMU TCG with emulated AMD-V (" + h.KVM.Why + "); compare rows, not absolute times"
	}
	fmt.Fprintf(log, "rfcom bench: %s\n", setting)
	s := h.Script(script(o), o.timeout)
	s.Files = append(s.Files, kvmhost.File{Var: "IVSHMEM_SERVER", Host: bins[0], L1: "/bin/rfivshmem-server"})
	s.QEMU = o.qemu
	s.Rerun = nil // a benchmark keeps what its session measured instead
	res := &results{log: log}
	s.Lines = res.line
	_, err = h.KVM.Run(ctx, s)
	rep := &Report{Time: time.Now().UTC(), Setting: setting, N: o.n, Rows: res.rows()}
	if err != nil {
		rep.MarkPartial(err)
		return rep, err
	}
	if !res.any() {
		return rep, fmt.Errorf("no results; see %s", logPath)
	}
	return rep, nil
}

// script renders the session: the rfm pair, then the QEMU pair. The QEMU
// pair's FICM group has as many peers as the supervisor's, so that both
// poll the same number of queues.
func script(o options) string {
	n := strconv.Itoa(o.n)
	ficmPeers := strconv.Itoa(supervisor.DefaultFICMPeers)
	var b strings.Builder
	b.WriteString(`set -u
grep -q ' /sys/fs/cgroup ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup
export RF_IMAGES="$L2"
echo "RF-BENCH-INFO kernel=$(uname -r) cpus=$(nproc)"
gone() { i=0; while "$RFM" inspect "$1" -o json 2>/dev/null | grep -qE '"state": "(running|starting|stopping)"' && [ $i -lt 3600 ]; do sleep 1; i=$((i+1)); done; }
echo "== rfm"
"$RFM" serve --housekeeping 0 >>/tmp/serve.log 2>&1 & spid=$!
i=0; while ! "$RFM" ps >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done
`)
	fmt.Fprintf(&b, "\"$RFM\" create a --cores 1 --memory %s --append 'rf.poweroff=1 rf.cmd=\"%s\"' >/dev/null\n", guestMemory, rfcomresult.ServeCommand("", "irq", "poll"))
	fmt.Fprintf(&b, "\"$RFM\" create b --cores 2 --memory %s --append 'rf.poweroff=1 rf.cmd=\"%s\"' >/dev/null\n", guestMemory, rfcomresult.ClientCommand("--to a", o.n, "irq", "poll"))
	b.WriteString(`gone b; gone a
grep '^bench:' /run/rainforest/b.log | sed 's/^/RF-RESULT rfm /'
grep '^rfcom:' /run/rainforest/a.log /run/rainforest/b.log
kill $spid
echo "== qemu"
"$IVSHMEM_SERVER" -socket /tmp/ivsh.sock -size 4M >/tmp/ivsh.log 2>&1 & ipid=$!
i=0; while [ ! -S /tmp/ivsh.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
q() {
	core=$1; shift
	taskset -c $core "$QEMU" -M microvm,pcie=on,acpi=on,memory-backend=ram -enable-kvm -cpu "$QCPU" -smp 1 -m ` + guestMemory + ` \
		-object memory-backend-file,id=ram,size=` + guestMemory + `,mem-path=/dev/hugepages,prealloc=on \
		-nodefaults -no-user-config -nographic -serial stdio -L "$QEMU_DATA" \
		-chardev socket,path=/tmp/ivsh.sock,id=ivsh -device ivshmem-doorbell,chardev=ivsh,vectors=1 \
		-kernel "$L2/vmlinux" -initrd "$L2/initramfs.cpio.gz" \
		-append "console=ttyS0 reboot=acpi panic=-1 quiet rf.poweroff=1 rf.cmd=\"$*\""
}
`)
	fmt.Fprintf(&b, "QCPU=%s\n", shquote.Quote(o.qemuCPU))
	// ivshmem-doorbell signals through MSI-X only (no INTx pin), which
	// uio_pci_generic cannot use: the irq attempt records the tool's
	// refusal, and only poll mode is served.
	fmt.Fprintf(&b, "q 1 '%s' >/tmp/qa.log 2>&1 & qa=$!\n", "rfcom bench --serve --ivshmem --peers "+ficmPeers+" --mode poll --timeout 900s")
	b.WriteString(`# a connects to the ivshmem server first: it is peer 0
i=0; while ! grep -q RF-INIT-REACHED /tmp/qa.log && [ $i -lt 600 ]; do sleep 0.5; i=$((i+1)); done
`)
	fmt.Fprintf(&b, "q 2 '%s' >/tmp/qb.log 2>&1\n", "rfcom bench --ivshmem --peers "+ficmPeers+" --peer 0 --n 1 --mode irq; "+rfcomresult.Retry("rfcom bench --ivshmem --peers "+ficmPeers+" --peer 0 --n "+n+" --mode poll"))
	b.WriteString(`wait $qa
kill $ipid
grep '^bench:' /tmp/qb.log | sed 's/^/RF-RESULT qemu /'
grep '^rfcom: bench:' /tmp/qb.log | head -n 1 | sed 's/^/RF-FAILED qemu irq /'
grep -E '^(rfcom|qemu-system)' /tmp/qa.log /tmp/qb.log
tail -n 5 /tmp/ivsh.log
true
`)
	return b.String()
}

// Result lines of `rfcom bench`, prefixed by the script with the system.
var (
	resultLine = regexp.MustCompile(`^RF-RESULT (\w+) (bench: .*)$`)
	failLine   = regexp.MustCompile(`^RF-FAILED (\w+) (\w+) rfcom: (.*)$`)
)

// results gathers the rows from the session's lines as they arrive and
// shows each result on the log.
type results struct {
	log io.Writer
	mu  sync.Mutex
	got []*Row // in order of first appearance
}

// find returns the row of sys and mode, adding it; r.mu is held.
func (r *results) find(sys, mode string) *Row {
	for _, row := range r.got {
		if row.System == sys && row.Mode == mode {
			return row
		}
	}
	row := &Row{System: sys, Mode: mode}
	r.got = append(r.got, row)
	return row
}

// line takes one line of the session's output.
func (r *results) line(line string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if m := resultLine.FindStringSubmatch(line); m != nil {
		res, ok := rfcomresult.Parse(m[2])
		if !ok {
			return
		}
		row := r.find(m[1], res.Mode)
		if res.RTT {
			row.RTTMedian, row.RTTP99, row.OneWay = res.RTTMedian, res.RTTP99, res.OneWay
			fmt.Fprintf(r.log, "rfcom bench: %s %s: 64-byte round trip median %s, p99 %s\n", m[1], res.Mode, dur(row.RTTMedian), dur(row.RTTP99))
		} else {
			row.MsgsPerS = res.MsgsPerS
			fmt.Fprintf(r.log, "rfcom bench: %s %s: %.0f msgs/s\n", m[1], res.Mode, row.MsgsPerS)
		}
	} else if m := failLine.FindStringSubmatch(line); m != nil {
		row := r.find(m[1], m[2])
		row.Error = strings.TrimSpace(m[3])
		fmt.Fprintf(r.log, "rfcom bench: %s %s failed: %s\n", m[1], m[2], row.Error)
	}
}

// any reports whether a result arrived.
func (r *results) any() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got) > 0
}

// rows returns a row per system and mode, in table order; one that got
// no result says so.
func (r *results) rows() []Row {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Row
	for _, sys := range []string{"rfm", "qemu"} {
		for _, mode := range []string{"irq", "poll"} {
			row := *r.find(sys, mode)
			if row.RTTMedian == 0 && row.Error == "" {
				row.Error = "no result (see the log)"
			}
			out = append(out, row)
		}
	}
	return out
}

func writeTable(w io.Writer, rep *Report) error {
	fmt.Fprintf(w, "RFcom between two Linux guests, 64-byte messages, %d round trips per mode; %s\n\n", rep.N, rep.Setting)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "system\tmode\tRTT med\tRTT p99\tone-way~\tmsgs/s\trfm/qemu RTT\t")
	label := map[string]string{"rfm": "rfm subOSes (FICM device)", "qemu": "QEMU + ivshmem-doorbell"}
	var notes []string
	for _, r := range rep.Rows {
		if r.Error != "" {
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\t\t\n", label[r.System], r.Mode)
			notes = append(notes, fmt.Sprintf("%s, %s: %s", label[r.System], r.Mode, r.Error))
			continue
		}
		ratio := ""
		if r.System == "rfm" {
			for _, q := range rep.Rows {
				if q.System == "qemu" && q.Mode == r.Mode && q.RTTMedian > 0 {
					ratio = fmt.Sprintf("%.2fx", r.RTTMedian/q.RTTMedian)
				}
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.0f\t%s\t\n", label[r.System], r.Mode, dur(r.RTTMedian), dur(r.RTTP99), dur(r.OneWay), r.MsgsPerS, ratio)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nBoth guests use uio_pci_generic (INTx): irq mode sleeps in the uio device until the doorbell, poll mode spins on the rings.")
	for _, n := range notes {
		fmt.Fprintln(w, "  "+n)
	}
	return nil
}

// dur formats a duration with three significant digits.
func dur(ns float64) string {
	d, r := time.Duration(ns), time.Duration(1)
	for d/r >= 1000 {
		r *= 10
	}
	return d.Round(r).String()
}
