package platform

import (
	"encoding/binary"
	"testing"
	"time"
)

// FuzzFixedRegisters drives the registers FuzzEventBlocks does not: the
// PM1a control block, the PM timer, the reset control register and the
// guest status port, with arbitrary reads and writes (any offset, any
// width) and arbitrary clock readings. Each op is a byte choosing the
// device (bits 0-1), read or write (bit 2) and width (bits 3-4), then an
// offset byte and, for a write, the data. After every step:
//   - PM1 control reads SCI_EN as 1 and never reads back SLP_EN or
//     GBL_RLS; power-off is called exactly for a write whose byte 1 sets
//     SLP_EN with SLP_TYP = SleepTypeSoftOff;
//   - reset is called exactly for a one-byte-or-wider write at offset 0
//     of ResetHard or ResetFull, and RST_CPU never reads back;
//   - the guest status port keeps the last byte written at offset 0;
//   - the PM timer reads the counter for the clock's value (0 before
//     time starts), bytes past the registers read 0xFF and writes change
//     nothing.
func FuzzFixedRegisters(f *testing.F) {
	f.Add([]byte{0x0C, 0x00, 0x01, 0x34}, int64(0))             // SLP_TYP=5 | SLP_EN, as Linux powers off
	f.Add([]byte{0x06, 0x00, 0x06, 0x02, 0x00, 0x0E}, int64(1)) // reset hard, read, reset full
	f.Add([]byte{0x13, 0x00, 0x2A, 0x07, 0x00, 0x17, 0xFF}, int64(-5))
	f.Add([]byte{0x19, 0x00, 0x19, 0x02, 0x11, 0x03}, int64(time.Hour))
	f.Fuzz(func(t *testing.T, ops []byte, clock int64) {
		var powerOffs, resets int
		ctl := NewPM1Control(func() { powerOffs++ })
		timer := NewPMTimer(func() time.Duration { return time.Duration(clock) })
		rst := NewResetRegister(func() { resets++ })
		status := NewGuestStatus()
		var lastStatus byte
		statusWritten := false
		next := func() byte {
			if len(ops) == 0 {
				return 0
			}
			b := ops[0]
			ops = ops[1:]
			return b
		}
		type device interface {
			Read(uint64, []byte)
			Write(uint64, []byte)
		}
		for step := 0; len(ops) > 0 && step < 1000; step++ {
			op := next()
			offset := uint64(next())
			if offset >= 0xF0 {
				offset = ^uint64(0) - offset&0x0F // near the top of the range
			}
			data := make([]byte, []int{1, 2, 4, 8}[op>>3&3])
			dev := []device{ctl, timer, rst, status}[op&3]
			size := []int{PM1ControlLen, PMTimerLen, 1, 1}[op&3]
			if op&4 == 0 {
				dev.Read(offset, data)
				var want uint64
				switch op & 3 {
				case 0:
					ctl.mu.Lock()
					want = uint64(ctl.value)
					ctl.mu.Unlock()
					if want&PM1SCIEnable == 0 || want&(PM1SleepEn|PM1GlobalRel) != 0 {
						t.Fatalf("step %d: PM1 control %#x", step, want)
					}
				case 1:
					want = uint64(timer.Count())
					if clock <= 0 && want != 0 {
						t.Fatalf("step %d: PM timer %d at clock %d", step, want, clock)
					}
				case 2:
					rst.mu.Lock()
					want = uint64(rst.value)
					rst.mu.Unlock()
					if want&resetCPU != 0 {
						t.Fatalf("step %d: reset register reads RST_CPU", step)
					}
				case 3:
					want = uint64(lastStatus)
				}
				for i, b := range data {
					pos := offset + uint64(i)
					w := byte(0xFF)
					if pos >= offset && pos < uint64(size) {
						w = byte(want >> (8 * pos))
					}
					if b != w {
						t.Fatalf("step %d: device %d read %x at %#x, byte %d want %#x", step, op&3, data, offset, i, w)
					}
				}
				continue
			}
			for i := range data {
				data[i] = next()
			}
			p, r := powerOffs, resets
			dev.Write(offset, data)
			wantPowerOff, wantReset := false, false
			switch op & 3 {
			case 0:
				if offset <= 1 && 1-offset < uint64(len(data)) {
					b := data[1-offset]
					wantPowerOff = b&(PM1SleepEn>>8) != 0 && (b>>2)&7 == SleepTypeSoftOff
				}
			case 2:
				wantReset = offset == 0 && (data[0] == ResetHard || data[0] == ResetFull)
			case 3:
				if offset == 0 {
					lastStatus, statusWritten = data[0], true
				}
			}
			if (powerOffs > p) != wantPowerOff || powerOffs-p > 1 {
				t.Fatalf("step %d: PM1 control write %x at %#x: %d power-offs, want %v", step, data, offset, powerOffs-p, wantPowerOff)
			}
			if (resets > r) != wantReset || resets-r > 1 {
				t.Fatalf("step %d: reset write %x at %#x: %d resets, want %v", step, data, offset, resets-r, wantReset)
			}
			if code, ok := status.Last(); ok != statusWritten || code != lastStatus {
				t.Fatalf("step %d: guest status %#x/%v, want %#x/%v", step, code, ok, lastStatus, statusWritten)
			}
		}
		// The timer is a pure function of the clock.
		var b [4]byte
		timer.Read(0, b[:])
		if binary.LittleEndian.Uint32(b[:]) != timer.Count() {
			t.Fatalf("timer read %x, count %d", b, timer.Count())
		}
	})
}
