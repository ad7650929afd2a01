package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// loopScript puts two subOSes on a loop network (RFloop: frames from VMM
// to VMM through shared memory): the first names the members, the second
// joins by the network's name, and each guest's NIC gets its address from
// the supervisor. They ping each other; then a spoofs an IP address and a
// MAC address, and its VMM drops and counts those frames (rfm stats); a
// loop network of one member and another member set under a taken name
// are refused with nothing made; a destroyed member created again resumes
// on the same network; destroying both leaves nothing.
const loopScript = shellLib + `
rfm_serve
echo "== create"
"$RFM" create a --cores 1 --memory 128M --net loop=lan0,members=a+b; echo "RF-STATUS-A $?"
"$RFM" create b --cores 2 --memory 128M --net loop=lan0; echo "RF-STATUS-B $?"
healthy a; healthy b
"$RFM" logs a | grep -a "RF-ADDR"
"$RFM" logs b | grep -a "RF-ADDR"
echo "== ping"
"$RFM" exec a -- ping -c 3 -W 5 10.99.0.3; echo "RF-PING-AB $?"
"$RFM" exec b -- ping -c 3 -W 5 10.99.0.2; echo "RF-PING-BA $?"
"$RFM" exec a -- sh -c 'ip neigh show; ip -s link show eth0'
echo "== spoof"
"$RFM" exec a -- sh -c 'ip addr add 10.99.0.9/24 dev eth0 && ping -c 3 -W 2 -I 10.99.0.9 10.99.0.3; echo "RF-SPOOF-IP-PING $?"; ip addr del 10.99.0.9/24 dev eth0'
"$RFM" exec a -- sh -c 'm=$(cat /sys/class/net/eth0/address); set_mac() { ip link set eth0 down; ip link set eth0 address $1; ip link set eth0 up; }
set_mac 02:00:00:00:00:99 && ping -c 3 -W 2 10.99.0.3; echo "RF-SPOOF-MAC-PING $?"; set_mac $m; ip route'
"$RFM" exec a -- ping -c 2 -W 5 10.99.0.3; echo "RF-PING-AFTER $?"
echo "RF-STATS-A $("$RFM" stats a -o json | tr -d '\n')"
echo "RF-STATS-B $("$RFM" stats b -o json | tr -d '\n')"
"$RFM" stats a | grep '^NIC'
echo "== refused"
"$RFM" create c --cores 3 --memory 64M --net loop=solo,members=c 2>&1; echo "RF-STATUS $?"
"$RFM" create c --cores 3 --memory 64M --net loop=lan0,members=a+c 2>&1; echo "RF-STATUS $?"
"$RFM" create c --cores 3 --memory 64M --net loop=nonet 2>&1; echo "RF-STATUS $?"
"$RFM" ps
echo "== recreate"
"$RFM" destroy a; echo "RF-STATUS $?"
"$RFM" create a --cores 1 --memory 128M --net loop=lan0; echo "RF-STATUS $?"
healthy a
"$RFM" exec a -- ping -c 3 -W 5 10.99.0.3; echo "RF-PING-AB $?"
echo "== destroy"
"$RFM" destroy a b; echo "RF-STATUS $?"
echo "RF-PS $("$RFM" ps -o json | tr -d ' \n')"
kill $(cat /tmp/serve.pid); wait $(cat /tmp/serve.pid) 2>/dev/null
echo "== serve-log"
tail -n 30 /tmp/serve.log
`

// loopStats is what the test reads of rfm stats -o json.
type loopStats struct {
	Host struct {
		NICs []struct {
			ID       string            `json:"id"`
			Counters map[string]uint64 `json:"counters"`
		} `json:"nics"`
	} `json:"host"`
}

// nicCounters parses an RF-STATS line's JSON: the first NIC's counters.
func nicCounters(t *testing.T, line string) map[string]uint64 {
	t.Helper()
	var st loopStats
	if err := json.Unmarshal([]byte(line), &st); err != nil || len(st.Host.NICs) == 0 {
		t.Fatalf("rfm stats -o json (%v): %s", err, line)
	}
	return st.Host.NICs[0].Counters
}

// TestLoop is the loop network end to end (see loopScript).
func TestLoop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	h := newTestHost(ctx, t, 4)
	out, _, err := h.Run(ctx, loopScript, 15*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	secs := Sections(out)
	cr := secs["create"]
	if Field(cr, "RF-STATUS-A") != "0" || Field(cr, "RF-STATUS-B") != "0" {
		t.Fatalf("create failed:\n%s\nserve log:\n%s", cr, secs["serve-log"])
	}
	if !strings.Contains(cr, "10.99.0.2/24") || !strings.Contains(cr, "10.99.0.3/24") {
		t.Errorf("the guests did not configure their loop addresses (RF-ADDR):\n%s", cr)
	}
	p := secs["ping"]
	if Field(p, "RF-PING-AB") != "0" || Field(p, "RF-PING-BA") != "0" {
		t.Errorf("the members do not ping each other over the loop network:\n%s", p)
	}
	sp := secs["spoof"]
	if Field(sp, "RF-SPOOF-IP-PING") == "0" || Field(sp, "RF-SPOOF-MAC-PING") == "0" {
		t.Errorf("a spoofed ping got an answer:\n%s", sp)
	}
	if Field(sp, "RF-PING-AFTER") != "0" {
		t.Errorf("a lost its network after the spoofing:\n%s", sp)
	}
	a, b := nicCounters(t, Field(sp, "RF-STATS-A")), nicCounters(t, Field(sp, "RF-STATS-B"))
	t.Logf("a's NIC counters %v; b's %v", a, b)
	if a["loop_tx_spoofed_ip"] == 0 {
		t.Errorf("a's VMM counted no frame with a spoofed IP source: %v", a)
	}
	if a["tx_spoofed_mac"]+a["loop_tx_spoofed_mac"] == 0 {
		t.Errorf("a's VMM counted no frame with a spoofed MAC source: %v", a)
	}
	if a["loop_tx_frames"] == 0 || b["loop_rx_frames"] == 0 {
		t.Errorf("no frames counted through the loop: a %v b %v", a, b)
	}
	if b["loop_rx_spoofed"] != 0 {
		t.Errorf("b received %d spoofed frames: %v", b["loop_rx_spoofed"], b)
	}
	ref := secs["refused"]
	codes := Fields(ref, "RF-STATUS")
	if strings.Join(codes, " ") != "1 1 1" || !strings.Contains(ref, "needs at least two") || !strings.Contains(ref, "exists with members a+b") ||
		!strings.Contains(ref, "does not exist yet") {
		t.Errorf("refused creates (one member, another member set, no members) exited %v, want 1 1 1 saying why:\n%s", codes, ref)
	}
	if strings.Contains(ref, "\nc ") {
		t.Errorf("a refused create left subOS c:\n%s", ref)
	}
	re := secs["recreate"]
	if strings.Count(re, "RF-STATUS 0") != 2 || Field(re, "RF-PING-AB") != "0" {
		t.Errorf("a member destroyed and created again does not reach the other:\n%s", re)
	}
	d := secs["destroy"]
	if Field(d, "RF-STATUS") != "0" {
		t.Errorf("destroy failed:\n%s", d)
	}
	if ps := Field(d, "RF-PS"); ps != "[]" {
		t.Errorf("subOSes left after destroy: %s", ps)
	}
}
