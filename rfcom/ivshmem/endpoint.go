package ivshmem

import (
	"fmt"

	"rainforest/ficm/endpoint"
)

// doorbell rings vector 0 of peers through the Doorbell register.
type doorbell struct{ dev *Device }

func (b doorbell) Ring(peer int) error { return b.dev.Ring(peer, 0) }

// BoardPage returns the reserved first page of the shared memory (left
// zero: an empty board page for rfcom.NewNode); nil after Close.
func (d *Device) BoardPage() []byte {
	if len(d.mem) < ReservedSize {
		return nil
	}
	return d.mem[:ReservedSize:ReservedSize]
}

// EndpointConfig returns the endpoint.Config of a FICM group of peers
// peers with slots slots per ring over the shared memory: after the
// reserved page, peer i's output section is
// [4096 + i*S, 4096 + (i+1)*S) with S = endpoint.Layout.SectionSize().
// Doorbells ring vector 0 of the peer, Wait is the Waiter, and there is no
// state table (every peer is alive). This peer's ID must be below peers.
func (d *Device) EndpointConfig(peers, slots int) (endpoint.Config, error) {
	if d.mem == nil {
		return endpoint.Config{}, ErrClosed
	}
	if peers < 2 || peers > MaxPeer+1 {
		return endpoint.Config{}, fmt.Errorf("%w: %d peers (2..%d)", ErrLayout, peers, MaxPeer+1)
	}
	if d.id >= peers {
		return endpoint.Config{}, fmt.Errorf("%w: this peer's id %d in a group of %d", ErrNoPeer, d.id, peers)
	}
	l, err := endpoint.NewLayout(peers, slots)
	if err != nil {
		return endpoint.Config{}, fmt.Errorf("%w: %w", ErrLayout, err)
	}
	size := uint64(l.SectionSize())
	avail := uint64(len(d.mem) - ReservedSize)
	if size == 0 || size > avail || uint64(peers) > avail/size {
		return endpoint.Config{}, fmt.Errorf("%w: %d sections of %d bytes (%d slots) after the reserved page exceed %d bytes of shared memory",
			ErrLayout, peers, size, slots, len(d.mem))
	}
	sections := make([][]byte, peers)
	for i := range sections {
		off := ReservedSize + uint64(i)*size
		sections[i] = d.mem[off : off+size : off+size]
	}
	return endpoint.Config{
		Self:     d.id,
		Layout:   l,
		Sections: sections,
		Doorbell: doorbell{dev: d},
		Waiter:   d,
	}, nil
}

// NewEndpoint returns a FICM endpoint over the shared memory (see
// EndpointConfig).
func (d *Device) NewEndpoint(peers, slots int) (*endpoint.Endpoint, error) {
	cfg, err := d.EndpointConfig(peers, slots)
	if err != nil {
		return nil, err
	}
	return endpoint.New(cfg)
}
