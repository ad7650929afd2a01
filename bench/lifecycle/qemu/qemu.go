// Package qemu measures a QEMU/KVM guest's lifecycle, the peer of a
// subOS's in Table 4, driving QEMU directly over QMP (bench/hotplug/qmp,
// through bench/internal/qemuguest) where the issue asked for libvirt:
// the nested L1 guest, where the VM rows run, has no libvirtd for
// go-libvirt to talk to. Per cycle:
//
//   - create: QEMU's process start, timed until its QMP socket answered
//     (the VMM runs) and until the guest's init marker on its serial
//     console;
//   - CPU online: QMP device_add of a vCPU (QEMU runs with -smp
//     1,maxcpus=2; the properties come from query-hotpluggable-cpus,
//     asked before the clock starts), and the new vCPU thread pinned to
//     its core (as libvirt pins a vCPU it adds; QEMU runs on the first
//     core only), until the guest says it brought the CPU online (its
//     command, GuestCommand, writes the CPU's sysfs online file: Linux
//     does not online a hot-added CPU by itself);
//   - CPU offline: QMP device_del of that vCPU until QEMU's
//     DEVICE_DELETED event for it or its APIC (the guest took it offline
//     and ejected it, and QEMU removed it);
//   - memory online and offline: qom-set of a virtio-mem device's
//     requested-size to the step and back to 0, until its size (what
//     the guest has plugged) got there, as QEMU's
//     MEMORY_DEVICE_SIZE_CHANGE event says;
//   - destroy: QMP quit, timed until QEMU answered and until its process
//     exited.
package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"rainforest/bench/hotplug/qmp"
	"rainforest/bench/internal/qemuguest"
	"rainforest/bench/lifecycle/sample"
)

// System is the name of the measured system in samples.
const System = "qemu"

// Device ids in QEMU's command line and QMP.
const (
	// CPUID is the hot-plugged vCPU's.
	CPUID = "cpu1"
	// MemoryID is the virtio-mem device's (-device
	// virtio-mem-pci,id=MemoryID,...).
	MemoryID = "vmem0"
)

// DefaultTimeout bounds each wait of a cycle when Config.Timeout is zero.
const DefaultTimeout = 5 * time.Minute

// ErrGuestRefused means the guest said it could not bring the CPU
// online.
var ErrGuestRefused = errors.New("the guest refused to online the CPU")

// Markers are the guest's console lines.
type Markers struct {
	// Init is printed by the guest's init (images.InitReachedMarker).
	Init string
	// Ready is printed by the guest's command once it waits for the
	// vCPU.
	Ready string
	// CPUOnline is printed once the guest brought the hot-added CPU
	// online, CPURefused when it could not.
	CPUOnline, CPURefused string
}

func (m Markers) list() []string { return []string{m.Init, m.Ready, m.CPUOnline, m.CPURefused} }

// Config describes the cycles to measure.
type Config struct {
	// Argv is the QEMU command line (serial console on stdout, QMP on
	// QMPSocket, -smp 1,maxcpus=2 for CPU resizes, a virtio-mem device
	// with id MemoryID for memory resizes).
	Argv      []string
	QMPSocket string
	Markers   Markers
	// Resize, when set, measures CPU online and offline.
	Resize bool
	// OnlineCores, when set, are the host cores the hot-added vCPU's
	// thread is pinned to once QEMU added it, inside the CPU online
	// clock.
	OnlineCores []int
	// MemoryStep, when not 0, measures memory online and offline of that
	// many bytes (at most the virtio-mem device's region).
	MemoryStep uint64
	// Timeout bounds each wait of a cycle: the boot, each operation
	// (default DefaultTimeout).
	Timeout time.Duration
	// Echo, when not nil, gets the guest's console, each line prefixed
	// with "[qemu#RUN] ".
	Echo io.Writer
}

func (c Config) withDefaults() Config {
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	return c
}

