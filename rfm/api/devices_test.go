package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"rainforest/partitioner"
	"rainforest/rfm/supervisor"
)

// untouchable is an actuator and launcher that fails the test if the
// supervisor gets as far as using it.
type untouchable struct{ t *testing.T }

func (u untouchable) CreateGroup(string, []int, []int) (supervisor.Group, error) {
	u.t.Error("CreateGroup called")
	return nil, errors.New("untouchable")
}
func (u untouchable) RemoveGroup(string) error { return nil }
func (u untouchable) SetCores(string, []int) error {
	u.t.Error("SetCores called")
	return errors.New("untouchable")
}
func (u untouchable) EnsureHugePages(int, uint64, uint64) (uint64, error) {
	u.t.Error("EnsureHugePages called")
	return 0, errors.New("untouchable")
}
func (u untouchable) ReleaseHugePages(int, uint64, uint64) error       { return nil }
func (u untouchable) PoolSize(int, uint64) (uint64, error)             { return 0, nil }
func (u untouchable) Groups() ([]string, error)                        { return nil, nil }
func (u untouchable) KillGroup(context.Context, string) ([]int, error) { return nil, nil }
func (u untouchable) Start(context.Context, []string, string, []*os.File, func(int) error) (supervisor.Process, error) {
	u.t.Error("Start called")
	return nil, errors.New("untouchable")
}
func (u untouchable) Adopt(int, uint64) (supervisor.Process, error) {
	return nil, errors.New("untouchable")
}

// A create or check naming a PCI device gets a 422 problem naming the
// field, through a real supervisor, and nothing is reserved: passthrough
// does not exist yet.
func TestDevicesRefused(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	inv := &partitioner.Inventory{
		CPUs: []partitioner.CPU{{ID: 0, Online: true, Node: 0, Siblings: []int{0}}, {ID: 1, Online: true, Core: 1, Node: 0, Siblings: []int{1}}},
		Nodes: []partitioner.Node{{ID: 0, CPUs: []int{0, 1}, MemTotal: 1 << 30, MemFree: 1 << 30,
			HugePages: []partitioner.HugePool{{PageSize: 2 << 20, Total: 16, Free: 16}}}},
		Devices: []partitioner.PCIDevice{{Address: "0000:03:00.0", Driver: "vfio-pci", IOMMUGroup: 3, Node: 0}},
	}
	sup, err := supervisor.New(supervisor.Config{StateDir: dir, RunDir: filepath.Join(dir, "run"), Inventory: inv,
		Actuator: untouchable{t}, Launcher: untouchable{t}})
	if err != nil {
		t.Fatal(err)
	}
	defer sup.Close()
	h := Handler(sup)
	body := `{"name": "a", "cpus": 1, "memory": 4194304, "kernel": "` + kernel + `", "devices": ["0000:03:00.0"]}`
	const want = "PCI passthrough is not supported yet; nothing would attach 0000:03:00.0"

	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("POST", "/v1/subos", strings.NewReader(body)))
	var eb ErrorBody
	if err := json.Unmarshal(w.Body.Bytes(), &eb); err != nil || w.Code != http.StatusUnprocessableEntity ||
		len(eb.Problems) != 1 || eb.Problems[0].Field != "devices[0]" || eb.Problems[0].Message != want {
		t.Errorf("create: %d %s; want 422 with devices[0]: %s", w.Code, w.Body.String(), want)
	}

	w = httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("POST", "/v1/check", strings.NewReader(body)))
	var cr CheckResult
	if err := json.Unmarshal(w.Body.Bytes(), &cr); err != nil || w.Code != http.StatusOK || cr.OK ||
		len(cr.Problems) != 1 || cr.Problems[0].Field != "devices[0]" || cr.Problems[0].Message != want {
		t.Errorf("check: %d %s; want one problem devices[0]: %s", w.Code, w.Body.String(), want)
	}

	if o := sup.Ledger().DeviceOwner("0000:03:00.0"); o != "" || len(sup.Ledger().Allocations()) != 0 || len(sup.List()) != 0 {
		t.Errorf("left behind: device owner %q, allocations %v, subOSes %v", o, sup.Ledger().Allocations(), sup.List())
	}
}
