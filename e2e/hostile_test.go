package e2e

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// chaosScript kills the supervisor with SIGKILL at random points of a loop
// of creates, destroys, segment grants and revokes (at least chaosOps
// operations), restarts it each time and prints what it then manages
// (rfm ps), what runs (VMM processes) and which cgroups exist, for the test
// to compare. At the end everything is destroyed and the hugepages, the
// cgroups and the supervisor's descriptors are compared with the start.
const chaosScript = `
set -u
grep -q ' /sys/fs/cgroup ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup
hp=/sys/kernel/mm/hugepages/hugepages-2048kB
export RF_IMAGES="$L2"
serve() { "$RFM" serve --housekeeping 0 >>/tmp/serve.log 2>&1 & echo $! > /tmp/serve.pid; local w=0; while ! "$RFM" ps >/dev/null 2>&1 && [ $w -lt 150 ]; do sleep 0.2; w=$((w+1)); done; }
state() {
	echo "RF-VMMS $(vmms | sort -n | tr '\n' ' ')"
	g=""; for d in /sys/fs/cgroup/rainforest/*/; do [ -d "$d" ] && g="$g $(basename "$d")"; done
	echo "RF-CGROUPS$g"
	"$RFM" ps -o json
}
# vmms prints the pids of the VMM processes (busybox here has no pgrep).
vmms() {
	for p in /proc/[0-9]*; do
		case "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" in
		*" vmm --control-fd "*) echo "${p#/proc/}" ;;
		esac
	done
}
rnd() { od -An -N2 -tu2 /dev/urandom | tr -d ' '; }
free_before=$(cat $hp/free_hugepages)
serve
ops=0; kills=0; i=0
while [ $i -lt CHAOS_OPS ]; do
	i=$((i+1))
	r=$(rnd)
	n=x; [ $((r % 2)) = 0 ] && n=y
	case $(( (r / 2) % 6 )) in
	0|1|2) set -- create $n --cpus 1 --memory 128M --append rf.agent=0 ;;
	3) set -- destroy $n ;;
	4) set -- grant $n --segment s$(( (r / 12) % 2 )),size=2M ;;
	5) set -- revoke $n s$(( (r / 12) % 2 )) ;;
	esac
	"$RFM" "$@" >/tmp/op.out 2>&1 &
	op=$!
	ops=$((ops+1))
	if [ $(( (r / 24) % 3 )) != 0 ]; then
		usleep $(( ($(rnd) % 1500) * 1000 ))
		kill -9 $(cat /tmp/serve.pid)
		kills=$((kills+1))
		wait $op
		echo "== op-$i"
		echo "RF-OP $* (killed)"
		serve
		state
	else
		wait $op; echo "== op-$i"; echo "RF-OP $* (exit $?)"
	fi
done
echo "== loop"
echo "RF-OPS $ops"
echo "RF-KILLS $kills"
echo "== fds"
"$RFM" destroy x >/dev/null 2>&1; "$RFM" destroy y >/dev/null 2>&1
kill -9 $(cat /tmp/serve.pid); serve
echo "RF-FDS-BEFORE $(ls /proc/$(cat /tmp/serve.pid)/fd | wc -l)"
"$RFM" create x --cpus 1 --memory 128M --append rf.agent=0 >/dev/null
"$RFM" create y --cpus 1 --memory 128M --append rf.agent=0 >/dev/null
"$RFM" grant x --segment s0,size=2M >/dev/null
kill -9 $(cat /tmp/serve.pid); serve
kill -9 $(vmms)
j=0; while [ -n "$("$RFM" ps -q)" ] && [ $j -lt 150 ]; do sleep 0.2; j=$((j+1)); done
for k in 1 2 3; do
	"$RFM" create x --cpus 1 --memory 128M --append rf.agent=0 >/dev/null
	"$RFM" grant x --segment s0,size=2M >/dev/null
	"$RFM" revoke x s0 >/dev/null
	"$RFM" destroy x >/dev/null
done
echo "RF-FDS-AFTER $(ls /proc/$(cat /tmp/serve.pid)/fd | wc -l)"
echo "== end"
state
echo "== events"
"$RFM" events 2>&1 | tail -n 400
echo "== end-free"
kill $(cat /tmp/serve.pid); wait $(cat /tmp/serve.pid) 2>/dev/null
echo "RF-FREE-BEFORE $free_before"
echo "RF-FREE-AFTER $(cat $hp/free_hugepages)"
echo "== serve-log"
grep -iE 'panic|fatal|quarantin|orphan|rollback' /tmp/serve.log | tail -n 40
`

