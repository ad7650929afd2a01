package device

import (
	"testing"

	"rainforest/vmm/pci"
	"rainforest/vmm/shmem"
	"rainforest/vmm/shmem/abi"
)

type nopRouter struct{}

func (nopRouter) Route(int, pci.MSIMessage, bool) error { return nil }
func (nopRouter) Fire(int) error                        { return nil }

type nopBell struct{}

func (nopBell) Ring(int, int) error   { return nil }
func (nopBell) StateChanged(uint32)   {}
func (nopBell) InterruptModeChanged() {}
func (nopBell) INTxPending() bool     { return false }

// The guest side parses exactly the config space the VMM's device model
// presents: the two ends of the ABI cannot drift apart.
func TestCapabilityMatchesDeviceModel(t *testing.T) {
	l := abi.Layout{Peers: 3, RWSize: 8192, OutputSize: 16384}
	ident := shmem.Identity{Protocol: abi.ProtocolSegment, Name: "seg.shared-1", RWReadOnly: true}
	dev, err := shmem.NewWithIdentity(1, l, 2, make([]byte, l.StateTableSize()), nopRouter{}, nopBell{}, ident)
	if err != nil {
		t.Fatal(err)
	}
	cfg := make([]byte, 256)
	dev.ReadConfig(0, cfg)
	c, err := parseCapability(cfg)
	if err != nil {
		t.Fatal(err)
	}
	state, rw, out := c.state, c.rw, c.out
	if c.name != ident.Name || c.flags != abi.CapFlagRWReadOnly {
		t.Errorf("parsed name %q flags %#x, device model has %q read-only", c.name, c.flags, ident.Name)
	}
	if cfg[0x09] != abi.ProtocolSegment {
		t.Errorf("class protocol byte %#x", cfg[0x09])
	}
	// A longest name fills the field with no NUL.
	ident.Name = "abcdefghijklmnopqrstuvwxyz012345"
	full, err := shmem.NewWithIdentity(0, l, 1, make([]byte, l.StateTableSize()), nopRouter{}, nopBell{}, ident)
	if err != nil {
		t.Fatal(err)
	}
	full.ReadConfig(0, cfg)
	if c, err := parseCapability(cfg); err != nil || c.name != ident.Name {
		t.Errorf("32-byte name parsed as %q, %v", c.name, err)
	}
	if state != l.StateTableSize() || rw != l.RWSize || out != l.OutputSize {
		t.Errorf("parsed state %d rw %d out %d, device model has %d %d %d", state, rw, out, l.StateTableSize(), l.RWSize, l.OutputSize)
	}
	if err := checkLayout(abi.Layout{Peers: l.Peers, RWSize: rw, OutputSize: out}, state, l.BARSize()); err != nil {
		t.Errorf("the guest refuses the device model's layout: %v", err)
	}
}
