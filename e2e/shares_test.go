package e2e

import (
	"context"
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"rainforest/internal/kvmhost"
	"rainforest/rfm/share"
	"rainforest/rfm/supervisor"
)

// sharesScript runs one subOS with two shares (RFfuse): rw read-write
// and ro read-only, each served by a virtiofsd the supervisor starts in
// the subOS's cgroup. The guest writes a file the host then reads; its
// writes to the read-only share fail with EROFS and leave the host
// directory as it was; symbolic links in the share that point outside it
// (absolute, and ../) and to /etc/passwd do not reach the host's files;
// a third share is hot-added, read and removed. The virtiofsd processes
// are in the subOS's cgroup and their CPU time shows in rfm stats, the
// agent reports the mounts, a restarted supervisor re-adopts the
// virtiofsd, and one killed fails its share (rfm inspect, the audit log)
// and the guest's reads of it with EIO. Destroying the subOS ends every
// virtiofsd and removes the read-only view.
const sharesScript = `
set -u
grep -q ' /sys/fs/cgroup ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup
export RF_IMAGES="$L2"
serve() { "$RFM" serve --housekeeping 0 >>/tmp/serve.log 2>&1 & echo $! > /tmp/serve.pid; local i=0; while ! "$RFM" ps >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done; }
healthy() { local i=0; while ! "$RFM" inspect "$1" -o json | grep -q '"state": "healthy"' && [ $i -lt 240 ]; do sleep 1; i=$((i+1)); done; }
# pids NAME prints the pids of NAME's serving virtiofsd.
pids() { "$RFM" inspect "$1" -o json | tr -d ' \n' | grep -o '"state":"serving","pid":[0-9]*' | sed 's/.*://'; }
cpu() { awk '{print $14 + $15}' /proc/$1/stat 2>/dev/null || echo none; }
root=/tmp/rf-shares
mkdir -p $root/rw $root/ro $root/hot
echo RF-HOST-SECRET > $root/secret
echo "read me" > $root/ro/readme
echo "hot data" > $root/hot/hot.txt
ln -s $root/secret $root/rw/abs-link
ln -s ../secret $root/rw/rel-link
ln -s /etc/passwd $root/rw/passwd-link
# (the nested L1 guest has no /etc/passwd: give it one to aim at)
[ -e /etc/passwd ] || echo 'root:x:0:0:RF-L1-PASSWD:/root:/bin/sh' > /etc/passwd
serve
echo "== create"
"$RFM" create a --cores 1 --memory 256M --share $root/rw:rw --share $root/ro:ro,ro; echo "RF-STATUS $?"
healthy a
"$RFM" inspect a -o table
"$RFM" exec a -- sh -c 'grep virtiofs /proc/mounts'
echo "== refused"
"$RFM" create b --cores 2 --memory 64M --share $root/missing:x 2>&1; echo "RF-STATUS-MISSING $?"
"$RFM" create b --cores 2 --memory 64M --share $root/secret:x 2>&1; echo "RF-STATUS-FILE $?"
"$RFM" create b --cores 2 --memory 64M --share $root/rw:x --share $root/ro:x 2>&1; echo "RF-STATUS-DUP $?"
"$RFM" create b --cores 2 --memory 64M --share $root/rw:abcdefghijklmnopqrstuvwxyz0123456789z 2>&1; echo "RF-STATUS-LONG $?"
"$RFM" create b --cores 2 --memory 64M --share /:all 2>&1; echo "RF-STATUS-ROOT $?"
echo "RF-B $("$RFM" ps -q | grep -c '^b$')"
echo "== rw"
"$RFM" exec a -- sh -c 'echo written-by-guest > /mnt/rw/from-guest && cat /mnt/rw/from-guest'; echo "RF-EXEC $?"
echo "RF-HOST-SEES $(cat $root/rw/from-guest)"
echo "== ro"
"$RFM" exec a -- cat /mnt/ro/readme; echo "RF-RO-READ $?"
"$RFM" exec a -- sh -c 'echo x > /mnt/ro/new' 2>&1; echo "RF-RO-CREATE $?"
"$RFM" exec a -- sh -c 'echo x >> /mnt/ro/readme' 2>&1; echo "RF-RO-APPEND $?"
"$RFM" exec a -- rm /mnt/ro/readme 2>&1; echo "RF-RO-RM $?"
echo "RF-RO-HOST $(ls $root/ro | tr '\n' ' ')$(cat $root/ro/readme)"
echo "== escape"
"$RFM" exec a -- sh -c 'ls -l /mnt/rw; cat /mnt/rw/abs-link; echo "RF-ABS $?"; cat /mnt/rw/rel-link; echo "RF-REL $?"; cat /mnt/rw/../secret; echo "RF-DOTDOT $?"; cat /mnt/rw/passwd-link' 2>&1
echo "RF-PASSWD-HOST $(md5sum < /etc/passwd 2>/dev/null | cut -c1-32)"
echo "RF-PASSWD-GUEST $("$RFM" exec a -- sh -c 'md5sum < /mnt/rw/passwd-link | cut -c1-32' 2>/dev/null)"
echo "== hot"
"$RFM" share a --share $root/hot:hot; echo "RF-STATUS $?"
# The supervisor has the agent mount it at /mnt/hot.
"$RFM" exec a -- sh -c 'i=0; while ! grep -q " /mnt/hot virtiofs " /proc/mounts && [ $i -lt 120 ]; do sleep 0.5; i=$((i+1)); done; cat /mnt/hot/hot.txt'; echo "RF-HOT-READ $?"
"$RFM" events | grep -a "share-mount" | tail -n 1
"$RFM" share a --share $root/hot:hot 2>&1; echo "RF-STATUS-AGAIN $?"
echo "== cgroup"
cg=/sys/fs/cgroup/rainforest/a
for p in $(pids a); do
	if grep -qx "$p" $cg/cgroup.procs; then echo "RF-IN-CGROUP $p $(cat /proc/$p/comm)"; else echo "RF-NOT-IN-CGROUP $p"; fi
	echo "RF-CPU-BEFORE $p $(cpu $p)"
done
"$RFM" exec a -- sh -c 'i=0; while [ $i -lt 1000 ]; do echo $i > /mnt/rw/f$((i % 16)); cat /mnt/rw/f$((i % 16)) >/dev/null; i=$((i+1)); done'; echo "RF-LOAD $?"
for p in $(pids a); do echo "RF-CPU-AFTER $p $(cpu $p)"; done
sleep 3
"$RFM" stats a
"$RFM" stats a -o json | tr -d ' \n' | sed -n 's/.*"host":\(.*\)}$/RF-HOST-USAGE \1/p'; echo
echo "RF-GUEST-SHARES $("$RFM" stats a -o json | tr -d ' \n' | grep -o '"shares":\[[^]]*\]')"
echo "== unshare"
"$RFM" unshare a hot; echo "RF-STATUS $?"
echo "RF-HOT-MOUNTED-AFTER $("$RFM" exec a -- grep -c ' /mnt/hot ' /proc/mounts)"
echo "RF-SHARES $("$RFM" inspect a -o json | tr -d ' \n' | grep -o '"tag":"[a-z]*"' | sort -u | tr '\n' ' ')"
echo "== readopt"
before=$(pids a | tr '\n' ' ')
kill -9 $(cat /tmp/serve.pid); sleep 1
serve
echo "RF-PIDS-BEFORE $before"
echo "RF-PIDS-AFTER $(pids a | tr '\n' ' ')"
"$RFM" exec a -- cat /mnt/rw/from-guest; echo "RF-READ-AFTER $?"
echo "== fail"
ro=$("$RFM" inspect a -o json | tr -d ' \n' | grep -o '"tag":"ro","readonly":true,"state":"serving","pid":[0-9]*' | sed 's/.*://')
kill -9 $ro
i=0; while ! "$RFM" inspect a -o json | grep -q '"state": "failed"' && [ $i -lt 30 ]; do sleep 1; i=$((i+1)); done
"$RFM" inspect a -o table
"$RFM" inspect a -o json | tr -d '\n' | grep -o '"state": "failed",[^}]*'
"$RFM" events | grep share-failed | cut -c1-300
"$RFM" exec a -- cat /mnt/rw/from-guest; echo "RF-RW-STILL $?"
# The guest's requests on the failed share get EIO from the VMM; the
# subOS runs on.
timeout 60 "$RFM" exec a -- cat /mnt/ro/readme 2>&1; echo "RF-RO-AFTER-FAIL $?"
timeout 60 "$RFM" exec a -- ls /mnt/ro 2>&1; echo "RF-RO-LS-AFTER-FAIL $?"
"$RFM" exec a -- cat /mnt/rw/from-guest; echo "RF-RW-STILL-AFTER $?"
echo "== destroy"
echo "RF-VIEWS-BEFORE $(grep -c /shares/ /proc/mounts)"
"$RFM" destroy a; echo "RF-STATUS $?"
echo "RF-VIEWS-AFTER $(grep -c /shares/ /proc/mounts)"
left=""; for p in /proc/[0-9]*; do case "$(cat $p/comm 2>/dev/null)" in virtiofsd) left="$left ${p#/proc/}";; esac; done
echo "RF-VIRTIOFSD-LEFT ${left:-none}"
kill $(cat /tmp/serve.pid); wait $(cat /tmp/serve.pid) 2>/dev/null
echo "== serve-log"
tail -n 40 /tmp/serve.log
`

