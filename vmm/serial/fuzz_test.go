package serial

import (
	"bytes"
	"testing"
)

// FuzzUART drives a UART with arbitrary port reads and writes (any
// offset, any width) and host input. Each op is two bytes: the first
// picks the access (bits 0-3 the offset, 8 and above outside the window;
// bit 4 a two-byte access; bit 5 write; bit 6 host input of the second
// byte's low nibble in bytes), the second is the value. After every step:
//   - the output is a subsequence of the bytes written to offset 0 (the
//     UART never invents output, never repeats a byte, and emits at most
//     one byte per THR write);
//   - the receive FIFO stays within its capacity and every host byte is
//     either accepted or counted as dropped;
//   - the interrupt line is high exactly when IIR names an interrupt;
//   - accesses outside the window or wider than a byte read as 0xFF;
//   - registers hold only their defined bits.
func FuzzUART(f *testing.F) {
	f.Add([]byte{0x23, 0x80, 0x20, 0x0C, 0x21, 0x00, 0x23, 0x03, 0x20, 'h', 0x20, 'i'})
	f.Add([]byte{0x24, 0x10, 0x40, 0x05, 0x00, 0x00, 0x05, 0x00, 0x20, 'x', 0x00, 0x00})
	f.Add([]byte{0x21, 0x0F, 0x02, 0x00, 0x22, 0x07, 0x40, 0x0F, 0x06, 0x00, 0x24, 0x1F, 0x06, 0x00, 0x24, 0x00})
	f.Add([]byte{0x30, 0x41, 0x10, 0x00, 0x2F, 0x01, 0x0F, 0x00})
	f.Fuzz(func(t *testing.T, ops []byte) {
		const capacity = 16
		irq := &fakeIRQ{}
		out := &bytes.Buffer{}
		u := New(out, irq, capacity)
		var thr []byte // bytes written to offset 0, in order (a superset of the output)
		var offered, accepted uint64
		for step := 0; len(ops) >= 2 && step < 2000; step++ {
			op, v := ops[0], ops[1]
			ops = ops[2:]
			offset := uint64(op & 0x0F)
			size := 1
			if op&0x10 != 0 {
				size = 2
			}
			switch {
			case op&0x40 != 0:
				in := bytes.Repeat([]byte{v}, int(v&0x0F)+1)
				offered += uint64(len(in))
				n := u.Enqueue(in)
				if n < 0 || n > len(in) {
					t.Fatalf("step %d: Enqueue accepted %d of %d", step, n, len(in))
				}
				accepted += uint64(n)
			case op&0x20 != 0:
				data := bytes.Repeat([]byte{v}, size)
				if offset == RegTHR && size == 1 {
					thr = append(thr, v)
				}
				u.Write(offset, data)
			default:
				data := make([]byte, size)
				u.Read(offset, data)
				if size != 1 || offset >= NumRegs {
					for _, b := range data {
						if b != 0xFF {
							t.Fatalf("step %d: read of %d bytes at %d gave %x, want all 0xFF", step, size, offset, data)
						}
					}
				} else if offset == RegIIR && data[0]&0x30 != 0 {
					t.Fatalf("step %d: IIR %#x has reserved bits", step, data[0])
				}
			}
			if !isSubsequence(out.Bytes(), thr) {
				t.Fatalf("step %d: output %q is not a subsequence of the THR writes %q", step, out.Bytes(), thr)
			}
			if got := accepted + u.Dropped(); got != offered {
				t.Fatalf("step %d: accepted %d + dropped %d != offered %d", step, accepted, u.Dropped(), offered)
			}
			u.mu.Lock()
			rxLen, rxHead, ier, mcr := u.rxLen, u.rxHead, u.ier, u.mcr
			pending := u.iir()&IIRNoInt == 0
			u.mu.Unlock()
			if rxLen < 0 || rxLen > capacity || rxHead < 0 || rxHead >= capacity {
				t.Fatalf("step %d: receive FIFO head %d length %d, capacity %d", step, rxHead, rxLen, capacity)
			}
			if ier&^0x0F != 0 || mcr&^0x1F != 0 {
				t.Fatalf("step %d: IER %#x MCR %#x hold undefined bits", step, ier, mcr)
			}
			if irq.level() != pending {
				t.Fatalf("step %d: line %v, IIR says pending %v", step, irq.level(), pending)
			}
		}
	})
}

// isSubsequence reports whether sub's bytes appear in s in order.
func isSubsequence(sub, s []byte) bool {
	for _, c := range sub {
		i := bytes.IndexByte(s, c)
		if i < 0 {
			return false
		}
		s = s[i+1:]
	}
	return true
}
