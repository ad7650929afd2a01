package e2e

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"
)

// hotplugScript changes a running Debian subOS's devices in one session:
//   - a boots from a loop block device (its boot disk, read-only);
//   - a disk is hot-added (rfm attach): the guest sees /dev/vdb appear and
//     reads a file from it; then it is hot-removed (rfm detach) and
//     /dev/vdb goes;
//   - a segment is granted to the running subOS (rfm grant): rfcom map
//     writes and reads it there; then it is revoked and rfcom map no
//     longer finds it;
//   - rfm vmm --config boots a subOS from a configuration document, and
//     refuses one with an unknown field.
//
// The guest's side runs from rf.cmd and reports on the console (the
// subOS's log), which the script waits on.
const hotplugScript = `
set -u
grep -q ' /sys/fs/cgroup ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup
export RF_IMAGES="$L2"
serve() { "$RFM" serve --housekeeping 0 >>/tmp/serve.log 2>&1 & echo $! > /tmp/serve.pid; i=0; while ! "$RFM" ps >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done; }
log=/run/rainforest/a.log
# wait_log PATTERN [TENTHS]: wait (bounded) for the guest to print PATTERN.
wait_log() { i=0; while ! grep -q "$1" $log 2>/dev/null && [ $i -lt ${2:-600} ]; do sleep 0.1; i=$((i+1)); done; grep -q "$1" $log 2>/dev/null || echo "RF-TIMEOUT $1"; }
ms() { awk '{printf "%d", $1 * 1000}' /proc/uptime; }
serve
echo "== loop"
dev=$(losetup -f) && losetup -r "$dev" "$L2/disk.img"; echo "RF-LOOP $dev"
[ -b "$dev" ] || { echo "RF-NO-LOOP"; exit 1; }
"$RFM" create a --cores 1 --memory 256M --disk "$dev,ro" --append 'rf.cat=/hello.txt rf.poweroff=1 rf.cmd="echo RF-GUEST-READY; until [ -b /dev/vdb ]; do sleep 0.1; done; echo RF-HOT-SEEN; mkdir -p /m2; mount -o ro /dev/vdb /m2 && cat /m2/hello.txt && echo RF-HOT-READ; umount /m2; until [ ! -b /dev/vdb ]; do sleep 0.1; done; echo RF-HOT-GONE; until rfcom map seg --write granted-live; do sleep 1; done; rfcom map seg --read 12; echo RF-SEG-DONE; while rfcom map seg --read 1 >/dev/null 2>&1; do sleep 1; done; echo RF-SEG-GONE"'; st=$?; echo "RF-STATUS-CREATE $st"; [ $st = 0 ] || exit 1
wait_log RF-GUEST-READY 1800
grep -a "hello from" $log | head -n 1
echo "== attach"
t0=$(ms)
"$RFM" attach a --disk "$L2/disk.img,ro"; echo "RF-STATUS-ATTACH $?"
wait_log RF-HOT-SEEN
echo "RF-HOTADD-MS $(( $(ms) - t0 ))"
wait_log RF-HOT-READ
grep -a -A1 "RF-HOT-SEEN" $log | tail -n 2
"$RFM" inspect a -o json | grep -c '"id": "disk'
"$RFM" attach a --disk "$L2/disk.img,ro"; echo "RF-STATUS-ATTACH-AGAIN $?"
"$RFM" attach a --disk /nonexistent.img; echo "RF-STATUS-ATTACH-MISSING $?"
echo "== detach"
"$RFM" detach a disk1; echo "RF-STATUS-DETACH $?"
wait_log RF-HOT-GONE
"$RFM" detach a disk1; echo "RF-STATUS-DETACH-AGAIN $?"
"$RFM" inspect a -o json | grep -c '"id": "disk'
echo "== grant"
"$RFM" grant a --segment seg,size=64K; echo "RF-STATUS-GRANT $?"
wait_log RF-SEG-DONE
grep -a -B1 "RF-SEG-DONE" $log | head -n 1
echo "== revoke"
"$RFM" revoke a seg; echo "RF-STATUS-REVOKE $?"
wait_log RF-SEG-GONE
"$RFM" revoke a seg; echo "RF-STATUS-REVOKE-AGAIN $?"
echo "== events"
"$RFM" events | grep -E " (attach|detach|grant|revoke)" | cut -c1-200
"$RFM" destroy a
kill $(cat /tmp/serve.pid); wait $(cat /tmp/serve.pid) 2>/dev/null
losetup -d $dev
echo "== config"
cat > /tmp/vm.json <<EOF2
{"version": 1, "name": "fromdoc", "kernel": "$L2/vmlinux", "initrd": "$L2/initramfs.cpio.gz", "cores": [1], "memory": 268435456,
 "disks": [{"path": "$L2/disk.img", "readonly": true}], "append": "rf.cat=/hello.txt rf.poweroff=1", "console": {"mode": "stdio"}}
EOF2
timeout 300 "$RFM" vmm --config /tmp/vm.json | grep -a "hello from"; echo "RF-STATUS-CONFIG $?"
sed 's/"cores"/"vcpus": 1, "cores"/' /tmp/vm.json > /tmp/bad.json
"$RFM" vmm --config /tmp/bad.json; echo "RF-STATUS-BADCONFIG $?"
echo "== serve-log"
tail -n 20 /tmp/serve.log
echo "== guest-log"
grep -a "RF-\|hello\|rfcom\|segment" $log | head -n 40
`

