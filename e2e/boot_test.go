package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// bootScript boots the default image several ways in one session; each part
// ends with "RF-STATUS <vmm exit status>".
const bootScript = `
hp=/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages
free_before=$(cat $hp)
boot() { name=$1; shift; echo "== $name"; timeout 180 "$RFM" vmm --name "$name" --initrd "$L2/initramfs.cpio.gz" --console stdio --log-level info "$@"; echo "RF-STATUS $?"; }
boot pvh --kernel "$L2/vmlinux" --cores 0-1 --memory 512M --disk "$L2/disk.img,ro" --append "rf.cat=/hello.txt rf.poweroff=1"
boot bzimage --kernel "$L2/bzImage" --cores 0-1 --memory 512M --disk "$L2/disk.img,ro" --append "rf.cat=/hello.txt rf.poweroff=1"
boot intx --kernel "$L2/vmlinux" --cores 0-1 --memory 512M --disk "$L2/disk.img,ro" --append 'pci=nomsi rf.cat=/hello.txt rf.cmd="grep virtio /proc/interrupts" rf.poweroff=1'
boot status --kernel "$L2/vmlinux" --cores 1 --memory 256M --append 'rf.cmd="exit 3" rf.poweroff=1'
boot reboot --kernel "$L2/vmlinux" --cores 0 --memory 256M --append 'rf.cmd="echo RF-HVC-$((2*3)) >/dev/hvc0; reboot -f"'
boot badcores --kernel "$L2/vmlinux" --cores 0,0 --memory 256M
boot nokernel --kernel "$L2/missing" --cores 0 --memory 256M
echo "== attach"
timeout 180 "$RFM" vmm --name attach --kernel "$L2/vmlinux" --initrd "$L2/initramfs.cpio.gz" --cores 0 --memory 256M --console none --console-socket /tmp/c.sock &
vmm=$!
i=0; while [ ! -S /tmp/c.sock ] && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done
"$RFM" console /tmp/c.sock </dev/null >/tmp/attach.out &
i=0; while ! grep -q RF-MEMTOTAL /tmp/attach.out && [ $i -lt 180 ]; do sleep 1; i=$((i+1)); done
sleep 2
printf 'echo RF-ATTACHED-$((6*7))\npoweroff -f\n' | "$RFM" console /tmp/c.sock >/dev/null
wait $vmm
echo "RF-STATUS $?"
sleep 1
cat /tmp/attach.out
echo "== hugepages-left"
echo "RF-FREE-BEFORE $free_before"
echo "RF-FREE-AFTER $(cat $hp)"
`

func repoRoot(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(wd)
}

func imagesDir(t *testing.T) string {
	if d := os.Getenv("RF_IMAGES"); d != "" {
		return d
	}
	return filepath.Join(repoRoot(t), "build", "images")
}