// floodScript runs after chaosScript in the same session: an attacker
// subOS floods its serial and virtio consoles (first, alone: a nested
// vCPU shared with the other floods would starve them), then its disk
// (limited to floodIOPS) and a victim subOS's doorbells while it sends
// FICM messages to the supervisor as fast as it can; the script checks that the
// supervisor answers, that the victim answers on its console, and prints
// what the limits held the attacker to.
const floodScript = `
echo "== flood-setup"
dd if=/dev/zero of=/tmp/scratch.img bs=1M count=16 2>/dev/null
serve
"$RFM" create victim --cpus 1 --memory 128M --append 'rf.agent=0 rf.cmd="rfcom daemon >/tmp/d.log 2>&1 &"'; echo "RF-STATUS-VICTIM $?"
vpeer=$("$RFM" inspect victim -o json | sed -n 's/.*"ficm_peer": \([0-9]*\).*/\1/p')
echo "RF-VICTIM-PEER $vpeer"
"$RFM" create attacker --cpus 1 --memory 128M --console-log-size FLOOD_LOG --console-rate 1K --disk /tmp/scratch.img,iops=FLOOD_IOPS --append "rf.agent=0 rf.cmd=\"timeout 12 yes RF-FLOOD-SERIAL-0123456789abcdef & timeout 12 sh -c 'yes RF-FLOOD-HVC-0123456789abcdef > /dev/hvc0'; wait; rfcom flood doorbell --peer $vpeer --duration 40s & rfcom flood msg --duration 40s & rfcom diskbench --dev /dev/vda --seconds 8 --write --i-know-it-is-scratch; wait\""; echo "RF-STATUS-ATTACKER $?"
echo "== flood"
sleep 10
ok=0
for k in 1 2 3; do
	"$RFM" ps >/dev/null && ok=$((ok+1))
	sleep 2
done
echo "RF-PS-OK $ok"
printf 'echo RF-VICTIM-$((6*7))\n' | "$RFM" console victim >/dev/null 2>&1 &
cpid=$!
i=0; while ! "$RFM" logs victim 2>/dev/null | grep -q RF-VICTIM-42 && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done
kill $cpid 2>/dev/null
"$RFM" logs victim | grep -q RF-VICTIM-42 && echo "RF-VICTIM-ALIVE 1"
i=0; while ! "$RFM" logs attacker 2>/dev/null | grep -q 'RF-DISK' && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done
sleep 35
echo "== flood-results"
echo "RF-LOG-BYTES $(wc -c < /run/rainforest/attacker.log)"
echo "RF-LOG-ROTATED $(grep -c 'rfm: log rotated' /run/rainforest/attacker.log)"
echo "RF-LOG-DROPPED $(grep -c 'bytes of console output dropped' /run/rainforest/attacker.log)"
"$RFM" logs attacker | grep -E '^RF-(DISK|FLOOD) ' | tail -n 4
echo "RF-ATTACKER-STATE $("$RFM" inspect attacker -o json | sed -n 's/.*"state": "\([a-z]*\)".*/\1/p')"
"$RFM" inspect attacker -o json | grep -A6 last_exit
"$RFM" events | grep -iE 'throttl|limit' | tail -n 5
echo "== attacker-log"
"$RFM" logs attacker | tail -c 2000
echo
echo "== flood-end"
"$RFM" destroy attacker; "$RFM" destroy victim
echo "RF-LOGS-LEFT $(ls /run/rainforest/ | grep -c -E '^(attacker|victim)')"
kill $(cat /tmp/serve.pid)
`

// chaosOps is the number of operations of the chaos loop.
const chaosOps = 60

