// Package fs is the virtio-fs device (type 26): a host directory shared
// with the guest, which mounts it by its tag (mount -t virtiofs TAG DIR).
// FUSE requests go on the device's queues straight to a vhost-user back
// end (virtiofsd), which serves them from the directory; the VMM only sets
// the queues up (vmm/vhostuser) and serves the configuration space: the
// tag and the number of request queues.
//
// The device has one high-priority queue (queue 0, FORGET and
// interrupts) and RequestQueues request queues after it. It has no DAX
// cache window (no shared-memory BAR: file data is copied through the
// queues) and does not offer VIRTIO_FS_F_NOTIFICATION.
package fs

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"rainforest/vmm/vhostuser"
	"rainforest/vmm/virtio"
)

// Configuration space layout: struct virtio_fs_config.
const (
	// TagSize is the tag field's size; a tag shorter than it is padded
	// with NULs.
	TagSize = 36
	// ConfigSize is the configuration space's size: the tag, then
	// num_request_queues (le32).
	ConfigSize = TagSize + 4
)

// Defaults and bounds.
const (
	// DefaultQueueSize is each queue's maximum size.
	DefaultQueueSize = 128
	// MaxRequestQueues bounds the request queues.
	MaxRequestQueues = 16
)

// ErrTag means a tag the guest could not mount by.
var ErrTag = errors.New("virtio-fs tag")

// CheckTag validates a tag: 1 to TagSize bytes of printable ASCII, no
// spaces (it becomes a mount source in the guest).
func CheckTag(tag string) error {
	if tag == "" || len(tag) > TagSize {
		return fmt.Errorf("%w %q: 1 to %d bytes", ErrTag, tag, TagSize)
	}
	for i := 0; i < len(tag); i++ {
		if c := tag[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("%w %q: printable ASCII without spaces only", ErrTag, tag)
		}
	}
	return nil
}

// Options say what the device presents.
type Options struct {
	// Tag is what the guest mounts the share by (CheckTag).
	Tag string
	// RequestQueues is the number of request queues (1 when 0); the back
	// end must support 1+RequestQueues queues.
	RequestQueues int
	// QueueSize is each queue's maximum size (DefaultQueueSize when 0).
	QueueSize uint16
	Logger    *slog.Logger
}

// Device is a virtio-fs device on a vhost-user back end. Close it (it
// closes the connection) when it is removed. Once the back end has failed
// while the device is active, the device answers the guest's requests
// with EIO itself (fail.go).
type Device struct {
	*vhostuser.Device
	config [ConfigSize]byte
	log    *slog.Logger

	mu      sync.Mutex
	act     *virtio.Activation // while active
	failing *failer            // answering with EIO since the back end failed
	closed  bool
	watcher sync.WaitGroup
}

var _ virtio.ExternalQueues = (*Device)(nil)

// New runs the vhost-user handshake on cn and returns the device; it takes
// charge of cn, which is closed on error.
func New(ctx context.Context, cn *vhostuser.Conn, opts Options) (*Device, error) {
	if err := CheckTag(opts.Tag); err != nil {
		cn.Close()
		return nil, err
	}
	if opts.RequestQueues == 0 {
		opts.RequestQueues = 1
	}
	if opts.RequestQueues < 1 || opts.RequestQueues > MaxRequestQueues {
		cn.Close()
		return nil, fmt.Errorf("virtio-fs %s: %d request queues (1..%d)", opts.Tag, opts.RequestQueues, MaxRequestQueues)
	}
	if opts.QueueSize == 0 {
		opts.QueueSize = DefaultQueueSize
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	dev, err := vhostuser.NewDevice(ctx, cn, vhostuser.DeviceConfig{
		Type:      virtio.TypeFS,
		Queues:    1 + opts.RequestQueues,
		QueueSize: opts.QueueSize,
		Features:  0, // no VIRTIO_FS_F_NOTIFICATION: no notification queue
		Logger:    opts.Logger.With("virtio-fs", opts.Tag),
	})
	if err != nil {
		return nil, fmt.Errorf("virtio-fs %s: %w", opts.Tag, err)
	}
	d := &Device{Device: dev, log: opts.Logger.With("virtio-fs", opts.Tag)}
	copy(d.config[:TagSize], opts.Tag)
	binary.LittleEndian.PutUint32(d.config[TagSize:], uint32(opts.RequestQueues))
	d.watcher.Add(1)
	go d.watch() // owner: the device; ends when the back end fails or Close
	return d, nil
}

// watch takes the queues over when the back end fails.
func (d *Device) watch() {
	defer d.watcher.Done()
	<-d.Device.Done()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failOverLocked()
}

// failOverLocked starts answering with EIO if the back end has failed
// while the device is active. Called under mu.
func (d *Device) failOverLocked() {
	select {
	case <-d.Device.Done():
	default:
		return
	}
	if d.closed || d.act == nil || d.failing != nil {
		return
	}
	f, err := startFailing(*d.act, d.log)
	if err != nil {
		d.log.Error("virtio-fs: cannot answer requests after the back end failed", "err", err)
		return
	}
	d.log.Warn("virtio-fs: the back end failed; the guest's requests get EIO until the device is reset")
	d.failing = f
}

// Activate implements virtio.DeviceModel.
func (d *Device) Activate(va virtio.Activation) error {
	if err := d.Device.Activate(va); err != nil {
		return err
	}
	d.mu.Lock()
	d.act = &va
	d.failOverLocked() // the back end may have failed since
	d.mu.Unlock()
	return nil
}

// Reset implements virtio.DeviceModel.
func (d *Device) Reset() {
	d.mu.Lock()
	f := d.failing
	d.act, d.failing = nil, nil
	d.mu.Unlock()
	if f != nil {
		f.end()
	}
	d.Device.Reset()
}

// QueueNotify implements virtio.DeviceModel.
func (d *Device) QueueNotify(q int) {
	d.mu.Lock()
	f := d.failing
	d.mu.Unlock()
	if f != nil {
		_ = f.poke.Signal()
		return
	}
	d.Device.QueueNotify(q)
}

// Close closes the device and its connection.
func (d *Device) Close() error {
	d.mu.Lock()
	d.closed = true
	f := d.failing
	d.act, d.failing = nil, nil
	d.mu.Unlock()
	if f != nil {
		f.end()
	}
	err := d.Device.Close()
	d.watcher.Wait()
	return err
}

// ReadConfig implements virtio.DeviceModel: the tag and the number of
// request queues; zeros beyond.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	for i := range data {
		data[i] = 0
		if o := offset + uint64(i); o >= offset && o < ConfigSize {
			data[i] = d.config[o]
		}
	}
}

// WriteConfig implements virtio.DeviceModel: the configuration space is
// read-only.
func (d *Device) WriteConfig(uint64, []byte) {}
