package e2e

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"
)

// ficmScript runs two Linux subOSes that talk through the supervisor's FICM
// group and share a segment, in one session:
//   - a writes into segment "shared" (read-write for a, read-only for b),
//     then accepts an RFcom channel on port 7 and prints two frames, then
//     serves a doorbell (irq mode) benchmark, then starts the rfcom daemon
//     and waits, through it, for a control message from the supervisor;
//   - b sends the two frames (retrying until a listens), reads the segment,
//     is refused a write into it and a segment it was not granted, and
//     runs the benchmark against a;
//   - the supervisor is killed with -9 and restarted meanwhile; it gets the
//     FICM group back from the VMMs and sends a its control message.
//
// Both guests drive the device through uio_pci_generic (INTx), so the
// doorbells cross the VMM's INTx bridge.
const ficmScript = `
set -u
grep -q ' /sys/fs/cgroup ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup
export RF_IMAGES="$L2"
serve() { "$RFM" serve --housekeeping 0 >>/tmp/serve.log 2>&1 & echo $! > /tmp/serve.pid; i=0; while ! "$RFM" ps >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done; }
serve
gone() { i=0; while "$RFM" inspect "$1" -o json 2>/dev/null | grep -qE '"state": "(running|starting|stopping)"' && [ $i -lt 600 ]; do sleep 1; i=$((i+1)); done; }
echo "== create"
"$RFM" create a --cores 1 --memory 256M --segment shared,size=64K --append 'rf.poweroff=1 rf.cmd="rfcom ls; rfcom map shared --write from-a && rfcom recv --port 7 --count 2 --timeout 200s && rfcom bench --serve --mode irq --timeout 200s; rfcom daemon >/tmp/d.log 2>&1 & until [ -S /run/rfcom.sock ]; do sleep 0.2; done; rfcom control --count 1 --timeout 200s; cat /tmp/d.log"'; echo "RF-STATUS-A $?"
"$RFM" create b --cores 2 --memory 256M --segment shared,ro --append 'rf.poweroff=1 rf.cmd="i=0; until rfcom send --to a --port 7 hello ficm; do i=$((i+1)); [ $i -gt 200 ] && break; sleep 1; done; rfcom map shared --read 6; rfcom map shared --write from-b; rfcom map secret --read 4; i=0; until rfcom bench --to a --n 200 --mode irq --timeout 100s; do i=$((i+1)); [ $i -gt 15 ] && break; sleep 1; done"'; echo "RF-STATUS-B $?"
"$RFM" create c --cores 3 --memory 256M --segment shared,size=8K; echo "RF-STATUS-BADSIZE $?"
# Logs go with their subOS (deleted on reclaim): keep copies to read after.
tail -F /run/rainforest/a.log > /tmp/a.log 2>/dev/null & tail -F /run/rainforest/b.log > /tmp/b.log 2>/dev/null &
echo "== board"
"$RFM" board
"$RFM" ps
echo "== restart"
kill -9 $(cat /tmp/serve.pid); sleep 1
serve
"$RFM" board
echo "== wait-b"
gone b
echo "== message"
i=0
while ! grep -q 'control: ctl-hello' /tmp/a.log && [ $i -lt 300 ]; do
	"$RFM" message a ctl-hello 2>>/tmp/msg.err; sleep 1; i=$((i+1))
done
echo "RF-MSG-TRIES $i"
head -n 1 /tmp/msg.err
gone a
echo "== log-a"
grep -v '^\[' /tmp/a.log | head -n 100
echo "== log-b"
grep -v '^\[' /tmp/b.log | head -n 100
echo "== events"
"$RFM" events | tail -n 12
kill $(cat /tmp/serve.pid)
echo "== serve-log"
tail -n 20 /tmp/serve.log
`

// TestFICM checks FICM and RFcom end to end between two Linux subOSes:
// an RFcom channel, a shared segment with a read-only grant, doorbells in
// interrupt mode, and a supervisor control message.
func TestFICM(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	h := newTestHost(ctx, t, 4) // one housekeeping core and one each for a, b and (refused) c
	out, _, err := h.Run(ctx, ficmScript, 8*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	secs := Sections(out)
	if Field(secs["create"], "RF-STATUS-A") != "0" || Field(secs["create"], "RF-STATUS-B") != "0" {
		t.Fatalf("create failed:\n%s\n%s", secs["create"], secs["serve-log"])
	}
	if Field(secs["create"], "RF-STATUS-BADSIZE") == "0" || !strings.Contains(secs["create"], `segment "shared" is 65536 bytes, not 8192`) {
		t.Errorf("a grant of an existing segment with another size was not refused clearly:\n%s", secs["create"])
	}
	for _, want := range []*regexp.Regexp{regexp.MustCompile(`(?m)^1\s+a\s+running\s+1$`), regexp.MustCompile(`(?m)^2\s+b\s+running\s+2$`)} {
		if !want.MatchString(secs["board"]) {
			t.Errorf("board lacks %s:\n%s", want, secs["board"])
		}
	}
	for _, want := range []*regexp.Regexp{regexp.MustCompile(`(?m)^1\s+a\s+running\s+1$`), regexp.MustCompile(`(?m)^2\s+b\s+running\s+2$`)} {
		if !want.MatchString(secs["restart"]) {
			t.Errorf("board after the supervisor's kill -9 and restart lacks %s:\n%s", want, secs["restart"])
		}
	}
	la, lb := secs["log-a"], secs["log-b"]
	for _, want := range []string{"hello\nficm\n", "bench: served peer", "control: ctl-hello", "RF-CMD-EXIT 0"} {
		if !strings.Contains(la, want) {
			t.Errorf("subOS a's log lacks %q:\n%s", want, la)
		}
	}
	if strings.Count(la, "control: ctl-hello") < 2 {
		t.Errorf("the control message did not pass through the rfcom daemon (printed by it and by rfcom control):\n%s", la)
	}
	if !strings.Contains(la, "segment shared 65536 bytes") {
		t.Errorf("rfcom ls in a does not list the segment:\n%s", la)
	}
	for _, want := range []string{"from-a", "read-only", `segment "secret"`, "mode irq 64-byte round trip median", "msgs/s at the receiver"} {
		if !strings.Contains(lb, want) {
			t.Errorf("subOS b's log lacks %q:\n%s", want, lb)
		}
	}
	if !strings.Contains(secs["events"], " message ") {
		t.Errorf("audit log lacks the control message:\n%s", secs["events"])
	}
}
