// Package hotplug models the ACPI PCI hotplug register block of a
// RainForest guest and gives the VMM the calls that add devices to, and
// remove them from, bus 0 of a running guest.
//
// It is the hardware half of the hotplug objects vmm/acpi writes into the
// DSDT when acpi.Config.HotplugSlots is set; the unmodified Linux kernel
// drives both through its acpiphp driver, with no guest-side setup. It is a
// package of its own, rather than part of vmm/platform, because it is not
// ACPI fixed hardware but a slot controller with its own VMM-facing API; it
// needs nothing from vmm/platform but a place to raise its GPE.
//
// # Registers
//
// The Controller is a bus.Device of RegistersLen (12) bytes that the VMM
// places at acpi.PCIHotplugPort (0x620) on the port I/O bus. It holds three
// 32-bit little-endian registers, each a bitmap with bit s for slot s of
// bus 0 (bit 0, the host bridge, is always 0):
//
//	offset  AML name  access  meaning
//	0x0     PCIU      read    up: slots with a device check pending. Reading
//	                          clears the bits read (exactly the bytes the
//	                          access covers); writes are ignored.
//	0x4     PCID      read    down: slots with an eject request pending. Reads
//	                          do not clear it; a bit stays until the guest
//	                          ejects the slot or the VMM cancels the request.
//	                          Writes are ignored.
//	0x8     PCEJ      write   eject: the guest has released the devices of the
//	                          slots whose bits it writes; the VMM removes
//	                          them. Reads return 0.
//
// Any offset and width is accepted; bytes past the block read as 0xFF and
// writes to them are ignored. The DSDT uses 32-bit accesses only.
//
// Whenever the VMM sets a bit in up or down, the controller raises GPE
// GPEBit (1) in the GPE0 block (platform.GPEBlock at acpi.GPE0Port), which
// raises the SCI when the guest has that GPE enabled (Linux enables it at
// boot because \_GPE._E01 exists).
//
// # Sequences
//
// Adding a device to an empty slot S (hot-add):
//
//  1. The VMM puts the device on PCI bus 0 at slot S (its config space
//     must answer from now on), then calls Plug(S): up |= 1<<S, GPE 1
//     status set, SCI raised.
//  2. Linux (acpi_ev_gpe_dispatch) disables GPE 1 and, _E01 being
//     edge-triggered, clears its status bit before running \_GPE._E01, which
//     calls \_SB.PCI0.PCNT. PCNT reads PCIU (clearing it) and PCID and
//     notifies Device(Sxx) with 1 (device check) for each slot in up and 3
//     (eject request) for each slot in down.
//  3. acpiphp rescans slot S, finds the device, assigns its BARs and binds
//     its driver. Linux re-enables GPE 1 when the method returns; a Plug or
//     RequestEject made meanwhile has set the status again, so it runs
//     again: no event is lost.
//
// Removing the device of slot S (cooperative removal):
//
//  1. The VMM calls RequestEject(S): down |= 1<<S, GPE 1 raised.
//  2. PCNT notifies Sxx with 3 (eject request); acpiphp unbinds the
//     driver, removes the PCI device and calls Sxx._EJ0, which writes 1<<S
//     to PCEJ.
//  3. The controller marks S empty, clears its up and down bits and calls
//     the eject callback with S on the vCPU thread that made the write,
//     after releasing its lock. The VMM then takes the device off the bus.
//     Until the callback returns, S counts as occupied (Plug fails).
//  4. If the guest does not eject in time, the VMM may CancelEject(S): the
//     down bit is cleared and the device stays.
//
// The guest may also eject a slot nobody asked for (echo 0 >
// /sys/bus/pci/slots/S/power): the eject callback runs just the same. An
// eject of slot 0 or of a slot the controller holds as empty is ignored and
// counted (IgnoredEjects). Every GPE run re-notifies all slots still in
// down; Linux treats a repeated eject request for a slot it already ejected
// by calling _EJ0 again, which lands in that count.
//
// Devices present at boot are found by the guest's own bus scan; the VMM
// declares them with SetPresent (no event) so that they can be ejected.
package hotplug

import (
	"errors"
	"fmt"
	"math/bits"
	"sync"
)

// Register offsets and sizes.
const (
	RegUp        = 0x0 // PCIU: read-to-clear device-check bitmap
	RegDown      = 0x4 // PCID: eject-request bitmap
	RegEject     = 0x8 // PCEJ: write-only eject bitmap
	RegistersLen = 12

	// NumSlots is the number of slots on bus 0; slots 1..NumSlots-1 can
	// be hot-plugged.
	NumSlots = 32
	// GPEBit is the general-purpose event the controller raises (the
	// DSDT's \_GPE._E01).
	GPEBit = 1
)

// Errors the VMM-facing calls return (wrapped).
var (
	ErrInvalidSlot  = errors.New("hotplug: slot not in 1..31")
	ErrSlotOccupied = errors.New("hotplug: slot holds a device")
	ErrSlotEmpty    = errors.New("hotplug: slot is empty")
)

