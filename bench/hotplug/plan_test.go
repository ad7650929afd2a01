package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"rainforest/bench/hotplug/hotmeasure"
	"rainforest/bench/hotplug/report"
	"rainforest/bench/internal/benchkit"
	"rainforest/bench/internal/guestconsole"
	"rainforest/bench/internal/qemuguest"
	"rainforest/internal/kvmhost"
	"rainforest/internal/nested"
	"rainforest/internal/qemubundle"
)

func testPlan() *benchPlan {
	return &benchPlan{runs: 2, qemuCPU: "host", settle: time.Second, opTimeout: time.Minute, runTimeout: 4 * time.Minute}
}

func TestScript(t *testing.T) {
	p := testPlan()
	s := p.script()
	var order []string
	for _, l := range strings.Split(s, "\n") {
		if m := regexp.MustCompile(`^"\$RFHOTBENCH" -system (\w+) -run (\d+) `).FindStringSubmatch(l); m != nil {
			order = append(order, m[1]+m[2])
		}
	}
	if strings.Join(order, " ") != "rfm1 qemu1 qemu2 rfm2" {
		t.Fatalf("run order %v in\n%s", order, s)
	}
	for _, want := range []string{`"$RFM" serve --housekeeping 0`, `cp "$L2/disk.img" /tmp/hot.img`, "kill $spid"} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks %q:\n%s", want, s)
		}
	}
	rfm, qemu := p.commands[sysRFM], p.commands[sysQEMU]
	for _, want := range []string{"-name hp1 --", "--cores 1", "--memory 256M", `--disk "$L2/disk.img,ro"`, `--kernel "$L2/vmlinux"`, "-hot /tmp/hot.img"} {
		if !strings.Contains(rfm, want) {
			t.Errorf("rfm command lacks %q: %s", want, rfm)
		}
	}
	for _, want := range []string{"-qmp /tmp/qmp-1.sock --", "taskset -c 1", "-M pc,memory-backend=ram", "-enable-kvm", "-smp 1", "-m 256M",
		"mem-path=/dev/hugepages,prealloc=on", "-qmp unix:/tmp/qmp-1.sock,server=on,wait=off", `-drive file="$L2/disk.img",if=none,id=boot,format=raw,readonly=on`,
		"-device virtio-blk-pci,drive=boot", "debug-threads=on", "-hot /tmp/hot.img"} {
		if !strings.Contains(qemu, want) {
			t.Errorf("qemu command lacks %q: %s", want, qemu)
		}
	}
	// Both guests get the same command line: rfm's is the VMM's default
	// with the append.
	if !strings.Contains(rfm, "--append '"+guestAppend+"'") || !strings.Contains(qemu, "-append '"+cmdline()+"'") || !strings.HasSuffix(cmdline(), " "+guestAppend) {
		t.Errorf("command lines differ:\n%s\n%s", rfm, qemu)
	}
	// The guest's command line never holds a marker itself.
	for _, m := range []string{markerReady, markerAdded, markerRemoved} {
		if strings.Contains(cmdline(), m) {
			t.Errorf("the command line holds %s", m)
		}
	}
}

