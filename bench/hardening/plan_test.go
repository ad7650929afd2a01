package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"rainforest/images"
)

func testPlan() *benchPlan {
	return &benchPlan{runs: 2, memoryMiB: 256, diskMiB: 64, diskSeconds: 3, ficmN: 500, runTimeout: 5 * time.Minute, work: "/tmp/rf-hardening"}
}

// The configurations alternate, and only plain has serve flags, all
// from plainServeFlags.
func TestOrderAndFlags(t *testing.T) {
	if order(1) != [2]string{cfgHardened, cfgPlain} || order(2) != [2]string{cfgPlain, cfgHardened} || order(3) != order(1) {
		t.Errorf("order %v %v %v", order(1), order(2), order(3))
	}
	if serveFlags(cfgHardened) != "" || serveFlags(cfgPlain) != plainServeFlags {
		t.Errorf("flags %q %q", serveFlags(cfgHardened), serveFlags(cfgPlain))
	}
}

func TestScript(t *testing.T) {
	s := testPlan().script()
	// The runs in order: h1 p1 p2 h2, each its own supervisor.
	var runs []string
	for _, l := range strings.Split(s, "\n") {
		if r, ok := strings.CutPrefix(l, "echo '== "); ok {
			runs = append(runs, strings.TrimSuffix(r, "'"))
		}
	}
	if strings.Join(runs, ",") != "hardened 1,plain 1,plain 2,hardened 2" {
		t.Errorf("runs %q", runs)
	}
	for _, want := range []string{
		"WORK=/tmp/rf-hardening\nAWAIT=600\n",
		"serve '' h1\n",
		"serve '" + plainServeFlags + "' p2\n",
		`dd if=/dev/urandom of="$WORK/scratch.img" bs=1M count=64`,
		`"$RFLIFECYCLE" -socket "$WORK/rfm.sock" -n 1 -name boot-p2- -kernel "$L2/vmlinux" -initrd "$L2/initramfs.cpio.gz" -cpus 1 -memory-mib 256 -marker ` +
			images.InitReachedMarker + " -timeout 5m0s | tag plain 2 boot\n",
		`rfm create disk-h1 --cores 1 --memory 256M --disk "$WORK/scratch.img" --append 'rf.poweroff=1 rf.cmd="m=RF-DISK; rfcom diskbench --dev /dev/vda --seconds 3 --write --i-know-it-is-scratch; echo $m-DONE; sleep 600"' >/dev/null && await disk-h1 RF-DISK-DONE`,
		"result hardened 1 disk disk-h1 'RF-DISK '\n",
		`rfm create fa-p1 --cores 1 --memory 256M --append 'rf.poweroff=1 rf.cmd="rfcom bench --serve --mode irq --timeout 900s; rfcom bench --serve --mode poll --timeout 900s"'`,
		"rfm create fb-p1 --cores 2 --memory 256M --append 'rf.poweroff=1 rf.cmd=\"m=RF-FICM; i=0; until rfcom bench --to fa-p1 --n 500 --mode irq;",
		"echo $m-DONE; sleep 600\"' >/dev/null && await fb-p1 RF-FICM-DONE\n",
		"result plain 1 ficm fb-p1 'bench: peer [0-9][0-9]* mode'\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks %q", want)
		}
	}
	// The guest's end marker is not in its command line as such.
	if strings.Count(s, "RF-FICM-DONE") != 4 {
		t.Errorf("RF-FICM-DONE %d times", strings.Count(s, "RF-FICM-DONE"))
	}
	if strings.Count(s, "kill $spid; wait $spid") != 4 {
		t.Error("not one supervisor stop per run")
	}
	if sh, err := exec.LookPath("sh"); err == nil {
		f := filepath.Join(t.TempDir(), "s.sh")
		if err := os.WriteFile(f, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(sh, "-n", f).CombinedOutput(); err != nil {
			t.Errorf("sh -n: %v\n%s", err, out)
		}
	}
}

// The helpers tag and fail make the lines parseLine reads: run them with
// sh and parse their output.
func TestScriptHelpersMakeParsableLines(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	// A fake rfm whose logs of any subOS hold an RF-DISK line.
	dir := t.TempDir()
	fake := filepath.Join(dir, "rfm")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\n[ \"$3\" = logs ] && printf 'boot\\r\\nRF-DISK direct=1 seq_read_mbps=7\\r\\n'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	script := "RFM=" + fake + "\nL2=/l2\nWORK=" + dir + "\nAWAIT=3\n" + scriptHead +
		"printf 'RF-DISK direct=1 size_bytes=1 seq_read_mbps=10.5 rand_read_iops=100\\r\\n' | tag plain 3 disk\n" +
		"fail hardened 2 boot 'no line'\n" +
		"result plain 1 ficm fb-p1 'bench: peer [0-9][0-9]* mode'\n" +
		"await disk-h1 'RF-DISK '; result hardened 1 disk disk-h1 'RF-DISK '\n"
	out, err := exec.Command(sh, "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 4 {
		t.Fatalf("output %q", out)
	}
	s, ok, err := parseLine(lines[0])
	if !ok || err != nil || s.Config != cfgPlain || s.Rep != 3 || s.Metric != metricDisk || s.Values["seq_read_mbps"] != 10.5 || !s.OK() {
		t.Errorf("disk line %q: %+v %t %v", lines[0], s, ok, err)
	}
	s, ok, err = parseLine(lines[1])
	if !ok || err != nil || s.Config != cfgHardened || s.Rep != 2 || s.Metric != metricBoot || s.Error != "no line" {
		t.Errorf("fail line %q: %+v %t %v", lines[1], s, ok, err)
	}
	s, ok, err = parseLine(lines[2])
	if !ok || err != nil || s.Metric != metricFICM || !strings.Contains(s.Error, "no 'bench: peer [0-9][0-9]* mode' line in the log of subOS fb-p1") {
		t.Errorf("missing result line %q: %+v %t %v", lines[2], s, ok, err)
	}
	s, ok, err = parseLine(lines[3])
	if !ok || err != nil || s.Config != cfgHardened || s.Metric != metricDisk || s.Values["seq_read_mbps"] != 7 {
		t.Errorf("awaited log line %q: %+v %t %v", lines[3], s, ok, err)
	}
}