// GPEBlock is where the controller raises its general-purpose event:
// SetStatus(1 << GPEBit) marks it pending (platform.GPEBlock).
type GPEBlock interface {
	SetStatus(bits uint16)
}

// Controller is the PCI hotplug register block and the slot state behind
// it. It is safe for concurrent use: the VMM calls from any goroutine,
// vCPU threads access the registers.
type Controller struct {
	gpe     GPEBlock
	onEject func(slot int)

	mu       sync.Mutex
	present  uint32 // slots holding a device, as far as the guest is concerned
	ejecting uint32 // slots whose eject callback is running
	up       uint32
	down     uint32
	ignored  uint64
}

// New returns a controller with every slot empty that raises its event in
// gpe and calls onEject (nil: none) for each slot the guest ejects.
func New(gpe GPEBlock, onEject func(slot int)) *Controller {
	return &Controller{gpe: gpe, onEject: onEject}
}

func checkSlot(slot int) (uint32, error) {
	if slot < 1 || slot >= NumSlots {
		return 0, fmt.Errorf("%w: %d", ErrInvalidSlot, slot)
	}
	return 1 << slot, nil
}

func (c *Controller) raise() {
	if c.gpe != nil {
		c.gpe.SetStatus(1 << GPEBit)
	}
}

// SetPresent declares a device that is in slot without a hotplug event (one
// on the bus when the guest boots, found by its own scan), so that it can
// later be ejected.
func (c *Controller) SetPresent(slot int) error {
	bit, err := checkSlot(slot)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if (c.present|c.ejecting)&bit != 0 {
		return fmt.Errorf("%w: %d", ErrSlotOccupied, slot)
	}
	c.present |= bit
	return nil
}

// Plug announces the device the VMM has just put into the empty slot: a
// device check for slot is made pending and the GPE raised.
func (c *Controller) Plug(slot int) error {
	bit, err := checkSlot(slot)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if (c.present|c.ejecting)&bit != 0 {
		c.mu.Unlock()
		return fmt.Errorf("%w: %d", ErrSlotOccupied, slot)
	}
	c.present |= bit
	c.up |= bit
	c.mu.Unlock()
	c.raise()
	return nil
}

// RequestEject asks the guest to release the device in slot: an eject
// request is made pending (until the guest ejects the slot or CancelEject)
// and the GPE raised. Asking again raises the GPE again.
func (c *Controller) RequestEject(slot int) error {
	bit, err := checkSlot(slot)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.present&bit == 0 {
		c.mu.Unlock()
		return fmt.Errorf("%w: %d", ErrSlotEmpty, slot)
	}
	c.down |= bit
	c.mu.Unlock()
	c.raise()
	return nil
}

// CancelEject withdraws a pending eject request for slot (the guest did
// not eject in time) and reports whether one was pending. The guest is not
// told; it may still eject the slot.
func (c *Controller) CancelEject(slot int) bool {
	bit, err := checkSlot(slot)
	if err != nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	pending := c.down&bit != 0
	c.down &^= bit
	return pending
}

// Slots returns the slot bitmaps: occupied (present, or being ejected),
// device checks pending (up) and eject requests pending (down).
func (c *Controller) Slots() (occupied, up, down uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.present | c.ejecting, c.up, c.down
}

// IgnoredEjects returns how many slot bits written to the eject register
// were ignored: slot 0 and slots the controller held as empty.
func (c *Controller) IgnoredEjects() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ignored
}

// Read implements bus.Device. Reading up clears the bits read.
func (c *Controller) Read(offset uint64, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var cleared uint32
	for i := range data {
		pos := offset + uint64(i)
		if pos < offset || pos >= RegistersLen {
			data[i] = 0xFF
			continue
		}
		shift := 8 * (pos % 4)
		switch pos &^ 3 {
		case RegUp:
			data[i] = byte(c.up >> shift)
			cleared |= 0xFF << shift
		case RegDown:
			data[i] = byte(c.down >> shift)
		default:
			data[i] = 0
		}
	}
	c.up &^= cleared
}

// Write implements bus.Device. Bits written to the eject register eject
// those slots: each occupied slot among them becomes empty, loses its
// pending events and is passed to the eject callback, in slot order, after
// the lock is released.
func (c *Controller) Write(offset uint64, data []byte) {
	var eject uint32
	for i, b := range data {
		pos := offset + uint64(i)
		if pos < offset || pos >= RegistersLen || pos&^3 != RegEject {
			continue
		}
		eject |= uint32(b) << (8 * (pos % 4))
	}
	if eject == 0 {
		return
	}
	c.mu.Lock()
	ok := eject & c.present
	c.ignored += uint64(bits.OnesCount32(eject &^ ok))
	c.present &^= ok
	c.up &^= ok
	c.down &^= ok
	c.ejecting |= ok
	c.mu.Unlock()
	for ok != 0 {
		slot := bits.TrailingZeros32(ok)
		bit := uint32(1) << slot
		ok &^= bit
		if c.onEject != nil {
			c.onEject(slot)
		}
		c.mu.Lock()
		c.ejecting &^= bit
		c.mu.Unlock()
	}
}
