package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"rainforest/images"
	"rainforest/internal/kvmhost"
)

// debianScript boots the Debian system image (rfimage --image debian)
// as a subOS: the default kernel and initramfs with root=/dev/vda and the
// Debian disk ($DEBIAN, a throwaway copy) as its only disk. It waits for
// the agent (a systemd service there) and for systemd to finish
// starting, then looks at the system through rfm exec.
const debianScript = `
set -u
grep -q ' /sys/fs/cgroup ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup
export RF_IMAGES="$L2"
"$RFM" serve --housekeeping 0 >>/tmp/serve.log 2>&1 & echo $! > /tmp/serve.pid
i=0; while ! "$RFM" ps >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done
x() { "$RFM" exec deb -- "$@"; }
export HOME=/root; mkdir -p /root
ip link set lo up # rfm ssh reaches the published port on 127.0.0.1
ssh-keygen -q -t ed25519 -N "" -C "" -f /root/k
echo "== create"
t0=$(date +%s)
"$RFM" create deb --cores 1 --memory 512M --disk "$DEBIAN" --append "root=/dev/vda" --net user,publish=2222:22 --net loop=dl,members=deb+deb2 --ssh-key /root/k.pub; echo "RF-STATUS $?"
"$RFM" create deb2 --cores 2 --memory 512M --disk "$DEBIAN2" --append "root=/dev/vda" --net loop=dl; echo "RF-STATUS-2 $?"
for n in deb deb2; do
	i=0; while ! "$RFM" inspect $n -o json | grep -q '"state": "healthy"' && [ $i -lt 400 ]; do sleep 1; i=$((i+1)); done
done
echo "RF-AGENT-HEALTHY-AFTER-S $(( $(date +%s) - t0 ))"
echo "== running"
x systemctl is-system-running --wait; echo "RF-EXEC-STATUS $?"
echo "RF-RUNNING-AFTER-S $(( $(date +%s) - t0 ))"
x systemctl --failed --no-legend --plain
x systemd-analyze
echo "== units"
for u in rf-agent ssh systemd-networkd systemd-resolved serial-getty@hvc0 serial-getty@ttyS0; do
	echo "RF-UNIT $u $(x systemctl is-active "$u")"
done
echo "== root"
echo "RF-ROOT $(x findmnt -n -o SOURCE,FSTYPE /)"
echo "RF-ROOT-RW $(x findmnt -n -o OPTIONS / | cut -d, -f1)"
x cat /proc/cmdline
echo "== modules"
x sh -c 'for m in virtio_net virtio_mem virtiofs fuse; do modprobe "$m" && echo "RF-MODULE $m ok"; done'
echo "== tools"
x iperf3 --version | head -n 1
x fio --version
echo "== ssh"
x sh -c 'ls /etc/ssh/ | grep ssh_host_; ss -ltn | grep -q ":22 " && echo RF-SSHD-LISTENING
ssh-keygen -q -t ed25519 -N "" -f /tmp/k && mkdir -p -m 700 /root/.ssh && cat /tmp/k.pub >>/root/.ssh/authorized_keys
o="-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
ssh $o -i /tmp/k root@127.0.0.1 echo RF-SSH-KEY-OK
ssh $o -o PubkeyAuthentication=no root@127.0.0.1 true; echo "RF-SSH-NO-KEY-STATUS $?"' 2>&1
echo "== loop"
"$RFM" exec deb2 -- systemctl is-system-running --wait
x ip -br addr
"$RFM" exec deb2 -- ip -br addr
x ping -c 3 -W 5 10.99.0.3; echo "RF-PING $?"
"$RFM" exec deb2 -- iperf3 -s -D -1; sleep 1
echo "RF-IPERF $(x iperf3 -c 10.99.0.3 -t 5 -J | tr -d ' \n')"
echo "== rfm-ssh"
"$RFM" ssh --print -i /root/k deb -- -o BatchMode=yes true
"$RFM" ssh -i /root/k deb -- -o BatchMode=yes echo RF-RFM-SSH-OK; echo "RF-RFM-SSH-STATUS $?"
cat /root/.cache/rfm/ssh/deb.known_hosts
echo "== diagnostics"
x sh -c 'systemd-analyze blame | head -n 12; systemd-analyze critical-chain --no-pager | head -n 20
echo "console: $(cat /sys/class/tty/console/active)"; ls /run/systemd/generator/getty.target.wants/
systemctl status --no-pager -n 10 serial-getty@ttyS0.service dev-ttyS0.device' 2>&1 | head -n 100
echo "== console"
"$RFM" logs deb | grep -a -E "RF-SWITCH-ROOT|RF-ROOT-FAILED|login:" | head -n 5
echo "== destroy"
"$RFM" destroy deb deb2; echo "RF-STATUS $?"
kill $(cat /tmp/serve.pid); wait $(cat /tmp/serve.pid) 2>/dev/null
echo "== serve-log"
tail -n 30 /tmp/serve.log
`

