package main

import (
	"fmt"
	"strconv"
	"strings"

	"rainforest/bench/net/sample"
	"rainforest/internal/shquote"
	"rainforest/vmm"
)

// Rows, in the order measured and shown.
const (
	RowHost      = "host"       // the L1 host's own loopback
	RowRFloop    = "rfloop"     // two subOSes on an RFloop (shared-memory) network
	RowRFtun     = "rftun"      // two subOSes on a TAP bridge (the VMM's virtio-net)
	RowQEMUVhost = "qemu-vhost" // two QEMU guests, virtio-net + vhost-net on a bridge
	RowUplink    = "uplink"     // subOS --net user (gVisor netstack) -> iperf3 on the host
	RowSlirp     = "slirp"      // QEMU -netdev user (slirp) -> iperf3 on the host
)

// Rows are all rows in order.
func Rows() []string {
	return []string{RowHost, RowRFloop, RowRFtun, RowQEMUVhost, RowUplink, RowSlirp}
}

// Nested L1 sizing: four guests of guestMiB each (two subOSes and two
// QEMU guests, booting side by side); the subOSes on 2 MiB hugepages,
// QEMU's in plain memory; L1's initramfs holds QEMU, the tools and the L2
// kernel.
const (
	nestedCPUs      = 3
	nestedMemoryMiB = 5120
	guestMiB        = 512
	nestedHugePages = 2*guestMiB/2 + 40
)

// Addresses. The RFloop members get theirs from the supervisor (in member
// order); the bridge addresses are set in the guests by MAC.
const (
	loopNet     = "lan0"
	loopAddrB   = "10.99.0.3"
	tunBridge   = "rfbr0"
	tunHost     = "10.77.0.1/24"
	tunAddrA    = "10.77.0.2/24"
	tunAddrB    = "10.77.0.3/24"
	tunMACA     = "52:54:00:77:00:02"
	tunMACB     = "52:54:00:77:00:03"
	qemuBridge  = "rfq0"
	qemuAddrA   = "10.78.0.2/24"
	qemuAddrB   = "10.78.0.3/24"
	qemuMACA    = "52:54:00:78:00:02"
	qemuMACB    = "52:54:00:78:00:03"
	qemuCIDA    = 3
	qemuCIDB    = 4
	uplinkAddr  = "10.0.2.2" // the host (its loopback) as the uplink and slirp guests see it
	slirpMAC    = "52:54:00:79:00:02"
	vsockModule = "vhost_vsock"
)

// sessionPlan is what the L1 script does.
type sessionPlan struct {
	runs, secs int
	// loop tries the RFloop network (--net loop=...); when the
	// supervisor refuses it, the subOSes are made without it and the
	// row is skipped.
	loop bool
	// qemu measures the QEMU rows.
	qemu bool
	// commands are the command lines, by step, for the report.
	commands map[string]string
}

// sessionPaths are where the script's programs and images are.
type sessionPaths struct {
	rfm, rfnet, kernel, initrd, qemu, qemuData string
	// disks are the Debian disk copies: subOS a, b, QEMU a, b.
	disks [4]string
}

func (p *sessionPlan) record(step string, s string) string {
	if p.commands == nil {
		p.commands = map[string]string{}
	}
	p.commands[step] = s
	return s
}

// rfnetCmd is the measurer's command line for a row.
func (p *sessionPlan) rfnetCmd(paths sessionPaths, row, addr, server, client string) string {
	argv := []string{paths.rfnet, "-rfm", paths.rfm, "-row", row, "-addr", addr, "-server", server, "-client", client,
		"-n", strconv.Itoa(p.runs), "-secs", strconv.Itoa(p.secs)}
	return p.record("measure "+row, shquote.Join(argv))
}

// diskVars are the script's variables that hold the Debian disks.
func diskVars() [4]string { return [4]string{"DEB_A", "DEB_B", "DEB_QA", "DEB_QB"} }

// expandDisks makes the disk variables in a command line that
// shquote.Join single-quoted expand again: each $VAR inside a quoted word
// becomes '"$VAR"'.
func expandDisks(cmd string) string {
	for _, v := range diskVars() {
		cmd = strings.ReplaceAll(cmd, "$"+v, `'"$`+v+`"'`)
	}
	return cmd
}

// setAddr is the guest command that gives the NIC with mac the address
// cidr.
func setAddr(mac, cidr string) string {
	return shquote.Join([]string{"sh", "-c", `for d in /sys/class/net/*; do if [ "$(cat $d/address)" = ` + mac +
		` ]; then ip addr add ` + cidr + ` dev ${d##*/} && ip link set ${d##*/} up && echo "address ` + cidr + ` on ${d##*/}"; fi; done`})
}

// subOSCreate is the rfm create command of subOS name on core core, with
// its NICs.
func subOSCreate(paths sessionPaths, name string, core int, disk string, nets []string) string {
	argv := []string{paths.rfm, "create", name, "--cores", strconv.Itoa(core), "--memory", strconv.Itoa(guestMiB) + "M",
		"--disk", disk, "--append", "root=/dev/vda"}
	for _, n := range nets {
		argv = append(argv, "--net", n)
	}
	return expandDisks(shquote.Join(argv))
}

