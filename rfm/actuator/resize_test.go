package actuator

import (
	"errors"
	"path/filepath"
	"testing"
)

func TestSetCoresV1(t *testing.T) {
	root := fakeV1(t)
	writeFiles(t, root, map[string]string{"cpuset/cpuset.cpus": "0-5\n"})
	a := newFake(t, root)
	if _, err := a.CreateGroup("vm1", []int{1}, []int{0}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateGroup("vm2", []int{2}, []int{0}); err != nil {
		t.Fatal(err)
	}
	cs := filepath.Join(root, "cpuset", "rainforest")
	// The parent was copied from the root (0-5); narrow it to see it widen.
	writeFiles(t, root, map[string]string{"cpuset/rainforest/cpuset.cpus": "1-2\n"})
	if err := a.SetCores("vm1", []int{1, 3, 4}); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{
		cs + "/cpuset.cpus":     "1-4",
		cs + "/vm1/cpuset.cpus": "1,3-4",
		cs + "/vm2/cpuset.cpus": "2",
	} {
		if got := readFile(t, file); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	if err := a.SetCores("vm1", []int{2, 3}); !errors.Is(err, ErrOverlap) {
		t.Errorf("taking vm2's core: %v, want ErrOverlap", err)
	}
	if got := readFile(t, cs+"/vm1/cpuset.cpus"); got != "1,3-4" {
		t.Errorf("refused change wrote %q", got)
	}
	if err := a.SetCores("vm1", []int{4}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, cs+"/vm1/cpuset.cpus"); got != "4" {
		t.Errorf("shrunk to %q, want 4", got)
	}
	for _, bad := range []struct {
		name  string
		cores []int
		want  error
	}{{"vm1", nil, ErrInvalid}, {"vm1", []int{-1}, ErrInvalid}, {"nope", []int{5}, ErrNotFound}, {"Bad/Name", []int{5}, ErrInvalid}} {
		if err := a.SetCores(bad.name, bad.cores); !errors.Is(err, bad.want) {
			t.Errorf("SetCores(%q, %v) = %v, want %v", bad.name, bad.cores, err, bad.want)
		}
	}
}

func TestSetCoresV2Partition(t *testing.T) {
	root := fakeV2(t)
	a := newFake(t, root)
	if _, err := a.CreateGroup("vm1", []int{1}, []int{0}); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(root, "rainforest")
	if err := a.SetCores("vm1", []int{1, 2}); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{
		p + "/cpuset.cpus.exclusive":     "1-2",
		p + "/vm1/cpuset.cpus.exclusive": "1-2",
		p + "/vm1/cpuset.cpus":           "1-2",
	} {
		if got := readFile(t, file); got != want {
			t.Errorf("grown: %s = %q, want %q", file, got, want)
		}
	}
	if err := a.SetCores("vm1", []int{2}); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{
		p + "/cpuset.cpus.exclusive":     "2",
		p + "/vm1/cpuset.cpus.exclusive": "2",
		p + "/vm1/cpuset.cpus":           "2",
	} {
		if got := readFile(t, file); got != want {
			t.Errorf("shrunk: %s = %q, want %q", file, got, want)
		}
	}
}
