package e2e

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// elasticScript resizes running subOSes in one session: a (core 1, room
// for 3) grows to 2 cores, lends one to b (core 3) and gets it back, and
// shrinks to 1; its memory grows by 512 MiB (virtio-mem) and shrinks back. Then b, latency-critical, takes a core from a (batch)
// when its guest pushes a high p99, and gives it back when it is low. After each step it prints what the guest, the host
// (vCPU thread affinities, cgroup cpuset) and the ledger say, and a
// process started in a's guest before the first step must still be
// running at the end. Refused resizes must change nothing.
const elasticScript = shellLib + `
rfm_serve
# state NAME prints what the guest, the host and the ledger say of NAME.
state() {
	local pid t
	echo "RF-NPROC-$1 $("$RFM" exec "$1" -- nproc)"
	echo "RF-ONLINE-$1 $("$RFM" exec "$1" -- cat /sys/devices/system/cpu/online)"
	echo "RF-CPUSET-$1 $(cat /sys/fs/cgroup/rainforest/$1/cpuset.cpus 2>/dev/null || cat /sys/fs/cgroup/cpuset/rainforest/$1/cpuset.cpus)"
	"$RFM" inspect "$1" -o json > /tmp/inspect.json
	echo "RF-LEDGER-$1 $(tr -d ' \n' < /tmp/inspect.json | sed -n 's/.*"allocation":{"name":"[a-z0-9-]*","cores":\[\([0-9,]*\)\].*/\1/p')"
	pid=$(tr -d ' \n' < /tmp/inspect.json | sed -n 's/.*"pid":\([0-9]*\),.*/\1/p')
	for t in /proc/$pid/task/*; do
		case "$(cat $t/comm)" in vcpu*) echo "RF-THREAD-$1 $(cat $t/comm) $(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' $t/status)";; esac
	done
}
# mstate NAME prints what the guest, the ledger and the host's hugepage
# pool say of NAME's memory.
mstate() {
	echo "RF-MEMTOTAL-$1 $("$RFM" exec "$1" -- sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\) kB/\1/p' /proc/meminfo)"
	echo "RF-LEDGERMEM-$1 $("$RFM" inspect "$1" -o json | tr -d ' \n' | sed -n 's/.*"allocation":{"name":"[a-z0-9-]*","cores":\[[0-9,]*\],"node":[0-9]*,"memory":\([0-9]*\).*/\1/p')"
	echo "RF-HUGEFREE $(cat /sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages)"
}
echo "== create"
"$RFM" create a --cores 1 --max-cpus 3 --memory 256M --max-memory 768M; echo "RF-STATUS-A $?"
"$RFM" create b --cores 3 --memory 256M --max-memory 512M --class latency-critical; echo "RF-STATUS-B $?"
healthy a; healthy b
"$RFM" ps
"$RFM" exec a -- sh -c 'setsid sh -c "while :; do date +%s > /tmp/alive; sleep 1; done" </dev/null >/dev/null 2>&1 &'; echo "RF-WORKER $?"
state a
echo "== grow"
"$RFM" resize a --cpus 2; echo "RF-STATUS $?"
state a
echo "== lend"
"$RFM" lend a b --cpus 1; echo "RF-STATUS $?"
"$RFM" loans -o json
"$RFM" ps
state a
state b
echo "== return"
"$RFM" return a b; echo "RF-STATUS $?"
"$RFM" loans -o json
state a
state b
echo "== shrink"
"$RFM" resize a --cpus 1; echo "RF-STATUS $?"
state a
echo "== memory-before"
mstate a
echo "== memory-grow"
"$RFM" resize a --memory 768M; echo "RF-STATUS $?"
mstate a
"$RFM" exec a -- cat /sys/devices/system/memory/auto_online_blocks
"$RFM" exec a -- dd if=/dev/zero of=/dev/null bs=1M count=1 2>&1 | tail -n 1
echo "== memory-lend"
"$RFM" lend a b --memory 256M; echo "RF-STATUS $?"
"$RFM" ps
mstate a
mstate b
echo "== memory-return"
"$RFM" return a b; echo "RF-STATUS $?"
"$RFM" loans -o json
mstate a
mstate b
echo "== memory-shrink"
"$RFM" resize a --memory 256M; echo "RF-STATUS $?"
mstate a
echo "== memory-refused"
"$RFM" resize a --memory 1G 2>&1; echo "RF-STATUS $?"
"$RFM" resize a --memory 100M 2>&1; echo "RF-STATUS $?"
"$RFM" create c --cores 2 --memory 64M >/dev/null 2>&1 && "$RFM" resize c --memory 512M 2>&1; echo "RF-STATUS $?"
"$RFM" destroy c >/dev/null 2>&1
mstate a
echo "== refused"
"$RFM" resize a --cpus 4 2>&1; echo "RF-STATUS $?"
"$RFM" resize a --cpus 0 2>&1; echo "RF-STATUS $?"
"$RFM" lend b a --cpus 1 2>&1; echo "RF-STATUS $?"
state a
echo "== autoscale"
# b is latency-critical: its application pushes a p99 above the upper
# threshold, and a core comes from a (batch); then below the lower one,
# and it goes back.
"$RFM" resize a --cpus 2 >/dev/null; echo "RF-STATUS $?"
"$RFM" autoscale b --lower 5ms --upper 20ms; echo "RF-STATUS $?"
# push NAME VALUE SECONDS: the guest's application reports its p99 once a second.
push() { "$RFM" exec "$1" -- sh -c "i=0; while [ \$i -lt $3 ]; do rf-agent latency $2; i=\$((i+1)); sleep 1; done"; }
push b 50ms 40 & pusher=$!
i=0; while ! "$RFM" events | grep -q ' autoscale  *b .*upper' && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done
"$RFM" events | grep ' autoscale'
state b
wait $pusher
push b 1ms 40 & pusher=$!
i=0; while ! "$RFM" events | grep -q ' autoscale  *b .*lower' && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done
"$RFM" events | grep ' autoscale'
wait $pusher
echo "== autoscale-back"
state b
"$RFM" autoscale b --off >/dev/null; echo "RF-STATUS $?"
echo "== alive"
t1=$("$RFM" exec a -- cat /tmp/alive); sleep 3; t2=$("$RFM" exec a -- cat /tmp/alive)
echo "RF-ALIVE $t1 $t2"
echo "== events"
"$RFM" events | grep -E ' (resize|lend|return)' | tail -n 10
echo "== destroy"
"$RFM" destroy a b; echo "RF-STATUS $?"
kill $(cat /tmp/serve.pid); wait $(cat /tmp/serve.pid) 2>/dev/null
echo "== serve-log"
tail -n 30 /tmp/serve.log
`

