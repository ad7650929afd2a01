package console_test

import (
	"bytes"
	"testing"

	"rainforest/vmm/virtio"
	"rainforest/vmm/virtio/console"
	vt "rainforest/vmm/virtio/virtiotest"
)

// countingWriter counts the writes and bytes of guest output.
type countingWriter struct {
	writes, bytes int
	maxWrite      int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.writes++
	c.bytes += len(p)
	c.maxWrite = max(c.maxWrite, len(p))
	return len(p), nil
}

// FuzzConsole is a guest driving both queues of a console with arbitrary
// descriptor tables and available rings (written over the real ones, as
// FuzzQueue does) while the host feeds input and the guest reads and
// writes config space. ops is a sequence of steps: bits 0-2 of a byte pick
// the action (notify receiveq, notify transmitq, host input of the next
// byte's count of bytes, config read, config write, reset and
// re-activate, a well-formed receive buffer, a well-formed transmit
// buffer). Whatever the guest does:
//   - the device consumes no more chains than the guest made available
//     on either queue, and its used lengths fit the buffers it could
//     have written (none on transmitq);
//   - it delivers no more input than the host gave it, and holds at most
//     InputBuffer bytes;
//   - guest output is at most one write per descriptor it consumed, each
//     no longer than guest memory;
//   - config space reads as zeros;
//   - well-formed chains on a queue the device has not given up on are
//     completed.
func FuzzConsole(f *testing.F) {
	f.Add([]byte{7, 1, 6, 2, 16, 0}, []byte{}, []byte{})
	f.Add([]byte{2, 40, 6, 6, 0, 7, 1, 3, 4}, []byte{0, 0, 1, 0, 0, 0}, []byte{0x00, 0x80, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 2, 0, 0, 0})
	f.Add([]byte{0, 1, 5, 1, 0}, []byte{0, 0, 0xFF, 0xFF, 0, 0}, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, ops, avail, descs []byte) {
		const (
			size     = 8
			memSize  = 0x20000
			inputMax = 256
			rxBuf    = 0x10000
			txBuf    = 0x18000
		)
		mem := vt.NewMemory(memSize)
		out := &countingWriter{}
		irq := &vt.IRQ{}
		dev := console.New(out, console.Options{InputBuffer: inputMax})
		var rx, tx *vt.Driver
		var usedBase [2]uint16  // used index at activation
		var published [2]uint16 // chains the test's driver published
		activate := func() {
			rx = vt.NewDriver(mem, size, 0x1000)
			tx = vt.NewDriver(mem, size, 0x4000)
			// Fresh rings: zero the old ones.
			_ = mem.WriteAt(make([]byte, 0x6000), 0x1000)
			var qs []*virtio.Queue
			for _, d := range []*vt.Driver{rx, tx} {
				q, err := virtio.NewQueue(mem, d.Config(), 0)
				if err != nil {
					t.Fatal(err)
				}
				qs = append(qs, q)
			}
			usedBase, published = [2]uint16{}, [2]uint16{}
			if err := dev.Activate(virtio.Activation{Mem: mem, Queues: qs, IRQ: irq}); err != nil {
				t.Fatal(err)
			}
		}
		activate()
		// The guest's own garbage over the rings of both queues.
		for i, d := range []*vt.Driver{rx, tx} {
			half := func(b []byte) []byte {
				if i == 0 {
					return b[:len(b)/2]
				}
				return b[len(b)/2:]
			}
			ds, av := half(descs), half(avail)
			_ = mem.WriteAt(ds[:min(len(ds), 16*size)], d.Desc)
			_ = mem.WriteAt(av[:min(len(av), 6+2*size)], d.Avail)
		}
		var given int
		txBefore := 0 // transmit chains completed before the last reset
		usedLen := func(d *vt.Driver) (n uint64, entries int) {
			idx, _ := mem.Uint16(d.Used + 2)
			for i := uint16(0); i < idx && i < 4*size; i++ {
				l, _ := mem.Uint32(d.Used + 4 + 8*uint64(i%size) + 4)
				n += uint64(l)
			}
			return n, int(idx)
		}
		for step := 0; len(ops) > 0 && step < 200; step++ {
			op := ops[0]
			ops = ops[1:]
			arg := byte(0)
			if len(ops) > 0 && op&7 >= 2 && op&7 != 5 {
				arg, ops = ops[0], ops[1:]
			}
			switch op & 7 {
			case 0:
				dev.QueueNotify(console.ReceiveQueue)
			case 1:
				dev.QueueNotify(console.TransmitQueue)
			case 2:
				in := bytes.Repeat([]byte{'i'}, int(arg))
				n, _ := dev.Enqueue(in)
				if n < 0 || n > len(in) {
					t.Fatalf("step %d: Enqueue took %d of %d", step, n, len(in))
				}
				given += n
			case 3:
				b := make([]byte, int(arg&7)+1)
				dev.ReadConfig(uint64(arg>>3), b)
				if !bytes.Equal(b, make([]byte, len(b))) {
					t.Fatalf("step %d: config reads %x", step, b)
				}
			case 4:
				dev.WriteConfig(uint64(arg>>3), bytes.Repeat([]byte{arg}, int(arg&7)+1))
			case 5:
				dev.Reset()
				// Delivered input is gone with the rings; buffered
				// input stays and is counted from here.
				n, _ := usedLen(rx)
				given -= int(n)
				_, done := usedLen(tx)
				txBefore += done
				activate()
			case 6:
				if irq.NeedsResetCount() == 0 && ringSane(mem, rx, published[0]) {
					rx.AddChain(vt.Buf{Addr: rxBuf, Len: uint32(arg) + 1, Write: true})
					published[0]++
				}
			case 7:
				if irq.NeedsResetCount() == 0 && ringSane(mem, tx, published[1]) {
					tx.AddChain(vt.Buf{Addr: txBuf, Len: uint32(arg) + 1})
					published[1]++
				}
			}
			for qi, d := range []*vt.Driver{rx, tx} {
				availIdx, _ := mem.Uint16(d.Avail + 2)
				usedIdx, _ := mem.Uint16(d.Used + 2)
				if consumed := usedIdx - usedBase[qi]; consumed > availIdx {
					t.Fatalf("step %d: queue %d used %d of %d available", step, qi, consumed, availIdx)
				}
			}
			delivered, _ := usedLen(rx)
			if delivered > uint64(given) {
				t.Fatalf("step %d: delivered %d bytes of input, given %d", step, delivered, given)
			}
			if txLen, _ := usedLen(tx); txLen != 0 {
				t.Fatalf("step %d: transmit used length %d", step, txLen)
			}
			_, txChains := usedLen(tx)
			txChains += txBefore
			if out.writes > txChains*size || out.maxWrite > memSize {
				t.Fatalf("step %d: %d output writes (largest %d) for %d transmit chains", step, out.writes, out.maxWrite, txChains)
			}
		}
		if err := dev.OutputError(); err != nil {
			t.Fatal(err)
		}
	})
}

// ringSane reports whether the guest's garbage left d's available index
// where the test's driver left it (published chains), so that adding a
// well-formed chain does not move the index backwards.
func ringSane(mem interface{ Uint16(uint64) (uint16, error) }, d *vt.Driver, published uint16) bool {
	idx, err := mem.Uint16(d.Avail + 2)
	return err == nil && idx == published && published < d.Size
}