// Cycle boots one guest, measures its resizes, and quits it. A guest of
// a failing cycle is ended before Cycle returns.
func Cycle(ctx context.Context, cfg Config, run int) sample.Sample {
	cfg = cfg.withDefaults()
	s := sample.Sample{System: System, Run: run}
	if err := os.Remove(cfg.QMPSocket); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.Error = fmt.Sprintf("create: %v", err)
		return s
	}
	g, err := qemuguest.Start(ctx, qemuguest.Config{Argv: cfg.Argv, QMPSocket: cfg.QMPSocket, Markers: cfg.Markers.list(),
		Echo: cfg.Echo, Prefix: fmt.Sprintf("[%s#%d] ", System, run), Connect: cfg.Timeout})
	if err != nil {
		s.Error = fmt.Sprintf("create: %v", err)
		return s
	}
	defer g.Close()
	s.CreateReturn = g.Connected.Sub(g.Started)
	at, err := wait(ctx, cfg, g, cfg.Markers.Init)
	if err != nil {
		s.Error = fmt.Sprintf("create: %v", err)
		return s
	}
	s.CreateInit = at.Sub(g.Started)
	if cfg.Resize || cfg.MemoryStep > 0 {
		if _, err := wait(ctx, cfg, g, cfg.Markers.Ready); err != nil {
			s.Error = fmt.Sprintf("guest command: %v", err)
			return s
		}
	}
	if cfg.Resize {
		if s.CPUOnline, err = cpuOnline(ctx, cfg, g); err != nil {
			s.Error = fmt.Sprintf("cpu online: %v", err)
			return s
		}
		if s.CPUOffline, err = cpuOffline(ctx, cfg, g); err != nil {
			s.Error = fmt.Sprintf("cpu offline: %v", err)
			return s
		}
	}
	if cfg.MemoryStep > 0 {
		if s.MemOnline, err = setMemory(ctx, cfg, g, cfg.MemoryStep); err != nil {
			s.Error = fmt.Sprintf("memory online: %v", err)
			return s
		}
		if s.MemOffline, err = setMemory(ctx, cfg, g, 0); err != nil {
			s.Error = fmt.Sprintf("memory offline: %v", err)
			return s
		}
	}
	qctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	start := time.Now()
	answered, exited, err := g.Quit(qctx)
	s.DestroyReturn = answered.Sub(start)
	if err != nil {
		s.Error = fmt.Sprintf("destroy: %v", err)
		return s
	}
	s.Destroy = exited.Sub(start)
	return s
}

// wait returns when the console line marker first appeared (at any
// time), waiting up to cfg.Timeout.
func wait(ctx context.Context, cfg Config, g *qemuguest.Guest, marker string) (time.Time, error) {
	return waitSince(ctx, cfg, g, marker, "", time.Time{})
}

// waitSince returns when the console line marker first appeared at or
// after since, waiting up to cfg.Timeout; a refusal line, when not
// empty, ends the wait with ErrGuestRefused.
func waitSince(ctx context.Context, cfg Config, g *qemuguest.Guest, marker, refusal string, since time.Time) (time.Time, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, cfg.Timeout, fmt.Errorf("no %s after %v", marker, cfg.Timeout))
	defer cancel()
	if refusal != "" {
		rctx, refused := context.WithCancelCause(ctx)
		defer refused(nil)
		go func() { // owner: waitSince; its return cancels rctx, which ends the wait
			if _, err := g.Console.Wait(rctx, refusal, since); err == nil {
				refused(ErrGuestRefused)
			}
		}()
		ctx = rctx
	}
	at, err := g.Console.Wait(ctx, marker, since)
	if err != nil {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(err, cause) {
			err = fmt.Errorf("%w (%w)", cause, err)
		}
		return time.Time{}, g.Err(err)
	}
	return at, nil
}

// hotpluggableCPU is one entry of query-hotpluggable-cpus.
type hotpluggableCPU struct {
	Type    string         `json:"type"`
	Props   map[string]any `json:"props"`
	QOMPath string         `json:"qom-path"`
}

// cpuOnline adds a vCPU in the first free slot and returns the time from
// device_add until the guest said the CPU is online.
func cpuOnline(ctx context.Context, cfg Config, g *qemuguest.Guest) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	raw, err := g.QMP.Execute(ctx, "query-hotpluggable-cpus", nil)
	if err != nil {
		return 0, err
	}
	args, err := deviceAddArgs(raw)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if _, err := g.QMP.Execute(ctx, "device_add", args); err != nil {
		return 0, err
	}
	if len(cfg.OnlineCores) > 0 {
		if err := pinVCPU(ctx, g, cfg.OnlineCores); err != nil {
			return 0, err
		}
	}
	at, err := waitSince(ctx, cfg, g, cfg.Markers.CPUOnline, cfg.Markers.CPURefused, start)
	if err != nil {
		return 0, err
	}
	return at.Sub(start), nil
}

// deviceAddArgs are the arguments of a device_add of CPUID in the first
// free slot of a query-hotpluggable-cpus answer.
func deviceAddArgs(raw json.RawMessage) (map[string]any, error) {
	var cpus []hotpluggableCPU
	if err := json.Unmarshal(raw, &cpus); err != nil {
		return nil, fmt.Errorf("query-hotpluggable-cpus: %w", err)
	}
	for _, c := range cpus {
		if c.QOMPath != "" || c.Type == "" {
			continue
		}
		args := map[string]any{}
		for k, v := range c.Props {
			args[k] = v
		}
		args["driver"], args["id"] = c.Type, CPUID
		return args, nil
	}
	return nil, fmt.Errorf("query-hotpluggable-cpus: no free slot among %d (is QEMU run with -smp 1,maxcpus=2?)", len(cpus))
}

