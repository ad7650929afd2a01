// Package virtio implements the device side of virtio 1.x: split
// virtqueues on guest memory (Queue) and the modern virtio-pci transport
// (PCIDevice), which turns any DeviceModel into a pci.Device. Device types
// live in subpackages (blk, console); each implements DeviceModel.
//
// Everything the guest writes is untrusted: malformed rings break the
// queue (ErrMalformed) and the transport sets DEVICE_NEEDS_RESET; nothing
// panics or loops unboundedly on guest values.
package virtio

import (
	"rainforest/vmm/eventfd"
	"rainforest/vmm/guestmem"
)

// Feature bits the transport handles (device-independent).
const (
	FeatureIndirectDesc uint64 = 1 << 28
	FeatureEventIdx     uint64 = 1 << 29
	FeatureVersion1     uint64 = 1 << 32

	// TransportFeatures are offered for every device.
	TransportFeatures = FeatureIndirectDesc | FeatureEventIdx | FeatureVersion1
)

// Device status bits.
const (
	StatusAcknowledge      = 1
	StatusDriver           = 2
	StatusDriverOK         = 4
	StatusFeaturesOK       = 8
	StatusDeviceNeedsReset = 64
	StatusFailed           = 128
)

// Virtio device type IDs.
const (
	TypeNet     uint16 = 1
	TypeBlock   uint16 = 2
	TypeConsole uint16 = 3
	TypeVsock   uint16 = 19
	TypeFS      uint16 = 26
	TypeMem     uint16 = 24
)

// Interrupts is how an active device model signals the driver. Its
// methods may be called from any goroutine and never block on the
// transport's lock.
type Interrupts interface {
	// UsedBuffer signals a used-buffer notification for queue q (call it
	// when Queue.NeedsNotify reports true).
	UsedBuffer(q int) error
	// ConfigChanged bumps config_generation and signals a configuration
	// change.
	ConfigChanged() error
	// NeedsReset sets DEVICE_NEEDS_RESET and signals a configuration
	// change (after a malformed queue, for example).
	NeedsReset()
}

// Doorbells are a queue's notifications as eventfds, for a device model
// that hands its queues to another process (ExternalQueues): the other
// process then waits on the kicks and signals the calls itself, and the
// VMM is on neither path. Either method returns nil when the transport
// has no such eventfd for the queue now.
type Doorbells interface {
	// Kick returns the eventfd the driver's notifications of queue q
	// signal (an ioeventfd on the queue's notify register).
	Kick(q int) *eventfd.EventFD
	// Call returns an eventfd whose signal delivers queue q's used-buffer
	// interrupt to the driver with no VMM thread on the path (the irqfd
	// of the MSI-X vector the driver gave the queue). It is nil while the
	// driver takes the queue's interrupts another way (INTx, or no
	// vector): then the model relays them through Interrupts.UsedBuffer.
	// The answer holds for one activation.
	Call(q int) *eventfd.EventFD
}

// ExternalQueues is a DeviceModel whose virtqueues another process serves
// (a vhost-user back end reading the rings in shared guest memory). For
// such a model the transport offers only the transport features the other
// process implements (ServedTransportFeatures), and the VMM leaves the
// queue-notify eventfds to the model (Activation.Doorbells) instead of
// turning their signals into QueueNotify calls; QueueNotify still comes for
// notifications that reach the VMM (a notify write no ioeventfd matched),
// and the model forwards them.
type ExternalQueues interface {
	DeviceModel
	// ServedTransportFeatures returns the bits of TransportFeatures the
	// queues' server implements; only those are offered.
	ServedTransportFeatures() uint64
}

// Activation is what a device model gets when the driver sets DRIVER_OK.
type Activation struct {
	Mem      *guestmem.Memory
	Features uint64   // negotiated features
	Queues   []*Queue // by queue index; nil where the driver did not enable one
	IRQ      Interrupts
	// Doorbells are the queues' eventfds where the transport has them
	// (nil: none), for ExternalQueues models.
	Doorbells Doorbells
}

// DeviceModel is one virtio device type. The transport never runs
// Activate, Reset, ReadConfig or WriteConfig concurrently with any model
// method; QueueNotify calls may run concurrently with each other (vCPU and
// ioeventfd threads, possibly for the same queue) and with the model's own
// entry points (console input, for example), so models keep their own lock.
// Models must not call PCIDevice methods other than through Interrupts.
type DeviceModel interface {
	// Type returns the virtio device ID (TypeBlock, ...).
	Type() uint16
	// Features returns the device-specific feature bits offered.
	Features() uint64
	// NumQueues returns the number of virtqueues.
	NumQueues() int
	// QueueMax returns queue q's maximum size (power of two, <= 256).
	QueueMax(q int) uint16
	// ReadConfig and WriteConfig access the device-specific config space.
	ReadConfig(offset uint64, data []byte)
	WriteConfig(offset uint64, data []byte)
	// Activate starts the device; an error sets DEVICE_NEEDS_RESET.
	Activate(a Activation) error
	// QueueNotify processes the driver's notification of queue q.
	QueueNotify(q int)
	// Reset stops the device and forgets its queues.
	Reset()
}
