package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// networkScript gives two subOSes a NIC each on a bridge the supervisor
// makes (with the L1 host's address on it; b's address locked, ip=, and
// given to it by the supervisor): each guest reaches the L1 host and the
// other guest, their NICs on vhost-net (its worker thread in the
// subOS's cgroup); a guest that changes its MAC, or sends from another
// address than its locked one, reaches no one, and rfm stats counts the
// frames the host dropped; a NIC on a bridge that does not exist, a TAP
// name that is taken and a MAC that is another subOS's are refused with
// nothing made; destroying the subOSes removes their TAPs and the bridge.
const networkScript = shellLib + `
rfm_serve
echo "== create"
"$RFM" create a --cores 1 --memory 128M --net bridge=rfbr0,create,address=10.77.0.1/24 --append "rf.ip=10.77.0.2/24"; echo "RF-STATUS-A $?"
"$RFM" create b --cores 2 --memory 128M --net bridge=rfbr0,ip=10.77.0.3/24; echo "RF-STATUS-B $?"
healthy a; healthy b
echo "RF-BRIDGE-PORTS $(ls /sys/class/net/rfbr0/brif | tr '\n' ' ')"
echo "RF-INSPECT-A $("$RFM" inspect a -o json | tr -d '\n')"
echo "RF-INSPECT-B $("$RFM" inspect b -o json | tr -d '\n')"
# The kernel's vhost workers of a's VMM, named vhost-TID after the VMM
# thread that took the device: threads of the VMM on Linux 6.4+, kernel
# threads before (put in the VMM's cgroups).
pid=$("$RFM" inspect a -o json | tr -d ' \n' | grep -o '"pid":[0-9]*' | head -n 1 | cut -d: -f2)
for t in /proc/*/task/*; do
	c=$(cat $t/comm 2>/dev/null)
	case "$c" in vhost-[0-9]*) [ -d "/proc/$pid/task/${c#vhost-}" ] && echo "RF-VHOST-THREAD $c $(cat $t/cgroup | tr '\n' ' ')";; esac
done
echo "RF-VMM-CGROUP $(cat /proc/$pid/cgroup | tr '\n' ' ')"
echo "== ping"
"$RFM" exec a -- ip addr show
"$RFM" exec a -- ping -c 3 -W 5 10.77.0.1; echo "RF-PING-HOST $?"
"$RFM" exec a -- ping -c 3 -W 5 10.77.0.3; echo "RF-PING-PEER $?"
ping -c 2 -W 5 10.77.0.3; echo "RF-PING-FROM-HOST $?"
"$RFM" stats a | sed -n 's/^HOST CPU[[:space:]]*/RF-HOSTCPU /p'
echo "== spoof"
maca=$("$RFM" inspect a -o json | tr -d ' \n' | sed -n 's/.*"mac":"\([0-9a-f:]*\)".*/\1/p')
"$RFM" exec a -- sh -c 'ip link set eth0 down; ip link set eth0 address 02:00:00:00:00:99; ip link set eth0 up; ping -c 3 -W 2 10.77.0.3'; echo "RF-PING-SPOOFED-MAC $?"
"$RFM" exec a -- sh -c "ip link set eth0 down; ip link set eth0 address $maca; ip link set eth0 up"
"$RFM" exec a -- ping -c 3 -W 5 10.77.0.3; echo "RF-PING-RESTORED $?"
"$RFM" exec b -- sh -c 'ip addr add 10.77.0.9/24 dev eth0; ping -c 3 -W 2 -I 10.77.0.9 10.77.0.1; r=$?; ip addr del 10.77.0.9/24 dev eth0; exit $r'; echo "RF-PING-SPOOFED-IP $?"
echo "RF-STATS-A $("$RFM" stats a -o json | tr -d '\n')"
echo "RF-STATS-B $("$RFM" stats b -o json | tr -d '\n')"
echo "== refused"
"$RFM" create c --cores 3 --memory 64M --net bridge=nosuchbr 2>&1; echo "RF-STATUS $?"
"$RFM" create c --cores 3 --memory 64M --net tap=rf-a0 2>&1; echo "RF-STATUS $?"
mac=$("$RFM" inspect a -o json | tr -d ' \n' | sed -n 's/.*"mac":"\([0-9a-f:]*\)".*/\1/p')
"$RFM" create c --cores 3 --memory 64M --net "tap=rf-c0,mac=$mac" 2>&1; echo "RF-STATUS $?"
echo "RF-LINKS $(ls /sys/class/net | tr '\n' ' ')"
echo "== destroy"
"$RFM" destroy a b; echo "RF-STATUS $?"
sleep 1
echo "RF-LINKS $(ls /sys/class/net | tr '\n' ' ')"
kill $(cat /tmp/serve.pid); wait $(cat /tmp/serve.pid) 2>/dev/null
echo "== serve-log"
tail -n 30 /tmp/serve.log
`