// qemuArgv is a QEMU guest's command line: the subOS's kernel,
// initramfs and Debian disk, on core core, a virtio-net NIC (vhost-net)
// on a TAP, the agent's vsock device, and (slirp) a second NIC on QEMU's
// user networking.
func qemuArgv(paths sessionPaths, name string, core int, disk, mac string, cid int, slirp bool) []string {
	argv := []string{"taskset", "-c", strconv.Itoa(core), paths.qemu, "-M", "pc", "-enable-kvm", "-cpu", "host",
		"-smp", "1", "-m", strconv.Itoa(guestMiB) + "M", "-nodefaults", "-no-user-config", "-nographic",
		"-serial", "file:/tmp/" + name + ".console", "-L", paths.qemuData, "-name", name,
		"-kernel", paths.kernel, "-initrd", paths.initrd, "-append", vmm.DefaultCmdline("root=/dev/vda"),
		"-drive", "file=" + disk + ",format=raw,if=virtio,cache=none",
		"-netdev", "tap,id=t0,ifname=" + name + "t0,script=no,downscript=no,vhost=on",
		"-device", "virtio-net-pci,netdev=t0,mac=" + mac + ",romfile=",
		"-device", "vhost-vsock-pci,guest-cid=" + strconv.Itoa(cid)}
	if slirp {
		argv = append(argv, "-netdev", "user,id=u0", "-device", "virtio-net-pci,netdev=u0,mac="+slirpMAC+",romfile=")
	}
	return argv
}

// info prints an info line from the script.
func info(row string, kv ...string) string {
	var b strings.Builder
	b.WriteString("echo " + sample.InfoPrefix + " row=" + row)
	for i := 0; i+1 < len(kv); i += 2 {
		b.WriteString(" " + kv[i] + "=" + kv[i+1])
	}
	return b.String() + "\n"
}