// virtiofsdFiles are the host's virtiofsd and its libraries, placed at
// the same paths in the nested L1 guest (which has no virtiofsd).
func virtiofsdFiles(ctx context.Context, t *testing.T) []kvmhost.File {
	bin, err := share.Find(ctx)
	if err != nil {
		if os.Getenv("RF_REQUIRE_KVM") == "1" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	return hostProgramFiles(ctx, t, bin.Path)
}

// hostProgramFiles are the host's programs at paths and their libraries,
// placed at the same paths in the nested L1 guest.
func hostProgramFiles(ctx context.Context, t *testing.T, paths ...string) []kvmhost.File {
	var files []kvmhost.File
	seen := map[string]bool{}
	for _, p := range paths {
		fs, err := kvmhost.DynamicFiles(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fs {
			if !seen[f.L1] {
				seen[f.L1] = true
				files = append(files, f)
			}
		}
	}
	return files
}

// TestShares shares host directories with a running Debian subOS.
func TestShares(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	h := newTestHost(ctx, t, 3)
	s := h.Script(sharesScript, 20*time.Minute)
	s.Files = append(s.Files, virtiofsdFiles(ctx, t)...)
	res, err := h.KVM.Run(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	secs := Sections(res.Output)
	if c := secs["create"]; Field(c, "RF-STATUS") != "0" || !strings.Contains(c, "virtiofs") {
		t.Fatalf("subOS with shares not created, or the guest did not mount them:\n%s\nserve log:\n%s", c, secs["serve-log"])
	}
	t.Run("refused", func(t *testing.T) {
		r := secs["refused"]
		for _, c := range []struct{ field, says string }{
			{"RF-STATUS-MISSING", "no such file or directory"},
			{"RF-STATUS-FILE", "is not a directory"},
			{"RF-STATUS-DUP", `tag "x" is also shares[0]'s`},
			{"RF-STATUS-LONG", "1 to 36 bytes"},
			{"RF-STATUS-ROOT", "allow_root"},
		} {
			if Field(r, c.field) != "1" || !strings.Contains(r, c.says) {
				t.Errorf("%s: want exit status 1 saying %q:\n%s", c.field, c.says, r)
			}
		}
		if Field(r, "RF-B") != "0" {
			t.Errorf("a refused create left subOS b:\n%s", r)
		}
	})
	t.Run("read-write", func(t *testing.T) {
		rw := secs["rw"]
		if Field(rw, "RF-EXEC") != "0" || Field(rw, "RF-HOST-SEES") != "written-by-guest" {
			t.Errorf("the host does not see the guest's write:\n%s", rw)
		}
	})
	t.Run("read-only", func(t *testing.T) {
		ro := secs["ro"]
		if Field(ro, "RF-RO-READ") != "0" || !strings.Contains(ro, "read me") {
			t.Errorf("the guest cannot read the read-only share:\n%s", ro)
		}
		for _, f := range []string{"RF-RO-CREATE", "RF-RO-APPEND", "RF-RO-RM"} {
			if Field(ro, f) == "0" {
				t.Errorf("%s succeeded on a read-only share:\n%s", f, ro)
			}
		}
		if strings.Count(ro, "Read-only file system") < 3 {
			t.Errorf("writes to the read-only share did not fail with EROFS:\n%s", ro)
		}
		if got := Field(ro, "RF-RO-HOST"); got != "readme read me" {
			t.Errorf("the host's read-only directory changed: %q", got)
		}
	})
	t.Run("escape", func(t *testing.T) {
		e := secs["escape"]
		if strings.Contains(e, "RF-HOST-SECRET") || strings.Contains(e, "RF-L1-PASSWD") {
			t.Errorf("a symbolic link in the share reached the host's file outside it:\n%s", e)
		}
		for _, f := range []string{"RF-ABS", "RF-REL", "RF-DOTDOT"} {
			if Field(e, f) == "0" {
				t.Errorf("%s: reading outside the share succeeded:\n%s", f, e)
			}
		}
		if host := Field(e, "RF-PASSWD-HOST"); host == "" || Field(e, "RF-PASSWD-GUEST") == host {
			t.Errorf("the link to /etc/passwd gave the guest the host's file:\n%s", e)
		}
	})
	t.Run("hot-add", func(t *testing.T) {
		hot := secs["hot"]
		if Field(hot, "RF-STATUS") != "0" || Field(hot, "RF-HOT-READ") != "0" || !strings.Contains(hot, "hot data") {
			t.Errorf("the hot-added share was not read by the guest:\n%s", hot)
		}
		if !strings.Contains(hot, "share-mount ") || !strings.Contains(hot, "mounted in the guest") {
			t.Errorf("no share-mount event for the hot-added share:\n%s", hot)
		}
		if Field(hot, "RF-STATUS-AGAIN") != "4" || !strings.Contains(hot, `tag "hot" already`) {
			t.Errorf("a second share of the same tag was not refused:\n%s", hot)
		}
		u := secs["unshare"]
		if Field(u, "RF-STATUS") != "0" || strings.Contains(Field(u, "RF-SHARES"), "hot") || Field(u, "RF-HOT-MOUNTED-AFTER") != "0" {
			t.Errorf("unshare failed or the share stays:\n%s", u)
		}
	})
	t.Run("cgroup", func(t *testing.T) {
		c := secs["cgroup"]
		if strings.Contains(c, "RF-NOT-IN-CGROUP") || strings.Count(c, "RF-IN-CGROUP") != 3 {
			t.Errorf("the three virtiofsd are not all in the subOS's cgroup:\n%s", c)
		}
		grew := false
		for _, l := range strings.Split(c, "\n") {
			if v, ok := strings.CutPrefix(l, "RF-CPU-AFTER "); ok {
				f := strings.Fields(v)
				after, _ := strconv.Atoi(f[len(f)-1])
				before, _ := strconv.Atoi(Field(c, "RF-CPU-BEFORE "+f[0]))
				grew = grew || after > before
			}
		}
		if !grew {
			t.Errorf("no virtiofsd used CPU serving the guest's load:\n%s", c)
		}
		if g := Field(c, "RF-GUEST-SHARES"); !strings.Contains(g, `{"tag":"rw","dir":"/mnt/rw"}`) || !strings.Contains(g, `{"tag":"hot","dir":"/mnt/hot"}`) {
			t.Errorf("the agent does not report the shares mounted: %s", g)
		}
		var u supervisor.HostUsage
		if err := json.Unmarshal([]byte(Field(c, "RF-HOST-USAGE")), &u); err != nil || len(u.Processes) == 0 || len(u.Backends) != 3 {
			t.Fatalf("rfm stats does not show the cgroup's and the virtiofsd's CPU time (%v):\n%s", err, c)
		}
		total := u.VCPUSeconds + u.BackendSeconds + u.OtherSeconds
		for _, b := range u.Backends {
			if b.Tag == "rw" && (b.CPUUsec == 0 || float64(b.CPUUsec)/1e6 > total+0.01) {
				t.Errorf("virtiofsd of rw: %d us of CPU, the cgroup %.2f s:\n%s", b.CPUUsec, total, c)
			}
		}
	})
	t.Run("readopt", func(t *testing.T) {
		r := secs["readopt"]
		if b, a := Field(r, "RF-PIDS-BEFORE"), Field(r, "RF-PIDS-AFTER"); b == "" || b != a || Field(r, "RF-READ-AFTER") != "0" {
			t.Errorf("a restarted supervisor did not re-adopt the virtiofsd (before %q, after %q):\n%s", b, a, r)
		}
	})
	t.Run("failure", func(t *testing.T) {
		f := secs["fail"]
		if !strings.Contains(f, `"state": "failed"`) || !strings.Contains(f, "virtiofsd") || !strings.Contains(f, "share-failed") {
			t.Errorf("a killed virtiofsd is not reported (inspect, events):\n%s", f)
		}
		if Field(f, "RF-RO-AFTER-FAIL") != "1" || Field(f, "RF-RO-LS-AFTER-FAIL") != "1" || !strings.Contains(f, "Input/output error") {
			t.Errorf("reading the failed share did not fail with EIO at once:\n%s", f)
		}
		if Field(f, "RF-RW-STILL") != "0" || Field(f, "RF-RW-STILL-AFTER") != "0" {
			t.Errorf("the other share stopped working:\n%s", f)
		}
	})
	t.Run("destroy", func(t *testing.T) {
		d := secs["destroy"]
		if Field(d, "RF-STATUS") != "0" || Field(d, "RF-VIEWS-BEFORE") != "1" || Field(d, "RF-VIEWS-AFTER") != "0" || Field(d, "RF-VIRTIOFSD-LEFT") != "none" {
			t.Errorf("destroy left virtiofsd or the read-only view behind:\n%s\nserve log:\n%s", d, secs["serve-log"])
		}
	})
}
