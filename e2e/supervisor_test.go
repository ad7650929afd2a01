package e2e

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"
)

// supervisorScript exercises the supervisor in one session: two subOSes on
// disjoint cores, kill -9 of the supervisor and a restart that re-adopts
// them, kill -9 of one VMM and its reclamation, destroy, and rfm run with
// the default layout.
const supervisorScript = `
set -u
grep -q ' /sys/fs/cgroup ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup
hp=/sys/kernel/mm/hugepages/hugepages-2048kB
export RF_IMAGES="$L2"
sock=/run/rainforest/rfm.sock
serve() { "$RFM" serve --housekeeping 0 >>/tmp/serve.log 2>&1 & echo $! > /tmp/serve.pid; i=0; while ! "$RFM" ps >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done; }
free_before=$(cat $hp/free_hugepages)
serve
echo "== create"
"$RFM" create a --cores 1 --memory 256M --disk "$L2/disk.img,ro" --append rf.cat=/hello.txt; echo "RF-STATUS $?"
"$RFM" create b --cores 2 --memory 256M; echo "RF-STATUS-B $?"
"$RFM" create c --cores 2 --memory 256M; echo "RF-STATUS-OVERLAP $?"
echo "== ps-before"
"$RFM" ps -o json
echo "== restart"
kill -9 $(cat /tmp/serve.pid); sleep 1
serve
echo "== ps-after"
"$RFM" ps -o json
echo "== kill-vmm"
kill -9 $("$RFM" inspect b -o json | sed -n 's/^  "pid": \([0-9]*\),/\1/p')
i=0; while "$RFM" inspect b -o json 2>/dev/null | grep -qE '"state": "(running|starting|stopping)"' && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done
"$RFM" ps
echo "== logs"
i=0; while ! "$RFM" logs a | grep -q "hello from" && [ $i -lt 150 ]; do sleep 1; i=$((i+1)); done
"$RFM" logs a | grep -E "RF-CPUS|hello from|RF-INIT"
echo "== console"
printf 'echo RF-CONSOLE-$((3*3))\n' | "$RFM" console a >/dev/null &
cpid=$!
i=0; while ! "$RFM" logs a | grep -q RF-CONSOLE-9 && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done
kill $cpid 2>/dev/null
"$RFM" logs a | grep RF-CONSOLE-9
echo "== destroy"
"$RFM" destroy a; echo "RF-STATUS $?"
"$RFM" ps -o json
echo "== events"
"$RFM" events
kill $(cat /tmp/serve.pid); wait $(cat /tmp/serve.pid) 2>/dev/null # its shared-memory regions hold hugepages until it exits
echo "== hugepages"
echo "RF-FREE-BEFORE $free_before"
echo "RF-FREE-AFTER $(cat $hp/free_hugepages)"
echo "== vmm-logs"
tail -n 20 /run/rainforest/*.log /tmp/serve.log
echo "== run"
timeout 400 "$RFM" run --nested never --append 'rf.poweroff=1 rf.cat=/hello.txt rf.cmd="ping -c 1 -w 150 10.99.0.3 >/dev/null && ping -c 1 -w 150 10.99.0.2 >/dev/null; echo RF-LOOP-PING $?; sleep 20"'; echo "RF-STATUS $?"
echo "== run-interrupt"
: > /tmp/run2.out # exists before the loop below reads it (the job's redirection may come later)
"$RFM" run --nested never > /tmp/run2.out 2>&1 &
rpid=$!
i=0; while [ $(grep -c "RF-CPUS" /tmp/run2.out) -lt 2 ] && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done
kill -INT $rpid; wait $rpid; echo "RF-STATUS $?"
echo "RF-FREE-AFTER $(cat $hp/free_hugepages)"
echo "RF-FREE-BEFORE $free_before"
"$RFM" ps 2>&1 | head -3
`

type psEntry struct {
	Name       string `json:"name"`
	PID        int    `json:"pid"`
	Adopted    bool   `json:"adopted"`
	Allocation struct {
		Cores  []int  `json:"cores"`
		Memory uint64 `json:"memory"`
	} `json:"allocation"`
}

// kernelLine matches a kernel message on the console ("[   12.34] ...").
var kernelLine = regexp.MustCompile(`^\[\s*\d+\.\d+\]`)

