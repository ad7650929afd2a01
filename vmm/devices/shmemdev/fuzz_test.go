package shmemdev_test

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"testing"

	"rainforest/vmm/bus"
	"rainforest/vmm/devices"
	"rainforest/vmm/devices/shmemdev"
	"rainforest/vmm/eventfd"
	"rainforest/vmm/guestmem"
	"rainforest/vmm/interrupt"
	"rainforest/vmm/pci"
	"rainforest/vmm/shmem/abi"
	"rainforest/vmm/vm"
	"rainforest/vmm/vm/vmtest"
)

// FuzzDevice plugs peer 0's shared-memory function into a chassis on the
// fake VM (peer 1 connected) and lets a guest make arbitrary accesses:
// config space through the configuration ports (BAR moves, MSI-X and INTx
// enables included), reads and writes anywhere in its three BARs, and
// targeted DOORBELL, STATE and INT_CONTROL writes, while the host signals
// its vectors (peer doorbells). Each op is a byte (bits 0-2 the action,
// bits 3-4 the width) followed by its arguments. After every step:
//   - ID and MAX_PEERS read 0 and 2, INT_CONTROL and INT_STATUS read 0 or
//     1, and INT_STATUS reads 0 while MSI-X is on;
//   - the state table holds this peer's STATE in its entry and nothing
//     else changed in the region (the guest reaches the region only
//     through the mappings, never through a trap);
//   - doorbells that reached the model (dropped or delivered) are no more
//     than the register writes the guest made;
//   - at most one irqfd per vector is attached;
//
// and removing the device gives back everything it held in the VM and
// zeroes its state entry.
func FuzzDevice(f *testing.F) {
	le32 := func(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
	seq := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	f.Add(seq([]byte{6}, le32(1), []byte{4}, le32(0), []byte{5}, le32(7), []byte{7, 0}))                                              // INT_CONTROL on, self doorbell, state, incoming
	f.Add(seq([]byte{4}, le32(1<<16|1), []byte{4}, le32(5<<16), []byte{4}, le32(1<<16|9)))                                            // peer, unknown peer, unknown vector
	f.Add(seq([]byte{0x10, pci.RegCommand}, []byte{0x06, 0x04}, []byte{6}, le32(1), []byte{7, 1}, []byte{0x11, pci.RegStatus}))       // INTx disabled, pending
	f.Add(seq([]byte{0x18, pci.RegBAR0}, le32(0xFFFF_FFFF), []byte{0x19, pci.RegBAR0}, []byte{0x18, pci.RegBAR0}, le32(0xE000_0000))) // size a BAR, move it
	f.Add(seq([]byte{0x1A, 1, 0x00, 0x00}, le32(0xFEE0_0000), []byte{0x1A, 1, 0x0C, 0x00}, le32(0), []byte{0x1B, 2, 0x00, 0x00}))     // MSI-X table, memory BAR trap
	f.Fuzz(func(t *testing.T, ops []byte) {
		fv := vmtest.New()
		var mmio, pio bus.Bus
		mem, err := guestmem.New(guestmem.Region{GPA: 0, Data: make([]byte, 1<<16)})
		if err != nil {
			t.Fatal(err)
		}
		quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
		chassis, err := devices.New(devices.Config{VM: fv, Memory: mem, MMIO: &mmio, PIO: &pio, Lines: interrupt.NewLines(fv, quiet),
			INTxGSI: func(slot, pin int) (uint32, bool) { return uint32(16 + slot%8), true }, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		defer chassis.Close()
		l := abi.Layout{Peers: 2, OutputSize: 4096}
		region := make([]byte, l.Size())
		binary.LittleEndian.PutUint32(region[abi.StateEntryOffset(1):], 0xABCD)
		for i := l.OutputOffset(0); i < uint64(len(region)); i++ {
			region[i] = byte(i)
		}
		snapshot := bytes.Clone(region)
		var peerBells []*eventfd.EventFD
		for range 2 {
			ev, err := eventfd.New()
			if err != nil {
				t.Fatal(err)
			}
			defer ev.Close()
			peerBells = append(peerBells, ev)
		}
		dev, err := shmemdev.New(shmemdev.Config{ID: 0, Layout: l, Region: region, Vectors: 2,
			Peers: []shmemdev.PeerDoorbells{{Peer: 1, Vectors: peerBells}}})
		if err != nil {
			t.Fatal(err)
		}
		slot, err := chassis.Add(dev, -1)
		if err != nil {
			t.Fatal(err)
		}
		model := dev.Model()
		next := func() byte {
			if len(ops) == 0 {
				return 0
			}
			b := ops[0]
			ops = ops[1:]
			return b
		}
		bytesOf := func(n int) []byte {
			b := make([]byte, n)
			for i := range b {
				b[i] = next()
			}
			return b
		}
		regWrite := func(off uint64, v []byte) {
			if a := dev.BARAddr(abi.RegBAR); a != 0 {
				mmio.Write(a+off, v)
			} else {
				model.WriteBAR(abi.RegBAR, off, v) // a guest cannot, but the model must cope
			}
		}
		regRead := func(off uint64) uint32 {
			var b [4]byte
			model.ReadBAR(abi.RegBAR, off, b[:])
			return binary.LittleEndian.Uint32(b[:])
		}
		var writes uint64
		for step := 0; len(ops) > 0 && step < 300; step++ {
			op := next()
			width := []int{1, 2, 4, 8}[op>>3&3]
			switch op & 7 {
			case 0, 1: // config space through the ports
				reg := int(next())
				var a [4]byte
				binary.LittleEndian.PutUint32(a[:], 1<<31|uint32(slot)<<11|uint32(reg&^3))
				pio.Write(pci.ConfigPortBase, a[:])
				w := min(width, 4)
				port := uint64(pci.ConfigPortBase + 4 + reg&3)
				if op&7 == 0 {
					pio.Write(port, bytesOf(w))
				} else {
					pio.Read(port, make([]byte, w))
				}
			case 2, 3: // anywhere in a BAR
				bar := []int{abi.RegBAR, abi.MSIXBAR, abi.MemBAR}[next()%3]
				off := uint64(binary.LittleEndian.Uint16(bytesOf(2)))
				data := make([]byte, width)
				if op&7 == 2 {
					data = bytesOf(width)
					writes++
				}
				if a := dev.BARAddr(bar); a != 0 {
					if op&7 == 2 {
						mmio.Write(a+off, data)
					} else {
						mmio.Read(a+off, data)
					}
				}
			case 4:
				writes++
				regWrite(abi.RegDoorbell, bytesOf(4))
			case 5:
				writes++
				regWrite(abi.RegState, bytesOf(4))
			case 6:
				writes++
				regWrite(abi.RegIntControl, bytesOf(4))
			case 7: // a doorbell from a peer
				if ev := dev.Vector(int(next() % 3)); ev != nil {
					_ = ev.Signal()
				}
			}
			if id, peers := regRead(abi.RegID), regRead(abi.RegMaxPeers); id != 0 || peers != 2 {
				t.Fatalf("step %d: ID %d MAX_PEERS %d", step, id, peers)
			}
			ic, is := regRead(abi.RegIntControl), regRead(abi.RegIntStatus)
			if ic > 1 || is > 1 || (is == 1 && model.MSIXEnabled()) {
				t.Fatalf("step %d: INT_CONTROL %d INT_STATUS %d (MSI-X %v)", step, ic, is, model.MSIXEnabled())
			}
			state := regRead(abi.RegState)
			want := bytes.Clone(snapshot)
			binary.LittleEndian.PutUint32(want[abi.StateEntryOffset(0):], state)
			if !bytes.Equal(region, want) {
				t.Fatalf("step %d: the region changed beyond this peer's state entry", step)
			}
			s := dev.Stats()
			if s.Dropped+s.Fallback > writes {
				t.Fatalf("step %d: %d dropped + %d delivered doorbells from %d register writes", step, s.Dropped, s.Fallback, writes)
			}
			if n := fv.Usage().IRQFDs; n > 2 {
				t.Fatalf("step %d: %d irqfds for 2 vectors", step, n)
			}
		}
		if _, err := chassis.Remove(slot); err != nil {
			t.Fatal(err)
		}
		if u := fv.Usage(); u != (vm.Usage{}) {
			t.Fatalf("after removal the VM still holds %+v", u)
		}
		if binary.LittleEndian.Uint32(region[abi.StateEntryOffset(0):]) != 0 {
			t.Fatal("state entry not zeroed at removal")
		}
	})
}