// floodIOPS is the attacker disk's request limit, floodLog the cap of its
// console log (its console output is held to 1 KiB a second past a burst).
const (
	floodIOPS = 100
	floodLog  = 16 << 10
)

// vmmState is what one check printed: the VMM processes, the subOS
// cgroups, and the subOSes (name -> pid) the supervisor lists.
type vmmState struct {
	vmms    []int
	cgroups []string
	subos   map[string]int
}

func parseState(t *testing.T, sec string) vmmState {
	t.Helper()
	var st vmmState
	for _, f := range strings.Fields(Field(sec, "RF-VMMS")) {
		if pid, err := strconv.Atoi(f); err == nil {
			st.vmms = append(st.vmms, pid)
		}
	}
	st.cgroups = strings.Fields(Field(sec, "RF-CGROUPS"))
	sort.Strings(st.cgroups)
	st.subos = map[string]int{}
	if i := strings.Index(sec, "["); i >= 0 {
		for _, e := range parsePS(t, sec[i:]) {
			st.subos[e.Name] = e.PID
		}
	}
	return st
}

// problems says how st breaks the invariants: every VMM process is a
// listed subOS and every listed subOS is a running VMM, and the cgroups
// are exactly the listed subOSes'.
func (st vmmState) problems() []string {
	var out []string
	running := map[int]bool{}
	for _, p := range st.vmms {
		running[p] = true
	}
	listed := map[int]string{}
	var names []string
	for n, p := range st.subos {
		listed[p] = n
		names = append(names, n)
		if !running[p] {
			out = append(out, fmt.Sprintf("subOS %s listed with pid %d, which is not a running VMM", n, p))
		}
	}
	for _, p := range st.vmms {
		if _, ok := listed[p]; !ok {
			out = append(out, fmt.Sprintf("VMM pid %d runs but no subOS lists it (lost)", p))
		}
	}
	sort.Strings(names)
	if strings.Join(names, " ") != strings.Join(st.cgroups, " ") {
		out = append(out, fmt.Sprintf("cgroups %v, subOSes %v", st.cgroups, names))
	}
	return out
}

var opSection = regexp.MustCompile(`^op-\d+$`)