// script renders the L1 script.
func (p *sessionPlan) script(paths sessionPaths) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	q := shquote.Quote
	rfm := q(paths.rfm)
	rfnet := q(paths.rfnet)
	w("set -u\n")
	w("grep -q ' /sys/fs/cgroup ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup\n")
	w("ip link set lo up\n")
	w("export RF_IMAGES=%s\n", q(dirOf(paths.kernel)))
	b.WriteString(info("", "kernel", "$(uname -r)", "cpus", "$(nproc)", "iperf3", `"\"$(iperf3 --version | head -n 1)\""`,
		"sockperf", `"\"$(sockperf --version 2>&1 | head -n 1 | tr -d '\"')\""`))
	w("%s serve --housekeeping 0 >/tmp/serve.log 2>&1 & serve=$!\n", rfm)
	w("i=0; while ! %s ps >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done\n", rfm)
	w("healthy() { i=0; while ! %s inspect \"$1\" -o json | grep -q '\"state\": \"healthy\"' && [ $i -lt 600 ]; do sleep 1; i=$((i+1)); done; }\n", rfm)
	w("fail() { echo \"== $1 failed; supervisor log\"; tail -n 30 /tmp/serve.log; }\n")

	w("echo '== host loopback'\n")
	w("%s || fail host\n", p.rfnetCmd(paths, RowHost, "127.0.0.1", "local", "local"))

	w("echo '== subOSes'\n")
	tunA := "bridge=" + tunBridge + ",create,address=" + tunHost + ",mac=" + tunMACA
	tunB := "bridge=" + tunBridge + ",mac=" + tunMACB
	up := "user,host-loopback"
	// a names the loop network's members, b joins it by its name.
	plain := func(loop bool) string {
		var la, lb []string
		if loop {
			la, lb = []string{"loop=" + loopNet + ",members=a+b"}, []string{"loop=" + loopNet}
		}
		return p.record("create", subOSCreate(paths, "a", 1, paths.disks[0], append(la, tunA, up))+" && "+
			subOSCreate(paths, "b", 2, paths.disks[1], append(lb, tunB)))
	}
	if p.loop {
		w("loop=1\n")
		w("if ! { %s; } 2>/tmp/loop.err; then\n", plain(true))
		w("  %s destroy a b >/dev/null 2>&1\n", rfm)
		w("  loop=0; %s\n", info(RowRFloop, "skipped", `"\"rfm create --net loop=lan0,members=a+b: $(head -c 300 /tmp/loop.err | tr '\n"' '  ')\""`))
		w("  %s || fail create\n", plain(false))
		w("fi\n")
	} else {
		w("loop=0\n%s || fail create\n", plain(false))
		b.WriteString(info(RowRFloop, "skipped", `"\"-rfloop=false\""`))
	}
	w("t0=$(date +%%s); healthy a; healthy b; echo \"agents healthy after $(( $(date +%%s) - t0 )) s\"\n")
	w("for n in a b; do %s inspect $n -o json | grep -q '\"state\": \"healthy\"' || { echo \"== $n not healthy; its console\"; %s logs $n | tail -n 25; }; done\n", rfm, rfm)
	for _, n := range []string{"a", "b"} {
		w("%s exec %s -- timeout 180 systemctl is-system-running --wait\n", rfm, n)
	}
	w("echo \"systems running after $(( $(date +%%s) - t0 )) s\"\n")
	w("%s exec a -- %s\n", rfm, setAddr(tunMACA, tunAddrA))
	w("%s exec b -- %s\n", rfm, setAddr(tunMACB, tunAddrB))
	w("%s exec a -- ip -br addr\n", rfm)
	// rfm inspect's nets (NICInfo: id, tap, vhost) say who serves each
	// TAP NIC: on (vhost-net), ready, fallback, off (the VMM).
	w("vh=$(%s inspect a -o json | tr -d ' \\n' | grep -o '\"tap\":\"[^\"]*\",\"vhost\":\"[a-z]*\"' | tr -d '\"' | tr '\\n' ' ')\n", rfm)
	b.WriteString(info(RowRFtun, "vhost", `"\"${vh:-not reported by rfm inspect}\""`))
	w("if [ $loop = 1 ]; then %s || fail rfloop; fi\n", p.rfnetCmd(paths, RowRFloop, loopAddrB, "rfm:b", "rfm:a"))
	w("%s || fail rftun\n", p.rfnetCmd(paths, RowRFtun, strings.Split(tunAddrB, "/")[0], "rfm:b", "rfm:a"))
	w("%s || fail uplink\n", p.rfnetCmd(paths, RowUplink, uplinkAddr, "local", "rfm:a"))
	w("%s destroy a b\n", rfm)

	// The QEMU guests boot once the subOSes are gone: nested, four guests
	// of L1's emulated KVM at once have crashed L1 (a stack guard page
	// hit in its page fault handler), so no more than two run together.
	if p.qemu {
		w("echo '== QEMU guests start'\n")
		w("ip link add %s type bridge && ip link set %s up\n", qemuBridge, qemuBridge)
		qa := expandDisks(shquote.Join(qemuArgv(paths, "qa", 1, paths.disks[2], qemuMACA, qemuCIDA, true)))
		qb := expandDisks(shquote.Join(qemuArgv(paths, "qb", 2, paths.disks[3], qemuMACB, qemuCIDB, false)))
		p.record("qemu a", qa)
		p.record("qemu b", qb)
		w("%s >/tmp/qa.log 2>&1 & qa=$!\n", qa)
		w("%s >/tmp/qb.log 2>&1 & qb=$!\n", qb)
		w("tq=$(date +%%s)\n")
		w("for t in qat0 qbt0; do i=0; while [ ! -e /sys/class/net/$t ] && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done; ip link set $t master %s up; done\n", qemuBridge)
		for _, g := range []struct {
			name      string
			cid       int
			mac, addr string
		}{{"qa", qemuCIDA, qemuMACA, qemuAddrA}, {"qb", qemuCIDB, qemuMACB, qemuAddrB}} {
			w("%s -exec vsock:%d -wait 600s -- true || { echo '== %s: no agent; its console'; tail -n 25 /tmp/%s.console; }\n", rfnet, g.cid, g.name, g.name)
			w("%s -exec vsock:%d -- timeout 180 systemctl is-system-running --wait\n", rfnet, g.cid)
			w("%s -exec vsock:%d -- %s\n", rfnet, g.cid, setAddr(g.mac, g.addr))
		}
		w("echo \"QEMU guests running $(( $(date +%%s) - tq )) s after their start\"\n")
		w("echo '== QEMU guests'\n")
		w("%s -exec vsock:%d -- ip -br addr\n", rfnet, qemuCIDA)
		w("echo \"%s row=%s vhost_net_fds=$(ls -l /proc/$qa/fd /proc/$qb/fd 2>/dev/null | grep -c vhost-net)\"\n", sample.InfoPrefix, RowQEMUVhost)
		w("%s || fail qemu-vhost\n", p.rfnetCmd(paths, RowQEMUVhost, strings.Split(qemuAddrB, "/")[0], fmt.Sprintf("vsock:%d", qemuCIDB), fmt.Sprintf("vsock:%d", qemuCIDA)))
		w("%s || fail slirp\n", p.rfnetCmd(paths, RowSlirp, uplinkAddr, "local", fmt.Sprintf("vsock:%d", qemuCIDA)))
		w("kill $qa $qb; wait $qa $qb 2>/dev/null\n")
		w("echo '== QEMU logs'; tail -n 5 /tmp/qa.log /tmp/qb.log\n")
	} else {
		b.WriteString(info(RowQEMUVhost, "skipped", `"\"-qemu-guests=false\""`))
		b.WriteString(info(RowSlirp, "skipped", `"\"-qemu-guests=false\""`))
	}
	w("kill $serve; wait $serve 2>/dev/null\n")
	w("echo '== supervisor log'; tail -n 15 /tmp/serve.log\n")
	w("exit 0\n")
	return b.String()
}

func dirOf(p string) string {
	if i := strings.LastIndexByte(p, '/'); i > 0 {
		return p[:i]
	}
	return "/"
}
