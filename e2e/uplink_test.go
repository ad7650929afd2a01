package e2e

import (
	"context"
	"strings"
	"testing"
	"time"
)

// uplinkScript gives a subOS a NIC on the rootless uplink: its guest
// fetches a page from an HTTP server on the L1 host's loopback through
// the NAT (with host_loopback), a server in the guest is reached through
// a published port, the uplink runs in the subOS's cgroup, a second subOS publishing
// the same port is refused with nothing left, and destroy leaves no
// uplink behind.
const uplinkScript = shellLib + `
ip link set lo up
rfm_serve
mkdir -p /tmp/www && echo from-host > /tmp/www/index.html
busybox httpd -p 127.0.0.1:9000 -h /tmp/www
echo "== create"
"$RFM" create u --cores 1 --memory 128M --net user,host-loopback --publish 8080:80; st=$?; echo "RF-STATUS $st"
if [ $st != 0 ]; then tail -n 20 /tmp/serve.log; echo "RF-EXIT-EARLY"; exit 1; fi
healthy u
echo "RF-ADDR $("$RFM" exec u -- ip -4 -o addr show eth0 | sed -n 's/.* inet \([0-9./]*\).*/\1/p')"
cg=$(ls -d /sys/fs/cgroup/rainforest/u 2>/dev/null || ls -d /sys/fs/cgroup/*/rainforest/u | head -n 1)
for p in $(cat $cg/cgroup.procs); do tr '\0' ' ' < /proc/$p/cmdline | grep -q ' uplink ' && echo "RF-UPLINK-IN-CGROUP $p"; done
echo "== outbound"
"$RFM" exec u -- wget -q -O - http://10.0.2.2:9000/index.html; echo "RF-STATUS $?"
echo "== publish"
"$RFM" exec u -- sh -c 'setsid nc -l -p 80 -e echo from-guest </dev/null >/dev/null 2>&1 &'
sleep 2
nc 127.0.0.1 8080 </dev/null; echo "RF-STATUS $?"
echo "== refused"
"$RFM" create v --cores 2 --memory 64M --publish 8080:81 2>&1; echo "RF-STATUS $?"
"$RFM" ps -q
echo "== destroy"
"$RFM" destroy u; echo "RF-STATUS $?"
sleep 1
echo "RF-UPLINKS-LEFT $(ps -o args | grep -c '[r]fm uplink')"
kill $(cat /tmp/serve.pid); wait $(cat /tmp/serve.pid) 2>/dev/null
echo "== serve-log"
tail -n 30 /tmp/serve.log
`

func TestUplink(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	h := newTestHost(ctx, t, 3)
	out, _, err := h.Run(ctx, uplinkScript, 15*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	secs := Sections(out)
	cr := secs["create"]
	if Field(cr, "RF-STATUS") != "0" {
		t.Fatalf("create failed:\n%s\nserve log:\n%s", cr, secs["serve-log"])
	}
	if a := Field(cr, "RF-ADDR"); a != "10.0.2.15/24" {
		t.Errorf("the guest's address on the uplink is %q, want 10.0.2.15/24:\n%s", a, cr)
	}
	if Field(cr, "RF-UPLINK-IN-CGROUP") == "" {
		t.Errorf("no uplink process in the subOS's cgroup:\n%s", cr)
	}
	if o := secs["outbound"]; Field(o, "RF-STATUS") != "0" || !strings.Contains(o, "from-host") {
		t.Errorf("the guest did not fetch the host's page through the uplink:\n%s\nserve log:\n%s", o, secs["serve-log"])
	}
	if p := secs["publish"]; Field(p, "RF-STATUS") != "0" || !strings.Contains(p, "from-guest") {
		t.Errorf("the published port did not reach the guest's server:\n%s", p)
	}
	ref := secs["refused"]
	if Field(ref, "RF-STATUS") != "1" || !strings.Contains(ref, "8080") || !strings.Contains(ref, "in use") || strings.Contains(ref, "\nv\n") {
		t.Errorf("a second subOS publishing port 8080 was not refused cleanly:\n%s", ref)
	}
	d := secs["destroy"]
	if Field(d, "RF-STATUS") != "0" || Field(d, "RF-UPLINKS-LEFT") != "0" {
		t.Errorf("destroy left uplinks behind:\n%s\nserve log:\n%s", d, secs["serve-log"])
	}
}