// cpuState is what elasticScript's state printed for one subOS.
type cpuState struct {
	nproc   int
	online  string // the guest's /sys/devices/system/cpu/online
	cpuset  string
	ledger  string   // the allocation's cores, comma-separated
	threads []string // "vcpuN CORELIST"
}

func parseCPUState(sec, name string) cpuState {
	var st cpuState
	st.nproc, _ = strconv.Atoi(Field(sec, "RF-NPROC-"+name))
	st.online = Field(sec, "RF-ONLINE-"+name)
	st.cpuset = Field(sec, "RF-CPUSET-"+name)
	st.ledger = Field(sec, "RF-LEDGER-"+name)
	for _, l := range strings.Split(sec, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "RF-THREAD-"+name+" "); ok {
			st.threads = append(st.threads, v)
		}
	}
	slices.Sort(st.threads)
	return st
}

// checkCPUState checks that the guest has n CPUs online, that the cgroup
// and the ledger hold cores (a cpulist and its comma form), and that the
// first n vCPU threads run on those cores, one each.
func checkCPUState(t *testing.T, step, name, sec string, n int, cpulist, ledger string) {
	t.Helper()
	st := parseCPUState(sec, name)
	if st.nproc != n {
		t.Errorf("%s: %s's guest has nproc %d (online %q), want %d", step, name, st.nproc, st.online, n)
	}
	if st.cpuset != cpulist {
		t.Errorf("%s: %s's cgroup cpuset is %q, want %q", step, name, st.cpuset, cpulist)
	}
	if st.ledger != ledger {
		t.Errorf("%s: the ledger gives %s cores %q, want %q", step, name, st.ledger, ledger)
	}
	cores := strings.Split(ledger, ",")
	used := map[string]bool{}
	for i := range n {
		var core string
		for _, th := range st.threads {
			if c, ok := strings.CutPrefix(th, "vcpu"+strconv.Itoa(i)+" "); ok {
				core = c
			}
		}
		if !slices.Contains(cores, core) || used[core] {
			t.Errorf("%s: %s's vcpu%d thread runs on %q; want one of its cores %s, one vCPU each (threads %v)", step, name, i, core, ledger, st.threads)
		}
		used[core] = true
	}
}

// memState is what elasticScript's mstate printed for a.
type memState struct{ memTotalKiB, ledger, hugeFree int }

func parseMemState(sec, name string) memState {
	var st memState
	st.memTotalKiB, _ = strconv.Atoi(Field(sec, "RF-MEMTOTAL-"+name))
	st.ledger, _ = strconv.Atoi(Field(sec, "RF-LEDGERMEM-"+name))
	st.hugeFree, _ = strconv.Atoi(Field(sec, "RF-HUGEFREE"))
	return st
}

