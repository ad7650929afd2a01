package rfcom

import (
	"context"
	"fmt"

	"rainforest/ficm/board"
	"rainforest/rfcom/device"
	"rainforest/vmm/shmem/abi"
)

// GroupInfo is a look at the FICM group from this subOS without joining
// it (this peer's state is left alone).
type GroupInfo struct {
	Self, Peers int
	Address     string // PCI address of the FICM device
	Board       board.Board
	BoardErr    error // why Board is empty, if it is
}

// Inspect opens the FICM device without interrupts and reads this peer's
// id, the group size and the board. It returns ErrNoDevice without one.
func Inspect(ctx context.Context, opts Options) (GroupInfo, error) {
	sys, devRoot := opts.Roots()
	infos, err := device.Find(sys)
	if err != nil {
		return GroupInfo{}, err
	}
	for _, info := range infos {
		if info.Protocol() != abi.ProtocolFICM {
			continue
		}
		d, err := device.Open(ctx, sys, devRoot, info, device.WithoutInterrupts())
		if err != nil {
			return GroupInfo{}, err
		}
		defer d.Close()
		g := GroupInfo{Self: d.ID(), Peers: d.Peers(), Address: info.Address}
		out, err := d.Output(SupervisorPeer)
		switch {
		case err != nil:
			g.BoardErr = err
		case len(out) < InfoPageSize:
			g.BoardErr = fmt.Errorf("%w: output section of %d bytes", board.ErrCorrupt, len(out))
		default:
			g.Board, g.BoardErr = board.ReadGroup(out[:InfoPageSize], d.Peers())
		}
		return g, nil
	}
	return GroupInfo{}, fmt.Errorf("%w under %s", ErrNoDevice, sys)
}