func parsePS(t *testing.T, s string) []psEntry {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if !kernelLine.MatchString(l) {
			lines = append(lines, l)
		}
	}
	text := strings.Join(lines, "\n")
	i := strings.Index(text, "[")
	j := strings.LastIndex(text, "]")
	var ps []psEntry
	if i < 0 || j < i || json.Unmarshal([]byte(text[i:j+1]), &ps) != nil {
		t.Fatalf("rfm ps -o json output not parsable:\n%s", s)
	}
	return ps
}

// TestSupervisor boots subOSes through the supervisor and checks the
// ledger, crash re-adoption, reclamation and destroy.
func TestSupervisor(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	h := newTestHost(ctx, t, 3) // one housekeeping core and one for each of two subOSes
	out, _, err := h.Run(ctx, supervisorScript, 8*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	secs := Sections(out)
	if Field(secs["create"], "RF-STATUS") != "0" || Field(secs["create"], "RF-STATUS-B") != "0" {
		t.Fatalf("create failed:\n%s", secs["create"])
	}
	if Field(secs["create"], "RF-STATUS-OVERLAP") == "0" || !strings.Contains(secs["create"], "cpu 2 is owned by subOS \"b\"") {
		t.Errorf("a subOS on a core another one owns was not refused with a message naming the core:\n%s", secs["create"])
	}
	before, after := parsePS(t, secs["ps-before"]), parsePS(t, secs["ps-after"])
	if len(before) != 2 || len(after) != 2 {
		t.Fatalf("ps before restart %v, after %v; want a and b", before, after)
	}
	for i := range before {
		b, a := before[i], after[i]
		if b.Name != a.Name || b.PID != a.PID || b.Allocation.Memory != a.Allocation.Memory || len(b.Allocation.Cores) != 1 || len(a.Allocation.Cores) != 1 || b.Allocation.Cores[0] != a.Allocation.Cores[0] {
			t.Errorf("subOS changed across the supervisor's kill -9: before %+v after %+v", b, a)
		}
		if !a.Adopted {
			t.Errorf("%s not marked adopted after restart", a.Name)
		}
	}
	if before[0].Allocation.Cores[0] == before[1].Allocation.Cores[0] {
		t.Errorf("subOSes share a core: %+v", before)
	}
	if strings.Contains(secs["kill-vmm"], "\nb ") {
		t.Errorf("b still listed after its VMM was killed:\n%s", secs["kill-vmm"])
	}
	if !strings.Contains(secs["logs"], "hello from virtio-blk") {
		t.Errorf("subOS a did not boot and read its disk:\n%s", secs["logs"])
	}
	if Field(secs["destroy"], "RF-STATUS") != "0" || len(parsePS(t, secs["destroy"])) != 0 {
		t.Errorf("destroy:\n%s", secs["destroy"])
	}
	ev := secs["events"]
	for _, want := range []string{"create", "create-failed", "adopt", "reclaim", "destroy"} {
		if !strings.Contains(ev, " "+want+" ") {
			t.Errorf("audit log lacks a %q event:\n%s", want, ev)
		}
	}
	hp := secs["hugepages"]
	if b, a := Field(hp, "RF-FREE-BEFORE"), Field(hp, "RF-FREE-AFTER"); b == "" || a != b {
		t.Errorf("hugepages free before %q after %q", b, a)
	}
	if !strings.Contains(secs["console"], "RF-CONSOLE-9") {
		t.Errorf("input typed through rfm console NAME did not reach subOS a:\n%s", secs["console"])
	}
	ri := secs["run-interrupt"]
	if Field(ri, "RF-STATUS") != "0" || Field(ri, "RF-FREE-AFTER") != Field(ri, "RF-FREE-BEFORE") {
		t.Errorf("Ctrl-C on rfm run did not destroy everything cleanly:\n%s", ri)
	}
	run := secs["run"]
	if Field(run, "RF-STATUS") != "0" || strings.Count(run, "hello from virtio-blk") != 2 {
		t.Errorf("rfm run with the default layout did not boot two subOSes to their disks and exit 0:\n%s", run)
	}
	// The default layout's loop network: each subOS pings the other
	// (subos-a is 10.99.0.2, subos-b 10.99.0.3).
	if n := strings.Count(run, "RF-LOOP-PING 0"); n != 2 {
		t.Errorf("the default layout's subOSes did not reach each other over their loop network (%d of 2):\n%s", n, run)
	}
}
