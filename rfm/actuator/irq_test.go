package actuator

import (
	"errors"
	"path/filepath"
	"testing"
)

func TestSteerIRQs(t *testing.T) {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{
		"cpuset/cpuset.cpus":                  "0-3",
		"cpuset/cpuset.mems":                  "0",
		"sys/devices/system/cpu/online":       "0-3\n",
		"proc/irq/1/smp_affinity_list":        "0-3\n",
		"proc/irq/2/smp_affinity_list":        "2\n",
		"proc/irq/3/smp_affinity_list":        "0\n",
		"proc/irq/4/smp_affinity_list/x":      "", // unreadable: a directory
		"proc/irq/default_smp_affinity":       "f\n",
		"proc/irq/notanirq/smp_affinity_list": "2\n",
	})
	a := newFake(t, root)
	restore, err := a.SteerIRQs([]int{2, 3})
	if err != nil {
		t.Fatal(err)
	}
	irq := filepath.Join(root, "proc/irq")
	for file, want := range map[string]string{
		"1/smp_affinity_list":        "0-1",
		"2/smp_affinity_list":        "0-1", // nothing left: every allowed CPU
		"3/smp_affinity_list":        "0",
		"default_smp_affinity":       "3",
		"notanirq/smp_affinity_list": "2",
	} {
		if got := readFile(t, filepath.Join(irq, file)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{
		"1/smp_affinity_list":  "0-3",
		"2/smp_affinity_list":  "2",
		"3/smp_affinity_list":  "0",
		"default_smp_affinity": "f",
	} {
		if got := readFile(t, filepath.Join(irq, file)); got != want {
			t.Errorf("restored %s = %q, want %q", file, got, want)
		}
	}
	if _, err := a.SteerIRQs([]int{0, 1, 2, 3}); !errors.Is(err, ErrNoCPUsLeft) {
		t.Errorf("avoid all: %v, want ErrNoCPUsLeft", err)
	}
	if got := readFile(t, filepath.Join(irq, "1/smp_affinity_list")); got != "0-3" {
		t.Errorf("failed steer changed irq 1: %q", got)
	}
}