// checkMemory checks a's memory resize: the guest's MemTotal grows by the
// 512 MiB plugged and shrinks back, the ledger follows, the host's
// hugepage pool gives the pages and gets them back, and sizes that are
// refused change nothing.
func checkMemory(t *testing.T, secs map[string]string) {
	t.Helper()
	const mib = 1 << 20
	before, grown, shrunk, refused := parseMemState(secs["memory-before"], "a"), parseMemState(secs["memory-grow"], "a"),
		parseMemState(secs["memory-shrink"], "a"), parseMemState(secs["memory-refused"], "a")
	if Field(secs["memory-grow"], "RF-STATUS") != "0" || Field(secs["memory-shrink"], "RF-STATUS") != "0" {
		t.Errorf("rfm resize --memory failed:\n%s\n%s", secs["memory-grow"], secs["memory-shrink"])
	}
	if before.memTotalKiB == 0 || before.ledger != 256*mib {
		t.Errorf("before the resize: MemTotal %d KiB, the ledger %d bytes; want some, and 256 MiB:\n%s", before.memTotalKiB, before.ledger, secs["memory-before"])
	}
	if d := grown.memTotalKiB - before.memTotalKiB; d < 500*1024 || d > 512*1024 {
		t.Errorf("plugging 512 MiB grew the guest's MemTotal by %d KiB (%d -> %d)", d, before.memTotalKiB, grown.memTotalKiB)
	}
	if grown.ledger != 768*mib || before.hugeFree-grown.hugeFree != 256 {
		t.Errorf("grown: the ledger gives a %d bytes, the pool's free pages went %d -> %d; want 768 MiB and 256 pages taken", grown.ledger, before.hugeFree, grown.hugeFree)
	}
	// A loan of 256 MiB from a to b, and its return.
	lend, ret := secs["memory-lend"], secs["memory-return"]
	if Field(lend, "RF-STATUS") != "0" || Field(ret, "RF-STATUS") != "0" {
		t.Errorf("rfm lend/return --memory failed:\n%s\n%s", lend, ret)
	}
	la, lb, ra, rb := parseMemState(lend, "a"), parseMemState(lend, "b"), parseMemState(ret, "a"), parseMemState(ret, "b")
	if la.ledger != 512*mib || lb.ledger != 512*mib || grown.memTotalKiB-la.memTotalKiB != 256*1024 || la.hugeFree != grown.hugeFree {
		t.Errorf("lent 256 MiB from a to b: a holds %d bytes (MemTotal %d KiB, was %d), b %d bytes, free pages %d (were %d)",
			la.ledger, la.memTotalKiB, grown.memTotalKiB, lb.ledger, la.hugeFree, grown.hugeFree)
	}
	if !strings.Contains(lend, "+256M<a") || !strings.Contains(lend, "-256M>b") {
		t.Errorf("rfm ps does not show the memory loan on both sides:\n%s", lend)
	}
	if ra.ledger != 768*mib || rb.ledger != 256*mib || ra.memTotalKiB != grown.memTotalKiB || lb.memTotalKiB-rb.memTotalKiB != 256*1024 {
		t.Errorf("returned: a holds %d bytes (MemTotal %d KiB), b %d bytes (MemTotal %d KiB, %d while lent)", ra.ledger, ra.memTotalKiB, rb.ledger, rb.memTotalKiB, lb.memTotalKiB)
	}
	if d := before.memTotalKiB - shrunk.memTotalKiB; d < -4*1024 || d > 4*1024 || shrunk.ledger != 256*mib || shrunk.hugeFree != before.hugeFree {
		t.Errorf("shrunk: MemTotal %d KiB (was %d), the ledger %d bytes, %d free pages (were %d); want the memory and the pages back",
			shrunk.memTotalKiB, before.memTotalKiB, shrunk.ledger, shrunk.hugeFree, before.hugeFree)
	}
	ref := secs["memory-refused"]
	var codes []string
	for _, l := range strings.Split(ref, "\n") {
		if v, ok := strings.CutPrefix(l, "RF-STATUS "); ok {
			codes = append(codes, strings.TrimSpace(v))
		}
	}
	if !slices.Equal(codes, []string{"1", "1", "1"}) || !strings.Contains(ref, "max_memory") || !strings.Contains(ref, "boot memory") || !strings.Contains(ref, "no hotplug memory") {
		t.Errorf("refused memory resizes (beyond max_memory, below the boot memory, a subOS without hotplug memory) exited %v, want [1 1 1] saying why:\n%s", codes, ref)
	}
	if refused != shrunk {
		t.Errorf("refused memory resizes changed something: %+v, was %+v", refused, shrunk)
	}
}

