package hotplug

import (
	"sync"
	"testing"

	"rainforest/vmm/platform"
)

// sciLine records the SCI level.
type sciLine struct {
	mu   sync.Mutex
	high bool
}

func (l *sciLine) SetLevel(high bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.high = high
}

func (l *sciLine) level() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.high
}

// FuzzController interleaves arbitrary guest reads and writes of the
// hotplug registers and the GPE block (any offset and width) with the
// VMM's Plug, SetPresent, RequestEject and CancelEject on arbitrary slot
// numbers. After every step: no eject callback for slot 0, an
// out-of-range slot or a slot that was not occupied; no slot twice in one
// write; down never holds a slot the VMM never asked to eject; up and down
// only hold occupied slots and never slot 0; and the SCI level equals
// GPE status & enable.
func FuzzController(f *testing.F) {
	// Op bytes: op%8 picks the operation, op/8%4 the access width (1, 2,
	// 4, 8); a slot operand byte b means slot b%40-4.
	f.Add([]byte{2, 7, 6, 2, 0x02, 16, 0, 6, 0, 0x02, 3, 7, 7, 0x08, 0, 0, 0})      // hot-add and eject slot 3
	f.Add([]byte{5, 13, 3, 13, 9, 8, 0x00, 0x02, 7, 0xFF, 0xFF, 0xFF, 0xFF, 4, 13}) // boot device ejected, junk ejects
	f.Add([]byte{2, 39, 2, 4, 3, 4, 5, 0, 24, 10, 4, 5})                            // bad slots, odd reads
	f.Fuzz(func(t *testing.T, ops []byte) {
		var line sciLine
		gpe := platform.NewGPEBlock(&line)
		var (
			requested uint32 // slots RequestEject ever accepted
			before    uint32 // occupied slots before the current write
			seen      uint32 // slots ejected by the current write
			inWrite   bool
		)
		var c *Controller
		c = New(gpe, func(slot int) {
			if !inWrite {
				t.Fatalf("eject callback for slot %d outside a guest write", slot)
			}
			if slot < 1 || slot >= NumSlots {
				t.Fatalf("eject callback for slot %d", slot)
			}
			bit := uint32(1) << slot
			if before&bit == 0 || seen&bit != 0 {
				t.Fatalf("eject callback for slot %d: occupied before %#x, already ejected %#x", slot, before, seen)
			}
			seen |= bit
		})
		next := func() byte {
			if len(ops) == 0 {
				return 0
			}
			b := ops[0]
			ops = ops[1:]
			return b
		}
		slot := func() int { return int(next()%40) - 4 } // -4..35
		guestWrite := func(offset uint64, data []byte) {
			before, _, _ = c.Slots()
			seen, inWrite = 0, true
			c.Write(offset, data)
			inWrite = false
		}
		for step := 0; len(ops) > 0 && step < 1000; step++ {
			op := next()
			width := []int{1, 2, 4, 8}[op/8%4]
			switch op % 8 {
			case 0:
				data := make([]byte, width)
				c.Read(uint64(next())%16, data)
			case 1:
				offset := uint64(next()) % 16
				data := make([]byte, width)
				for i := range data {
					data[i] = next()
				}
				guestWrite(offset, data)
			case 2:
				if c.Plug(slot()) == nil {
					if st, _ := gpe.Registers(); st&(1<<GPEBit) == 0 {
						t.Fatal("Plug did not raise the GPE")
					}
				}
			case 3:
				s := slot()
				if c.RequestEject(s) == nil {
					requested |= 1 << s
				}
			case 4:
				c.CancelEject(slot())
			case 5:
				_ = c.SetPresent(slot())
			case 6: // the guest's GPE handling: enable, clear status
				gpe.Write(uint64(next()%4), []byte{next()})
			case 7:
				guestWrite(RegEject, []byte{next(), next(), next(), next()})
			}
			occ, up, down := c.Slots()
			if (occ|up|down)&1 != 0 {
				t.Fatalf("step %d: slot 0 in occupied %#x up %#x down %#x", step, occ, up, down)
			}
			if up&^occ != 0 || down&^occ != 0 {
				t.Fatalf("step %d: events for empty slots: occupied %#x up %#x down %#x", step, occ, up, down)
			}
			if down&^requested != 0 {
				t.Fatalf("step %d: down %#x holds slots never requested (%#x)", step, down, requested)
			}
			st, en := gpe.Registers()
			if line.level() != (st&en != 0) {
				t.Fatalf("step %d: SCI %v with GPE status %#x enable %#x", step, line.level(), st, en)
			}
		}
	})
}