func TestNetwork(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	h := newTestHost(ctx, t, 4)
	out, _, err := h.Run(ctx, networkScript, 15*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	secs := Sections(out)
	cr := secs["create"]
	if Field(cr, "RF-STATUS-A") != "0" || Field(cr, "RF-STATUS-B") != "0" {
		t.Fatalf("create failed:\n%s\nserve log:\n%s", cr, secs["serve-log"])
	}
	if ports := strings.Fields(Field(cr, "RF-BRIDGE-PORTS")); len(ports) != 2 || ports[0] != "rf-a0" || ports[1] != "rf-b0" {
		t.Errorf("bridge rfbr0 has ports %v, want rf-a0 rf-b0:\n%s", ports, cr)
	}
	for _, name := range []string{"a", "b"} {
		var info struct {
			Spec struct {
				Nets []struct{ TAP, MAC string }
			}
			Nets []struct{ ID, TAP, Vhost string }
		}
		raw := Field(cr, "RF-INSPECT-"+strings.ToUpper(name))
		if err := json.Unmarshal([]byte(raw), &info); err != nil {
			t.Errorf("inspect %s -o json: %v: %q", name, err, raw)
			continue
		}
		if len(info.Spec.Nets) != 1 || info.Spec.Nets[0].TAP != "rf-"+name+"0" || info.Spec.Nets[0].MAC == "" {
			t.Errorf("inspect %s does not name its NIC's TAP and MAC: %+v", name, info.Spec.Nets)
		}
		// The L1 host has /dev/vhost-net: the kernel serves the NIC.
		if len(info.Nets) != 1 || info.Nets[0].Vhost != "on" {
			t.Errorf("inspect %s: NICs %+v, want one served by vhost-net (on)\nserve log:\n%s", name, info.Nets, secs["serve-log"])
		}
	}
	// a's VMM's vhost worker is in a's cgroup.
	vt, vmmCG := Field(cr, "RF-VHOST-THREAD"), Field(cr, "RF-VMM-CGROUP")
	if !strings.HasPrefix(vt, "vhost-") || !strings.Contains(vt, "rainforest/a") || !strings.Contains(vmmCG, "rainforest/a") {
		t.Errorf("no vhost thread of a's VMM in a's cgroup: thread %q, VMM cgroup %q\n%s", vt, vmmCG, cr)
	}
	p := secs["ping"]
	for _, f := range []string{"RF-PING-HOST", "RF-PING-PEER", "RF-PING-FROM-HOST"} {
		if Field(p, f) != "0" {
			t.Errorf("%s failed:\n%s", f, p)
		}
	}
	// The VMM's back-end threads (the NIC's frames) are charged to a,
	// its vhost-net worker among them.
	if hc := Field(p, "RF-HOSTCPU"); !strings.Contains(hc, "VMM back ends") || !strings.Contains(hc, "(vhost ") {
		t.Errorf("rfm stats a shows no host CPU line with the vhost worker's time: %q\n%s", hc, p)
	}
	// A guest sending from another MAC (or, with ip, another address)
	// reaches no one though vhost-net bypasses its VMM: the host's guard
	// at the TAP drops and counts the frames.
	sp := secs["spoof"]
	if Field(sp, "RF-PING-SPOOFED-MAC") == "0" || Field(sp, "RF-PING-SPOOFED-IP") == "0" || Field(sp, "RF-PING-RESTORED") != "0" {
		t.Errorf("spoofed pings got through, or the restored NIC does not work:\n%s", sp)
	}
	for name, counter := range map[string]string{"A": "host_tx_spoofed_mac", "B": "host_tx_spoofed_ip"} {
		var st struct {
			Host struct {
				NICs []struct {
					ID       string
					Counters map[string]uint64
				}
			}
		}
		raw := Field(sp, "RF-STATS-"+name)
		if err := json.Unmarshal([]byte(raw), &st); err != nil || len(st.Host.NICs) == 0 || st.Host.NICs[0].Counters[counter] == 0 {
			t.Errorf("rfm stats %s shows no %s (%v): %s", strings.ToLower(name), counter, err, raw)
		}
	}
	ref := secs["refused"]
	codes := Fields(ref, "RF-STATUS")
	if strings.Join(codes, " ") != "1 1 1" || !strings.Contains(ref, "no such bridge") || !strings.Contains(ref, `TAP "rf-a0"`) || !strings.Contains(ref, "cannot share a MAC") {
		t.Errorf("refused creates (a missing bridge, a taken TAP, a taken MAC) exited %v, want 1 1 1 saying why:\n%s", codes, ref)
	}
	if links := Field(ref, "RF-LINKS"); strings.Contains(links, "rf-c0") {
		t.Errorf("a refused create left a TAP behind: %s", links)
	}
	d := secs["destroy"]
	if Field(d, "RF-STATUS") != "0" {
		t.Errorf("destroy failed:\n%s", d)
	}
	if links := Field(d, "RF-LINKS"); strings.Contains(links, "rf-a0") || strings.Contains(links, "rf-b0") || strings.Contains(links, "rfbr0") {
		t.Errorf("destroy left network devices behind: %s\nserve log:\n%s", links, secs["serve-log"])
	}
}