// TestHostile is the hostile-world session. First the supervisor, killed
// at random points of a loop of lifecycle operations, loses no subOS, no
// ledger entry, no hugepage, cgroup or descriptor. Then an attacker subOS
// floods its consoles, its disk and a victim's doorbells, and the
// supervisor and the victim still answer while the attacker is held to
// its limits.
func TestHostile(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
	defer cancel()
	h := newTestHost(ctx, t, 3) // one housekeeping core and one for each of two subOSes
	script := strings.ReplaceAll(chaosScript, "CHAOS_OPS", strconv.Itoa(chaosOps)) +
		strings.NewReplacer("FLOOD_IOPS", strconv.Itoa(floodIOPS), "FLOOD_LOG", strconv.Itoa(floodLog)).Replace(floodScript)
	out, _, err := h.Run(ctx, script, 35*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	secs := Sections(out)
	t.Run("chaos", func(t *testing.T) { checkChaos(t, secs, out) })
	t.Run("flood", func(t *testing.T) { checkFlood(t, secs, out) })
}

// checkChaos checks the chaos loop's sections.
func checkChaos(t *testing.T, secs map[string]string, out string) {
	loop := secs["loop"]
	ops, _ := strconv.Atoi(Field(loop, "RF-OPS"))
	kills, _ := strconv.Atoi(Field(loop, "RF-KILLS"))
	if ops < chaosOps || kills < chaosOps/3 {
		t.Fatalf("chaos loop ran %d operations with %d kills; want %d and at least %d:\n%s", ops, kills, chaosOps, chaosOps/3, out)
	}
	t.Logf("chaos: %d operations, %d supervisor kills", ops, kills)
	checked := 0
	for name, sec := range secs {
		if !opSection.MatchString(name) || !strings.Contains(sec, "(killed)") {
			continue
		}
		checked++
		for _, p := range parseState(t, sec).problems() {
			t.Errorf("after %s (%s): %s", name, Field(sec, "RF-OP"), p)
		}
	}
	if checked < chaosOps/3 {
		t.Errorf("only %d restarts were checked", checked)
	}
	end := parseState(t, secs["end"])
	if len(end.vmms) != 0 || len(end.cgroups) != 0 || len(end.subos) != 0 {
		t.Errorf("after destroying everything: VMMs %v, cgroups %v, subOSes %v", end.vmms, end.cgroups, end.subos)
	}
	if b, a := Field(secs["end-free"], "RF-FREE-BEFORE"), Field(secs["end-free"], "RF-FREE-AFTER"); b == "" || a != b {
		t.Errorf("hugepages free before %q after %q (leaked)", b, a)
	}
	if b, a := Field(secs["fds"], "RF-FDS-BEFORE"), Field(secs["fds"], "RF-FDS-AFTER"); b == "" || a != b {
		t.Errorf("supervisor descriptors before %q after %q create/kill/re-adopt cycles (leaked)", b, a)
	}
	if t.Failed() {
		t.Logf("events:\n%s\nsupervisor log:\n%s", secs["events"], secs["serve-log"])
	}
}

// checkFlood checks the flood's sections: both subOSes started, the
// supervisor and the victim answered during the flood, the attacker's
// console log stayed under its cap and its disk under its request limit,
// and destroying both left no file behind.
func checkFlood(t *testing.T, secs map[string]string, out string) {
	setup, flood, res := secs["flood-setup"], secs["flood"], secs["flood-results"]
	defer func() {
		if t.Failed() {
			t.Logf("the attacker's console log, its end:\n%s", secs["attacker-log"])
		}
	}()
	if Field(setup, "RF-STATUS-VICTIM") != "0" || Field(setup, "RF-STATUS-ATTACKER") != "0" {
		t.Fatalf("flood subOSes did not start:\n%s", out)
	}
	if got := Field(flood, "RF-PS-OK"); got != "3" {
		t.Errorf("the supervisor answered %s of 3 times during the flood", got)
	}
	if got := Field(res, "RF-ATTACKER-STATE"); got != "running" {
		t.Errorf("the attacker's VMM is %q after the flood, not running: its limits must hold it, not kill it", got)
	}
	if Field(flood, "RF-VICTIM-ALIVE") != "1" {
		t.Errorf("the victim did not answer on its console during the flood")
	}
	if n, err := strconv.ParseInt(Field(res, "RF-LOG-BYTES"), 10, 64); err != nil || n > floodLog {
		t.Errorf("attacker console log is %q bytes; cap %d", Field(res, "RF-LOG-BYTES"), floodLog)
	}
	if n, _ := strconv.Atoi(Field(res, "RF-LOG-ROTATED")); n < 1 {
		t.Errorf("the attacker's console log was never rotated: the flood did not reach its cap")
	}
	disk := keyValues(Field(res, "RF-DISK"))
	if len(disk) == 0 {
		t.Errorf("the attacker's disk flood printed no result:\n%s", res)
	}
	for _, k := range []string{"rand_read_iops", "rand_write_iops"} {
		v, err := strconv.ParseFloat(disk[k], 64)
		if err != nil {
			t.Errorf("RF-DISK has no %s: %v", k, disk)
			continue
		}
		// The bucket holds one second's worth: a phase of 8 s may
		// start with it full.
		if v > 1.5*floodIOPS {
			t.Errorf("attacker disk %s = %v; limit %d", k, v, floodIOPS)
		}
	}
	if !strings.Contains(res, "RF-FLOOD doorbells=") || !strings.Contains(res, "RF-FLOOD messages=") {
		t.Errorf("the doorbell and message floods printed no result:\n%s", res)
	}
	if got := Field(secs["flood-end"], "RF-LOGS-LEFT"); got != "0" {
		t.Errorf("%s files of the destroyed subOSes remain in the run directory", got)
	}
	t.Logf("flood results:\n%s", res)
}

// keyValues parses "k=v k=v" fields.
func keyValues(line string) map[string]string {
	kv := map[string]string{}
	for _, f := range strings.Fields(line) {
		if k, v, ok := strings.Cut(f, "="); ok {
			kv[k] = v
		}
	}
	return kv
}
