package hotmeasure

import (
	"context"
	"encoding/json"
	"time"

	"rainforest/bench/internal/qemuguest"
)

// QEMU says how to run a QEMU guest.
type QEMU struct {
	// Argv is the QEMU command line: its serial console on stdout and a
	// QMP server on QMPSocket (-qmp unix:PATH,server=on,wait=off).
	Argv      []string
	QMPSocket string
}

// MeasureQEMU starts QEMU, follows its serial console and QMP, adds the
// hot disk's read-only block node (before the clock starts), times
// device_add of a virtio-blk-pci on it and device_del (to the guest's
// marker and the DEVICE_DELETED event), and quits QEMU.
func MeasureQEMU(ctx context.Context, cfg Config, q QEMU) []Sample {
	cfg.defaults()
	g, err := qemuguest.Start(ctx, qemuguest.Config{Argv: q.Argv, QMPSocket: q.QMPSocket, Markers: cfg.Markers.list(),
		Echo: cfg.Echo, Prefix: cfg.prefix(), Connect: cfg.Boot})
	if err != nil {
		return failed(cfg, err)
	}
	defer g.Close()
	client := g.QMP
	ready := func(ctx context.Context) error {
		_, err := g.Console.Wait(ctx, cfg.Markers.Ready, time.Time{})
		return g.Err(err)
	}
	isHot := func(data json.RawMessage) bool {
		var d struct {
			Device string `json:"device"`
		}
		return json.Unmarshal(data, &d) == nil && d.Device == HotID
	}
	return measure(ctx, cfg, g.Console, ready, ops{
		prepare: func(ctx context.Context) error {
			_, err := client.Execute(ctx, "blockdev-add", map[string]any{
				"driver": "file", "node-name": HotNode, "filename": cfg.HotDisk, "read-only": true})
			return err
		},
		add: func(ctx context.Context) error {
			_, err := client.Execute(ctx, "device_add", map[string]any{"driver": "virtio-blk-pci", "id": HotID, "drive": HotNode})
			return err
		},
		remove: func(ctx context.Context) error {
			_, err := client.Execute(ctx, "device_del", map[string]any{"id": HotID})
			return err
		},
		removed: func(ctx context.Context) (time.Time, error) {
			e, err := client.WaitEvent(ctx, "DEVICE_DELETED", isHot)
			return e.Received, err
		},
	})
}