// TestHotplug changes the devices of running Debian subOSes: a disk and a
// shared segment are hot-added and removed, a loop block device is a boot
// disk, and a VMM boots from a configuration document.
func TestHotplug(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	h := newTestHost(ctx, t, 2)
	s := h.Script(hotplugScript, 8*time.Minute)
	s.Modules = []string{"loop"}
	res, err := h.KVM.Run(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	secs := Sections(res.Output)
	if Field(secs["loop"], "RF-STATUS-CREATE") != "0" || !strings.Contains(secs["loop"], "hello from") || strings.Contains(secs["loop"], "RF-TIMEOUT") {
		t.Fatalf("subOS on a loop block device did not boot and read its disk:\n%s\n%s", secs["loop"], secs["serve-log"])
	}
	t.Run("attach", func(t *testing.T) {
		a := secs["attach"]
		if Field(a, "RF-STATUS-ATTACH") != "0" || strings.Contains(a, "RF-TIMEOUT") || !strings.Contains(a, "hello from") {
			t.Errorf("hot-added disk not read by the guest:\n%s", a)
		}
		if n, err := strconv.Atoi(Field(a, "RF-HOTADD-MS")); err != nil || n <= 0 {
			t.Errorf("no hot-add time:\n%s", a)
		} else {
			t.Logf("hot-add: %d ms from rfm attach to /dev/vdb in the guest", n)
		}
		if Field(a, "RF-STATUS-ATTACH-AGAIN") == "0" || Field(a, "RF-STATUS-ATTACH-MISSING") == "0" || !strings.Contains(a, "already") || !strings.Contains(a, "/nonexistent.img") {
			t.Errorf("a second attach of the same disk, or a missing one, was not refused by name:\n%s", a)
		}
	})
	t.Run("detach", func(t *testing.T) {
		d := secs["detach"]
		if Field(d, "RF-STATUS-DETACH") != "0" || strings.Contains(d, "RF-TIMEOUT") {
			t.Errorf("hot-removal failed or the guest kept /dev/vdb:\n%s", d)
		}
		if Field(d, "RF-STATUS-DETACH-AGAIN") == "0" || !strings.Contains(d, `no disk "disk1"`) {
			t.Errorf("a second detach was not refused by name:\n%s", d)
		}
	})
	t.Run("grant", func(t *testing.T) {
		g := secs["grant"]
		if Field(g, "RF-STATUS-GRANT") != "0" || strings.Contains(g, "RF-TIMEOUT") || !strings.Contains(g, "granted-live") {
			t.Errorf("segment granted to the running subOS not usable with rfcom map:\n%s", g)
		}
	})
	t.Run("revoke", func(t *testing.T) {
		r := secs["revoke"]
		if Field(r, "RF-STATUS-REVOKE") != "0" || strings.Contains(r, "RF-TIMEOUT") {
			t.Errorf("revoke failed or the guest still maps the segment:\n%s\n%s", r, secs["guest-log"])
		}
		if Field(r, "RF-STATUS-REVOKE-AGAIN") == "0" || !strings.Contains(r, `not granted segment "seg"`) {
			t.Errorf("a second revoke was not refused by name:\n%s", r)
		}
	})
	t.Run("events", func(t *testing.T) {
		for _, want := range []string{" attach ", " detach ", " grant ", " revoke "} {
			if !strings.Contains(secs["events"], want) {
				t.Errorf("audit log lacks%q:\n%s", want, secs["events"])
			}
		}
	})
	t.Run("config", func(t *testing.T) {
		c := secs["config"]
		if Field(c, "RF-STATUS-CONFIG") != "0" || !strings.Contains(c, "hello from") {
			t.Errorf("rfm vmm --config did not boot the document's subOS:\n%s", c)
		}
		if Field(c, "RF-STATUS-BADCONFIG") != "2" || !strings.Contains(c, `unknown field "vcpus"`) {
			t.Errorf("a document with an unknown field was not refused by name:\n%s", c)
		}
	})
}
