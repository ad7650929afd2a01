package platform

import (
	"testing"
)

// FuzzEventBlocks drives a GPE block and a PM1 event block sharing one SCI
// with arbitrary guest reads and writes (any offset and width) and
// SetStatus calls. After every step the SCI line must be high exactly
// when an enabled status bit is set in either block.
func FuzzEventBlocks(f *testing.F) {
	f.Add([]byte{2, 0x02, 0x00, 1, 2, 1, 0x02, 1, 0, 1, 0x02})
	f.Add([]byte{5, 0x00, 0x01, 4, 2, 2, 0x00, 0x01, 4, 0, 4, 0xFF, 0xFF, 0xFF, 0xFF, 3, 0, 4})
	f.Add([]byte{1, 0xFE, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 3, 2, 2, 0xFF, 0xFF})
	f.Fuzz(func(t *testing.T, ops []byte) {
		var line levelLine
		sci := NewSCI(&line)
		gpe := NewGPEBlock(sci.Input())
		pm1 := NewPM1Event(sci.Input())
		next := func() byte {
			if len(ops) == 0 {
				return 0
			}
			b := ops[0]
			ops = ops[1:]
			return b
		}
		for steps := 0; len(ops) > 0 && steps < 1000; steps++ {
			op := next()
			var dev interface {
				Read(uint64, []byte)
				Write(uint64, []byte)
				SetStatus(uint16)
			} = gpe
			if op%6 >= 3 {
				dev = pm1
			}
			switch op % 3 {
			case 0, 1:
				offset := uint64(next())
				if offset >= 0xF0 {
					offset = ^uint64(0) - offset&0x0F // near the top of the range
				}
				data := make([]byte, []int{1, 2, 4, 8}[op/6%4])
				if op%3 == 0 {
					dev.Read(offset, data)
					continue
				}
				for i := range data {
					data[i] = next()
				}
				dev.Write(offset, data)
			case 2:
				dev.SetStatus(uint16(next()) | uint16(next())<<8)
			}
			gs, ge := gpe.Registers()
			ps, pe := pm1.Registers()
			want := gs&ge != 0 || ps&pe&PM1SCIEvents != 0
			if got, _ := line.get(); got != want || sci.Level() != want {
				t.Fatalf("step %d: SCI %v, want %v (GPE %#x/%#x, PM1 %#x/%#x)", steps, got, want, gs, ge, ps, pe)
			}
		}
	})
}