func TestElastic(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	h := newTestHost(ctx, t, 4) // a housekeeping core and three for subOSes
	out, _, err := h.Run(ctx, elasticScript, 20*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	secs := Sections(out)
	cr := secs["create"]
	if Field(cr, "RF-STATUS-A") != "0" || Field(cr, "RF-STATUS-B") != "0" {
		t.Fatalf("create failed:\n%s\nserve log:\n%s", cr, secs["serve-log"])
	}
	checkCPUState(t, "created", "a", cr, 1, "1", "1")
	if st := parseCPUState(cr, "a"); len(st.threads) != 3 {
		t.Errorf("a (max_cpus 3) has vCPU threads %v, want 3", st.threads)
	}
	grow := secs["grow"]
	if Field(grow, "RF-STATUS") != "0" {
		t.Fatalf("rfm resize a --cpus 2 failed:\n%s\nserve log:\n%s", grow, secs["serve-log"])
	}
	checkCPUState(t, "grow", "a", grow, 2, "1-2", "1,2")
	ld := secs["lend"]
	if Field(ld, "RF-STATUS") != "0" {
		t.Fatalf("rfm lend failed:\n%s\nserve log:\n%s", ld, secs["serve-log"])
	}
	checkCPUState(t, "lend", "a", ld, 1, "1", "1")
	checkCPUState(t, "lend", "b", ld, 2, "2-3", "2,3")
	var loans []struct {
		ID       int    `json:"id"`
		Lender   string `json:"lender"`
		Borrower string `json:"borrower"`
		Cores    []int  `json:"cores"`
	}
	if i := strings.Index(ld, "["); i < 0 || json.NewDecoder(strings.NewReader(ld[i:])).Decode(&loans) != nil ||
		len(loans) != 1 || loans[0].Lender != "a" || loans[0].Borrower != "b" || !slices.Equal(loans[0].Cores, []int{2}) {
		t.Errorf("rfm loans after lending core 2 from a to b: %+v\n%s", loans, ld)
	}
	if !strings.Contains(ld, "+2<a") || !strings.Contains(ld, "-2>b") {
		t.Errorf("rfm ps does not show the loan on both sides:\n%s", ld)
	}
	rt := secs["return"]
	if Field(rt, "RF-STATUS") != "0" {
		t.Errorf("rfm return failed:\n%s", rt)
	}
	checkCPUState(t, "return", "a", rt, 2, "1-2", "1,2")
	checkCPUState(t, "return", "b", rt, 1, "3", "3")
	if !strings.Contains(rt, "[]") {
		t.Errorf("rfm loans after the return is not empty:\n%s", rt)
	}
	sh := secs["shrink"]
	if Field(sh, "RF-STATUS") != "0" {
		t.Errorf("rfm resize a --cpus 1 failed:\n%s", sh)
	}
	checkCPUState(t, "shrink", "a", sh, 1, "1", "1")
	checkMemory(t, secs)
	ref := secs["refused"]
	var codes []string
	for _, l := range strings.Split(ref, "\n") {
		if v, ok := strings.CutPrefix(l, "RF-STATUS "); ok {
			codes = append(codes, strings.TrimSpace(v))
		}
	}
	if !slices.Equal(codes, []string{"1", "2", "1"}) {
		t.Errorf("refused resizes and lend exited %v, want [1 2 1] (beyond max_cpus, a usage error, more than the lender can give):\n%s", codes, ref)
	}
	if !strings.Contains(ref, "max_cpus") {
		t.Errorf("resize beyond max_cpus does not say so:\n%s", ref)
	}
	checkCPUState(t, "refused", "a", ref, 1, "1", "1")
	as := secs["autoscale"]
	if !strings.Contains(as, "p99 50ms > upper 20ms") {
		t.Fatalf("no autoscale event moving a core for a pushed p99 of 50 ms:\n%s\nserve log:\n%s", as, secs["serve-log"])
	}
	checkCPUState(t, "autoscale", "b", as, 2, "2-3", "2,3")
	back := secs["autoscale-back"]
	if !strings.Contains(as+back, "< lower 5ms") {
		t.Errorf("no autoscale event giving the core back for a p99 of 1 ms:\n%s", as+back)
	}
	checkCPUState(t, "autoscale back", "b", back, 1, "3", "3")
	alive := strings.Fields(Field(secs["alive"], "RF-ALIVE"))
	if len(alive) != 2 || alive[0] == alive[1] || alive[0] == "" {
		t.Errorf("the guest's worker process did not keep running through the resizes: %v\n%s", alive, secs["alive"])
	}
	ev := secs["events"]
	for _, what := range []string{"resize", "lend", "return"} {
		if !strings.Contains(ev, " "+what) {
			t.Errorf("no %s audit event:\n%s", what, ev)
		}
	}
	if Field(secs["destroy"], "RF-STATUS") != "0" {
		t.Errorf("destroy failed:\n%s", secs["destroy"])
	}
	t.Logf("events:\n%s", ev)
}
