package e2e

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"
)

// agentScript exercises the in-guest agent in one session: a subOS of
// the default image (rf-agent in it) becomes healthy, rfm exec runs
// commands with their output and status and forwards stdin, rfm stats
// reports the guest's CPUs and memory, and an agent killed in the guest
// is restarted by /init and healthy again.
const agentScript = `
set -u
grep -q ' /sys/fs/cgroup ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup
export RF_IMAGES="$L2"
"$RFM" serve --housekeeping 0 >>/tmp/serve.log 2>&1 & echo $! > /tmp/serve.pid
i=0; while ! "$RFM" ps >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done
# healthy NAME waits (up to 180 s) for rfm inspect to show the agent healthy.
healthy() { i=0; while ! "$RFM" inspect "$1" -o json | grep -q '"state": "healthy"' && [ $i -lt 180 ]; do sleep 1; i=$((i+1)); done; }
echo "== create"
"$RFM" create a --cores 1 --memory 256M; echo "RF-STATUS $?"
healthy a
"$RFM" inspect a -o json
"$RFM" ps
echo "== exec"
"$RFM" exec a -- sh -c 'echo hi; exit 3'; echo "RF-EXEC-STATUS $?"
echo "== exec-stdin"
echo "RF-DATA-$((6*7))" | "$RFM" exec -i a -- cat; echo "RF-EXEC-STATUS $?"
echo "== guest"
echo "RF-GUEST-NPROC $("$RFM" exec a -- nproc)"
echo "RF-GUEST-MEMTOTAL-KB $("$RFM" exec a -- sed -n 's/^MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo)"
echo "== stats"
i=0; while ! "$RFM" stats a -o json >/tmp/stats.json 2>/dev/null && [ $i -lt 30 ]; do sleep 1; i=$((i+1)); done
cat /tmp/stats.json
echo "== stats-table"
"$RFM" stats a
echo "== restart"
"$RFM" exec a -- killall rf-agent; echo "RF-KILL-STATUS $?"
sleep 2 # /init restarts it after a 1 s pause; the supervisor reconnects
"$RFM" exec a -- true; echo "RF-EXEC-AFTER-KILL $?"
healthy a
"$RFM" inspect a -o json | grep -A3 '"agent"'
"$RFM" exec a -- echo RF-AGAIN; echo "RF-EXEC-STATUS $?"
echo "== console"
"$RFM" logs a | grep -E "RF-AGENT-EXIT|rf-agent" || true
echo "== destroy"
"$RFM" destroy a; echo "RF-STATUS $?"
ls /run/rainforest/
kill $(cat /tmp/serve.pid); wait $(cat /tmp/serve.pid) 2>/dev/null
echo "== serve-log"
tail -n 30 /tmp/serve.log
`

func TestAgent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	h := newTestHost(ctx, t, 2) // one housekeeping core, one for the subOS
	out, _, err := h.Run(ctx, agentScript, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	secs := Sections(out)
	if Field(secs["create"], "RF-STATUS") != "0" {
		t.Fatalf("create failed:\n%s", secs["create"])
	}
	if !strings.Contains(secs["create"], `"state": "healthy"`) {
		t.Fatalf("the agent never became healthy:\n%s\nserve log:\n%s", secs["create"], secs["serve-log"])
	}
	if !strings.Contains(secs["create"], "healthy") || !strings.Contains(secs["create"], "AGENT") {
		t.Errorf("rfm ps shows no agent column:\n%s", secs["create"])
	}
	ex := secs["exec"]
	if !strings.Contains(ex, "hi\n") || Field(ex, "RF-EXEC-STATUS") != "3" {
		t.Errorf("rfm exec -- sh -c 'echo hi; exit 3' did not print hi and exit 3:\n%s", ex)
	}
	in := secs["exec-stdin"]
	if !strings.Contains(in, "RF-DATA-42") || Field(in, "RF-EXEC-STATUS") != "0" {
		t.Errorf("rfm exec -i did not echo stdin through cat:\n%s", in)
	}
	nproc, _ := strconv.Atoi(Field(secs["guest"], "RF-GUEST-NPROC"))
	memKB, _ := strconv.ParseUint(Field(secs["guest"], "RF-GUEST-MEMTOTAL-KB"), 10, 64)
	if nproc != 1 || memKB == 0 {
		t.Fatalf("the guest's nproc and MemTotal through rfm exec:\n%s", secs["guest"])
	}
	var st struct {
		Name string `json:"name"`
		CPUs []struct {
			CPU int `json:"cpu"`
		} `json:"cpus"`
		Memory struct {
			Total uint64 `json:"total_bytes"`
		} `json:"memory"`
		Processes int `json:"processes"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(secs["stats"])), &st); err != nil {
		t.Fatalf("rfm stats -o json: %v\n%s", err, secs["stats"])
	}
	if st.Name != "a" || len(st.CPUs) != nproc || st.Memory.Total != memKB<<10 || st.Processes == 0 {
		t.Errorf("rfm stats: %+v; want %d CPUs and MemTotal %d KiB", st, nproc, memKB)
	}
	if !strings.Contains(secs["stats-table"], "MEMORY") || !strings.Contains(secs["stats-table"], "LOAD") {
		t.Errorf("rfm stats table:\n%s", secs["stats-table"])
	}
	re := secs["restart"]
	if !strings.Contains(re, "RF-AGAIN") || Field(re, "RF-EXEC-STATUS") != "0" || !strings.Contains(re, `"state": "healthy"`) {
		t.Errorf("the agent was not restarted after killall rf-agent:\n%s\nconsole:\n%s", re, secs["console"])
	}
	if !strings.Contains(secs["console"], "RF-AGENT-EXIT") {
		t.Errorf("/init did not report the agent's exit on the console:\n%s", secs["console"])
	}
	if n := strings.Count(secs["console"], "RF-AGENT-EXIT"); n > 2 {
		t.Errorf("the agent exited %d times (killed once):\n%s", n, secs["console"])
	}
	d := secs["destroy"]
	if Field(d, "RF-STATUS") != "0" || strings.Contains(d, "a.vsock") {
		t.Errorf("destroy left the vsock socket:\n%s", d)
	}
}