// TestDebianImage boots the Debian system image under rfm and checks
// that systemd reached its default target with no failed unit, that the
// root is the disk (read-write after systemd's remount), that the agent,
// sshd, networkd and the console gettys run, that the modules the later
// issues need load, and that sshd lets root in with a key and not
// without. Skipped when the Debian image was not built (make
// image-debian).
func TestDebianImage(t *testing.T) {
	deb, err := images.FindDebian(imagesDir(t))
	if errors.Is(err, images.ErrDebianNotBuilt) {
		t.Skipf("the Debian image is not built (make image-debian, or rfimage --image debian): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	h := newTestHost(ctx, t, 4) // one housekeeping core, three for the subOSes
	s := h.Script(debianScript, 25*time.Minute)
	s.Disks = []kvmhost.Disk{{Var: "DEBIAN", Host: deb.Disk}, {Var: "DEBIAN2", Host: deb.Disk}}
	s.Files = append(s.Files, sshClientFiles(ctx, t)...)
	start := time.Now()
	res, err := h.KVM.Run(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("session took %v", time.Since(start).Round(time.Second))
	secs := Sections(res.Output)
	if Field(secs["create"], "RF-STATUS") != "0" || Field(secs["create"], "RF-STATUS-2") != "0" {
		t.Fatalf("create failed:\n%s\nserve log:\n%s", secs["create"], secs["serve-log"])
	}
	t.Logf("agent healthy %s s and systemd done %s s after rfm create (nested)",
		Field(secs["create"], "RF-AGENT-HEALTHY-AFTER-S"), Field(secs["running"], "RF-RUNNING-AFTER-S"))
	t.Logf("boot diagnostics:\n%s", secs["diagnostics"])
	run := secs["running"]
	if !strings.Contains(run, "running\n") || Field(run, "RF-EXEC-STATUS") != "0" {
		t.Fatalf("systemctl is-system-running did not say running (failed units follow):\n%s\nconsole:\n%s\nserve log:\n%s",
			run, secs["console"], secs["serve-log"])
	}
	for _, u := range []string{"rf-agent", "ssh", "systemd-networkd", "systemd-resolved", "serial-getty@hvc0", "serial-getty@ttyS0"} {
		if got := Field(secs["units"], "RF-UNIT "+u); got != "active" {
			t.Errorf("unit %s is %q, want active", u, got)
		}
	}
	root := secs["root"]
	if got := Field(root, "RF-ROOT"); !strings.HasPrefix(got, "/dev/vda") || !strings.HasSuffix(got, "ext4") {
		t.Errorf("root file system %q, want /dev/vda ext4", got)
	}
	if got := Field(root, "RF-ROOT-RW"); got != "rw" {
		t.Errorf("root mounted %q, want rw after systemd's remount", got)
	}
	for _, m := range []string{"virtio_net", "virtio_mem", "virtiofs", "fuse"} {
		if Field(secs["modules"], "RF-MODULE "+m) != "ok" {
			t.Errorf("module %s does not load:\n%s", m, secs["modules"])
		}
	}
	if tools := secs["tools"]; !strings.Contains(tools, "iperf 3") || !strings.Contains(tools, "fio-3") {
		t.Errorf("iperf3 and fio:\n%s", tools)
	}
	ssh := secs["ssh"]
	if !strings.Contains(ssh, "ssh_host_ed25519_key\n") || strings.Contains(ssh, "ssh_host_rsa") {
		t.Errorf("want one host key, ed25519, made at first boot:\n%s", ssh)
	}
	if !strings.Contains(ssh, "RF-SSHD-LISTENING") || !strings.Contains(ssh, "RF-SSH-KEY-OK") {
		t.Errorf("root cannot log in over SSH with a key:\n%s", ssh)
	}
	if st, _ := strconv.Atoi(Field(ssh, "RF-SSH-NO-KEY-STATUS")); st == 0 {
		t.Errorf("root logged in over SSH without a key:\n%s", ssh)
	}
	// RFloop between the two Debian subOSes: ping and iperf3, with no
	// change in the guests but the address the supervisor gave.
	lp := secs["loop"]
	if Field(lp, "RF-PING") != "0" {
		t.Errorf("deb does not ping deb2 over the loop network:\n%s", lp)
	}
	var ip struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(Field(lp, "RF-IPERF")), &ip); err != nil || ip.End.SumReceived.BitsPerSecond <= 0 {
		t.Errorf("iperf3 over the loop network (%v):\n%s", err, lp)
	} else {
		t.Logf("iperf3 deb -> deb2 over RFloop (nested, emulated): %.1f Mbit/s", ip.End.SumReceived.BitsPerSecond/1e6)
	}
	// rfm ssh: through the published port, with the key given at create
	// and the host key pinned through the agent.
	rs := secs["rfm-ssh"]
	if !strings.Contains(rs, "RF-RFM-SSH-OK") || Field(rs, "RF-RFM-SSH-STATUS") != "0" || !strings.Contains(rs, "StrictHostKeyChecking=yes") ||
		!strings.Contains(rs, "[127.0.0.1]:2222 ssh-ed25519 ") {
		t.Errorf("rfm ssh deb did not log in with the key given at create and the pinned host key:\n%s", rs)
	}
	if c := secs["console"]; !strings.Contains(c, images.RootSwitchMarker+" /dev/vda") || !strings.Contains(c, "login:") {
		t.Errorf("the console shows no switch to the disk and no login prompt:\n%s", c)
	}
	if Field(secs["destroy"], "RF-STATUS") != "0" {
		t.Errorf("destroy failed:\n%s", secs["destroy"])
	}
}

// sshClientFiles are the host's ssh and ssh-keygen with their libraries,
// and a passwd file naming root (OpenSSH looks the user up), for the
// nested L1 guest.
func sshClientFiles(ctx context.Context, t *testing.T) []kvmhost.File {
	var bins []string
	for _, b := range []string{"ssh", "ssh-keygen"} {
		p, err := exec.LookPath(b)
		if err != nil {
			t.Fatalf("the e2e tests need the OpenSSH client (scripts/setup.sh installs it): %v", err)
		}
		bins = append(bins, p)
	}
	passwd := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(passwd, []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return append(hostProgramFiles(ctx, t, bins...), kvmhost.File{Host: passwd, L1: "/etc/passwd"})
}