// cpuOffline removes the vCPU and returns the time from device_del until
// QEMU said it is gone; then it checks that the vCPU's slot is free.
func cpuOffline(ctx context.Context, cfg Config, g *qemuguest.Guest) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	start := time.Now()
	if _, err := g.QMP.Execute(ctx, "device_del", map[string]any{"id": CPUID}); err != nil {
		return 0, err
	}
	e, err := g.QMP.WaitEvent(ctx, "DEVICE_DELETED", isDeviceOrPart(CPUID))
	if err != nil {
		return 0, g.Err(err)
	}
	raw, err := g.QMP.Execute(ctx, "query-hotpluggable-cpus", nil)
	if err != nil {
		return 0, err
	}
	if _, err := deviceAddArgs(raw); err != nil {
		return 0, fmt.Errorf("after DEVICE_DELETED (%s): %w", e.Data, err)
	}
	return e.Received.Sub(start), nil
}

// isDeviceOrPart matches the DEVICE_DELETED event of the device with id,
// or of a part of it: QEMU (7.2) unrealizes a removed vCPU without an
// event of its own, and says only that its APIC
// (/machine/peripheral/ID/lapic), which goes with it, was deleted.
func isDeviceOrPart(id string) func(json.RawMessage) bool {
	path := "/machine/peripheral/" + id
	return func(data json.RawMessage) bool {
		var d struct {
			Device string `json:"device"`
			Path   string `json:"path"`
		}
		if json.Unmarshal(data, &d) != nil {
			return false
		}
		return d.Device == id || d.Path == path || strings.HasPrefix(d.Path, path+"/")
	}
}

// setMemory sets the virtio-mem device's requested size and returns the
// time until its size (what the guest has plugged) got there: QEMU's time
// of its MEMORY_DEVICE_SIZE_CHANGE event saying so. QEMU rate-limits that
// event (one a second per device, the latest kept) but stamps it when the
// size changed, so a late event does not move the time, and nothing
// polls QEMU meanwhile. A qom-get of the size checks it afterwards.
func setMemory(ctx context.Context, cfg Config, g *qemuguest.Guest, size uint64) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	path := "/machine/peripheral/" + MemoryID
	start := time.Now()
	if _, err := g.QMP.Execute(ctx, "qom-set", map[string]any{"path": path, "property": "requested-size", "value": size}); err != nil {
		return 0, err
	}
	e, err := g.QMP.WaitFor(ctx, "MEMORY_DEVICE_SIZE_CHANGE", sizeReached(size, start))
	if err != nil {
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		got, gerr := memorySize(qctx, g)
		return 0, fmt.Errorf("no size change of %s to %d bytes after %v (qom-get size: %d, %v): %w", MemoryID, size, cfg.Timeout, got, gerr, err)
	}
	got, err := memorySize(ctx, g)
	if err != nil {
		return 0, err
	}
	if got != size {
		return 0, fmt.Errorf("QEMU said %s reached %d bytes, but its size is %d", MemoryID, size, got)
	}
	return e.Emitted.Sub(start), nil
}

// sizeReached matches the MEMORY_DEVICE_SIZE_CHANGE event of the
// virtio-mem device that says its size is size, stamped at or after
// since.
func sizeReached(size uint64, since time.Time) func(qmp.Event) bool {
	since = since.Round(0).Truncate(time.Microsecond) // QEMU's stamps are whole microseconds
	path := "/machine/peripheral/" + MemoryID
	return func(e qmp.Event) bool {
		var d struct {
			ID      string  `json:"id"`
			QOMPath string  `json:"qom-path"`
			Size    *uint64 `json:"size"`
		}
		if json.Unmarshal(e.Data, &d) != nil || d.Size == nil || (d.ID != MemoryID && d.QOMPath != path) {
			return false
		}
		return *d.Size == size && !e.Emitted.IsZero() && !e.Emitted.Before(since)
	}
}

// memorySize is the virtio-mem device's size: what the guest has
// plugged.
func memorySize(ctx context.Context, g *qemuguest.Guest) (uint64, error) {
	path := "/machine/peripheral/" + MemoryID
	raw, err := g.QMP.Execute(ctx, "qom-get", map[string]any{"path": path, "property": "size"})
	if err != nil {
		return 0, err
	}
	var got uint64
	if err := json.Unmarshal(raw, &got); err != nil {
		return 0, fmt.Errorf("qom-get %s size: %w", path, err)
	}
	return got, nil
}
