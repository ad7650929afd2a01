package device

import (
	"fmt"

	"rainforest/ficm/endpoint"
	"rainforest/vmm/shmem/abi"
)

// EndpointOptions selects how a ficm endpoint runs on a Device.
type EndpointOptions struct {
	// Slots is the slot count of every ring (a power of two).
	Slots int
	// Vector is the doorbell vector rung on peers (0 normally).
	Vector int
	// PollRounds is passed to endpoint.Config.
	PollRounds int
	// UseStateTable makes the endpoint honour the device's state table
	// (bit 0 of a peer's STATE: alive); otherwise every peer is alive.
	UseStateTable bool
	// RequireFICM refuses a device whose class protocol byte is not
	// abi.ProtocolFICM.
	RequireFICM bool
	// SectionOffset is where the endpoint's section starts in every
	// peer's output section (4096 in the FICM group, after the info
	// page): the endpoint's Sections[i] = Output(i)[SectionOffset:]. A
	// multiple of 64.
	SectionOffset int
}

// doorbell rings peers' vector on a Device.
type doorbell struct {
	dev    *Device
	vector int
}

func (b doorbell) Ring(peer int) error { return b.dev.Ring(peer, b.vector) }

// EndpointConfig returns the endpoint.Config of a FICM group over d: one
// output section per peer, doorbells through Ring(peer, opts.Vector), and
// Wait as the Waiter.
func (d *Device) EndpointConfig(opts EndpointOptions) (endpoint.Config, error) {
	if opts.RequireFICM && d.info.Protocol() != abi.ProtocolFICM {
		return endpoint.Config{}, fmt.Errorf("%w: protocol %#x, want %#x", ErrProtocol, d.info.Protocol(), abi.ProtocolFICM)
	}
	if opts.Vector < 0 || opts.Vector > abi.MaxVector {
		return endpoint.Config{}, fmt.Errorf("%w: %d", ErrVector, opts.Vector)
	}
	l, err := endpoint.NewLayout(d.Peers(), opts.Slots)
	if err != nil {
		return endpoint.Config{}, err
	}
	if opts.SectionOffset < 0 || opts.SectionOffset%64 != 0 || uint64(opts.SectionOffset) > d.layout.OutputSize {
		return endpoint.Config{}, fmt.Errorf("%w: section offset %d (a multiple of 64 inside the %d-byte output section)", ErrLayout, opts.SectionOffset, d.layout.OutputSize)
	}
	if uint64(l.SectionSize()) > d.layout.OutputSize-uint64(opts.SectionOffset) {
		return endpoint.Config{}, fmt.Errorf("%w: FICM section of %d bytes (%d peers, %d slots) at offset %d exceeds output section of %d", ErrLayout, l.SectionSize(), d.Peers(), opts.Slots, opts.SectionOffset, d.layout.OutputSize)
	}
	sections := d.Outputs()
	for i := range sections {
		if sections[i] != nil {
			sections[i] = sections[i][opts.SectionOffset:]
		}
	}
	cfg := endpoint.Config{
		Self:       d.id,
		Layout:     l,
		Sections:   sections,
		Doorbell:   doorbell{dev: d, vector: opts.Vector},
		Waiter:     d,
		PollRounds: opts.PollRounds,
	}
	if opts.UseStateTable {
		if cfg.State, err = endpoint.NewStateTable(d.StateTable(), d.Peers()); err != nil {
			return endpoint.Config{}, err
		}
	}
	return cfg, nil
}

// NewEndpoint returns a FICM endpoint running on d (see EndpointConfig).
func (d *Device) NewEndpoint(opts EndpointOptions) (*endpoint.Endpoint, error) {
	cfg, err := d.EndpointConfig(opts)
	if err != nil {
		return nil, err
	}
	return endpoint.New(cfg)
}
