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
// shrinks to 1. Then b, latency-critical, takes a core from a (batch)
// when its guest pushes a high p99, and gives it back when it is low. After each step it prints what the guest, the host
// (vCPU thread affinities, cgroup cpuset) and the ledger say, and a
// process started in a's guest before the first step must still be
// running at the end. Refused resizes must change nothing.
const elasticScript = `
set -u
grep -q ' /sys/fs/cgroup ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup
export RF_IMAGES="$L2"
"$RFM" serve --housekeeping 0 >>/tmp/serve.log 2>&1 & echo $! > /tmp/serve.pid
i=0; while ! "$RFM" ps >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done
healthy() { local i=0; while ! "$RFM" inspect "$1" -o json | grep -q '"state": "healthy"' && [ $i -lt 240 ]; do sleep 1; i=$((i+1)); done; }
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
echo "== create"
"$RFM" create a --cores 1 --max-cpus 3 --memory 256M; echo "RF-STATUS-A $?"
"$RFM" create b --cores 3 --memory 256M --class latency-critical; echo "RF-STATUS-B $?"
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