// TestGuestCommand runs the guest's command with a fake /dev/vdb: it
// prints its markers as the device comes and goes.
func TestGuestCommand(t *testing.T) {
	// The guest's shell is busybox ash; bash reads the same.
	var sh []string
	for _, c := range [][]string{{"busybox", "sh"}, {"bash"}} {
		if p, err := exec.LookPath(c[0]); err == nil {
			sh = append([]string{p}, c[1:]...)
			break
		}
	}
	if sh == nil {
		t.Skip("neither busybox nor bash")
	}
	dir := t.TempDir()
	// The command with its paths moved into dir, and a test instead of
	// the block-device test (a test file stands for the device).
	cmd := strings.NewReplacer("/tmp/w", filepath.Join(dir, "w"), "[ -b /dev/vdb ]", "[ -e "+filepath.Join(dir, "vdb")+" ]",
		"[ ! -b /dev/vdb ]", "[ ! -e "+filepath.Join(dir, "vdb")+" ]", "sleep 600", "true").Replace(guestCommand)
	if cmd == guestCommand {
		t.Fatal("no replacement")
	}
	c := exec.Command(sh[0], append(sh[1:], "-c", cmd)...)
	out, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	con := guestconsole.Watch(out, []string{markerReady, markerAdded, markerRemoved}, nil, "")
	ctx := t.Context()
	for _, step := range []struct {
		marker string
		then   func() error
	}{
		{markerReady, func() error { return os.WriteFile(filepath.Join(dir, "vdb"), nil, 0o644) }},
		{markerAdded, func() error { return os.Remove(filepath.Join(dir, "vdb")) }},
		{markerRemoved, func() error { return nil }},
	} {
		if _, err := con.Wait(ctx, step.marker, time.Time{}); err != nil {
			t.Fatalf("%s: %v", step.marker, err)
		}
		if err := step.then(); err != nil {
			t.Fatal(err)
		}
	}
	<-con.Closed()
	if err := c.Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestFiles(t *testing.T) {
	h := &kvmhost.Host{}
	fs, err := files(h, "qemu-system-x86_64", "/w/rfhotbench", "/w/rfm", "/img")
	if err != nil || len(fs) != 3 {
		t.Fatalf("direct: %v %+v", err, fs)
	}
	if _, err := qemuguest.FindBIOS("qemu-system-x86_64"); err != nil {
		t.Skip("no pc BIOS on this host:", err)
	}
	h.Nested = true
	fs, err = files(h, "qemu-system-x86_64", "/w/rfhotbench", "/w/rfm", "/img")
	if err != nil || len(fs) != 4 || fs[3].L1 != qemubundle.GuestDataDir+"/bios-256k.bin" {
		t.Fatalf("nested: %v %+v", err, fs)
	}
}

// TestSessionKeepsWhatCompleted feeds a session's lines as they would
// stream and ends it like an L1 that went silent: what arrived is kept
// and the report is partial.
func TestSessionKeepsWhatCompleted(t *testing.T) {
	var log strings.Builder
	s := newSession(&log, 1)
	stream := []string{
		infoPrefix + " kernel=6.1.0-test cpus=2 hugepages_free=300",
		"[rfm#1] RF-HOT-READY",
		hotmeasure.FormatLine(hotmeasure.Sample{System: sysRFM, Run: 1, Op: hotmeasure.OpAdd, Request: 90 * time.Millisecond, Guest: 900 * time.Millisecond}),
		hotmeasure.FormatLine(hotmeasure.Sample{System: sysRFM, Run: 1, Op: hotmeasure.OpRemove, Request: 300 * time.Millisecond, Guest: 280 * time.Millisecond, Removed: 300 * time.Millisecond}),
		hotmeasure.LinePrefix + " system=qemu op=add run=x",
	}
	for i, l := range stream {
		s.line(l)
		if i == 2 && !strings.Contains(log.String(), "bench/hotplug: [1/4] rfm run 1 add: 900.0 ms (request answered after 90.0 ms, guest after 900.0 ms)\n") {
			t.Fatalf("no progress line after the first sample:\n%s", log.String())
		}
	}
	if !strings.Contains(log.String(), "session started: kernel=6.1.0-test") || !strings.Contains(log.String(), "device gone after 300.0 ms") {
		t.Errorf("log:\n%s", log.String())
	}
	silent := fmt.Errorf("kvmhost: %w for 1m0s", nested.ErrSilent)
	rep := &report.Report{Runs: 1}
	if err := s.finish(rep, silent); !errors.Is(err, nested.ErrSilent) {
		t.Fatalf("finish: %v", err)
	}
	if !rep.Partial || len(rep.Samples) != 2 || len(rep.Summaries) != 4 || !strings.Contains(strings.Join(rep.Notes, "\n"), "unparsed result line") {
		t.Errorf("report %+v", rep)
	}
	var table strings.Builder
	if err := benchkit.WriteReport(&table, rep, report.WriteTable, ""); err != nil || !strings.HasPrefix(table.String(), "PARTIAL: the session ended early") {
		t.Errorf("table (%v):\n%s", err, table.String())
	}
	// A complete session that lacks samples fails.
	if err := newSession(io.Discard, 1).finish(&report.Report{}, nil); err == nil {
		t.Error("no samples: no error")
	}
}