// TestBootDebian boots the unmodified Debian cloud kernel (as PVH vmlinux
// and as bzImage) with 2 vCPUs and 512 MiB, checks that it sees both CPUs
// and its memory, reads a file from the virtio-blk disk and powers off with
// the VMM exiting 0; that the same works with the virtio drivers on legacy
// INTx interrupts (pci=nomsi); that the guest's exit status becomes the VMM's; and that
// bad input fails with one clear line.
func TestBootDebian(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	h := newTestHost(ctx, t, 2)
	start := time.Now()
	out, status, err := h.Run(ctx, bootScript, 8*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("session took %v, script status %d", time.Since(start).Round(time.Second), status)
	secs := Sections(out)
	for _, name := range []string{"pvh", "bzimage"} {
		s := secs[name]
		t.Run(name, func(t *testing.T) {
			if !strings.Contains(s, "RF-INIT-REACHED") {
				t.Fatalf("guest never reached /init:\n%s", s)
			}
			if got := Field(s, "RF-CPUS"); got != "2 2" {
				t.Errorf("guest CPUs = %q, want \"2 2\"", got)
			}
			kb, _ := strconv.Atoi(Field(s, "RF-MEMTOTAL-KB"))
			if kb < 400<<10 || kb > 512<<10 {
				t.Errorf("guest MemTotal = %d kB, want between 400 and 512 MiB", kb)
			}
			if !strings.Contains(s, "hello from virtio-blk") {
				t.Errorf("file from the virtio-blk disk not read:\n%s", s)
			}
			if got := Field(s, "RF-STATUS"); got != "0" {
				t.Errorf("VMM exit status %q, want 0", got)
			}
		})
	}
	// With pci=nomsi the virtio drivers fall back to INTx: INTA# of each
	// slot, routed by the DSDT's _PRT to IOAPIC GSI 16 + slot%8.
	t.Run("intx", func(t *testing.T) {
		s := secs["intx"]
		if !strings.Contains(s, "hello from virtio-blk") {
			t.Errorf("file from the virtio-blk disk not read over INTx:\n%s", s)
		}
		if got := Field(s, "RF-STATUS"); got != "0" {
			t.Errorf("VMM exit status %q, want 0:\n%s", got, s)
		}
		// /proc/interrupts: the virtio functions' handlers sit on
		// level-triggered (fasteoi) IO-APIC pins 16..23, none on MSI.
		var intx int
		for _, l := range strings.Split(s, "\n") {
			if !strings.Contains(l, "virtio") {
				continue
			}
			if strings.Contains(l, "MSI") {
				t.Errorf("virtio interrupt on MSI with pci=nomsi: %s", l)
			}
			if strings.Contains(l, "IO-APIC") && strings.Contains(l, "fasteoi") {
				intx++
			}
		}
		if intx == 0 {
			t.Errorf("no virtio interrupt on a level-triggered IO-APIC pin in /proc/interrupts:\n%s", s)
		}
	})
	t.Run("guest-exit-status", func(t *testing.T) {
		if got := Field(secs["status"], "RF-STATUS"); got != "3" {
			t.Errorf("VMM exit status %q, want the guest's 3:\n%s", got, secs["status"])
		}
	})
	t.Run("reboot-and-virtio-console", func(t *testing.T) {
		s := secs["reboot"]
		if !strings.Contains(s, "reason=reboot") {
			t.Errorf("guest reboot did not end the VMM as a reboot:\n%s", s)
		}
		if got := Field(s, "RF-STATUS"); got != "0" {
			t.Errorf("VMM exit status %q after reboot, want 0", got)
		}
		if !strings.Contains(s, "RF-HVC-6") {
			t.Errorf("output written to the virtio-console (hvc0) did not reach the console:\n%s", s)
		}
	})
	for name, want := range map[string]string{"badcores": "CPU 0 is listed twice", "nokernel": "kernel:"} {
		t.Run(name, func(t *testing.T) {
			s := secs[name]
			if got := Field(s, "RF-STATUS"); got != "2" {
				t.Errorf("VMM exit status %q, want 2:\n%s", got, s)
			}
			if !strings.Contains(s, want) {
				t.Errorf("error does not say %q:\n%s", want, s)
			}
		})
	}
	t.Run("console-attach", func(t *testing.T) {
		s := secs["attach"]
		if !strings.Contains(s, "RF-ATTACHED-42") {
			t.Errorf("input typed through rfm console did not reach the guest shell:\n%s", s)
		}
		if got := Field(s, "RF-STATUS"); got != "0" {
			t.Errorf("VMM exit status %q, want 0", got)
		}
	})
	t.Run("nothing-left-behind", func(t *testing.T) {
		s := secs["hugepages-left"]
		before, after := Field(s, "RF-FREE-BEFORE"), Field(s, "RF-FREE-AFTER")
		if before == "" || before == "0" || before != after {
			t.Errorf("free 2 MiB hugepages before the VMMs ran %q, after they all exited %q", before, after)
		}
	})
}

// newTestHost prepares the end-to-end host for test t (skipping where it
// cannot run, failing instead under RF_REQUIRE_KVM=1), with the console log
// in build/e2e/<test>.log and an L1 of cpus vCPUs where nested.
func newTestHost(ctx context.Context, t *testing.T, cpus int) *Host {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("RF_REQUIRE_KVM") == "1" {
			t.Fatal("end-to-end tests need root")
		}
		t.Skip("end-to-end tests need root (KVM, hugepages, nested QEMU)")
	}
	if _, err := os.Stat(filepath.Join(imagesDir(t), "vmlinux")); err != nil && os.Getenv("RF_REQUIRE_KVM") != "1" {
		t.Skipf("no image in %s (make image): %v", imagesDir(t), err)
	}
	logPath := filepath.Join(repoRoot(t), "build", "e2e", t.Name()+".log")
	log, err := createLog(logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close() })
	t.Logf("console log: %s", logPath)
	h, err := NewHost(ctx, repoRoot(t), imagesDir(t), t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	h.CPUs = cpus
	h.Retried = func(err error) {
		t.Logf("NOTE: the nested L1 guest died, froze or went silent; the session was rerun: %v", err)
	}
	t.Logf("nested=%v %s", h.KVM.Nested, h.KVM.Why)
	return h
}

func createLog(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	return os.Create(path)
}
