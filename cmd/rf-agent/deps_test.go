package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The agent links only its own packages of the module (no host code:
// not the VMM, the supervisor or the ledger), and the protocol package,
// which the supervisor links too, is a leaf.
func TestAgentDeps(t *testing.T) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go command: %v", err)
	}
	allowed := map[string]bool{
		"rainforest/cmd/rf-agent":        true,
		"rainforest/internal/agent":      true,
		"rainforest/internal/agentproto": true,
		"rainforest/internal/procstat":   true,
		"rainforest/internal/buildinfo":  true,
		"rainforest/internal/units":      true, // CPU lists; standard library only
	}
	out, err := exec.Command(goCmd, "list", "-deps", "rainforest/cmd/rf-agent").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "rainforest/") && !allowed[pkg] {
			t.Errorf("rf-agent links %s", pkg)
		}
	}
	out, err = exec.Command(goCmd, "list", "-deps", "rainforest/internal/agentproto").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "rainforest/") && pkg != "rainforest/internal/agentproto" {
			t.Errorf("agentproto imports %s: it must stay a leaf", pkg)
		}
	}
}
