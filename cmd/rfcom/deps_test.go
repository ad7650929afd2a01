package main

import (
	"os/exec"
	"strings"
	"testing"
)

// guestABI is the one package under vmm/ that guest programs may link: the
// shared-memory device's ABI, definitions only.
const guestABI = "rainforest/vmm/shmem/abi"

// goTool returns the go command (go test puts GOROOT/bin first on PATH).
func goTool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go command: %v", err)
	}
	return p
}

// The guest tool links nothing of the host: not the device model
// (vmm/shmem), not the PCI model (vmm/pci), nothing else under vmm/ but
// the ABI leaf, which itself imports nothing of the module.
func TestGuestLinksNoHostCode(t *testing.T) {
	goCmd := goTool(t)
	out, err := exec.Command(goCmd, "list", "-deps", "rainforest/cmd/rfcom").Output()
	if err != nil {
		t.Fatalf("go list -deps rainforest/cmd/rfcom: %v", err)
	}
	sawABI := false
	for _, pkg := range strings.Fields(string(out)) {
		switch {
		case pkg == guestABI:
			sawABI = true
		case pkg == "rainforest/vmm" || strings.HasPrefix(pkg, "rainforest/vmm/"):
			t.Errorf("the guest tool links host-only package %s", pkg)
		}
	}
	if !sawABI {
		t.Errorf("the guest tool does not link %s; is this test still checking the right thing?", guestABI)
	}
	out, err = exec.Command(goCmd, "list", "-deps", guestABI).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", guestABI, err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "rainforest/") && pkg != guestABI {
			t.Errorf("%s imports %s: the ABI must stay a leaf", guestABI, pkg)
		}
	}
}
