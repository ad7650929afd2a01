package mem_test

import (
	"encoding/binary"
	"testing"

	"rainforest/vmm/virtio/mem"
)

// FuzzRequests is a guest sending any sequence of requests while the host
// changes the requested size, and scribbling over the queue's rings. data
// is cut into steps of 12 bytes: byte 0 picks the action (bits 0-2: a
// request, a host SetRequested, garbage over the rings then a notify, a
// reset and re-activate), bytes 1-2 the request type, 3-10 the address
// (relative to the region when byte 0's bit 7 is set), 11 the block count
// (scaled by byte 0's bits 3-6). Whatever happens:
//   - nothing panics, and the fake backing never plugs or unplugs a block
//     twice (it panics when asked to);
//   - the device's plugged size is what the backing holds, at most the
//     region;
//   - a PLUG is acknowledged only when the plugged size stays within the
//     requested size;
//   - a STATE answer agrees with the backing.
func FuzzRequests(f *testing.F) {
	step := func(op byte, typ uint16, addr uint64, nb byte) []byte {
		b := make([]byte, 12)
		b[0] = op
		binary.LittleEndian.PutUint16(b[1:], typ)
		binary.LittleEndian.PutUint64(b[3:], addr)
		b[11] = nb
		return b
	}
	cat := func(ss ...[]byte) []byte {
		var out []byte
		for _, s := range ss {
			out = append(out, s...)
		}
		return out
	}
	f.Add(cat(step(1, 0, 8*blockSize, 0), step(0x80, mem.ReqPlug, 0, 4), step(0x80, mem.ReqState, 0, 8), step(0x80, mem.ReqUnplug, blockSize, 2), step(0x80, mem.ReqUnplugAll, 0, 0)))
	f.Add(cat(step(1, 0, regionSize, 0), step(0x80|0x78, mem.ReqPlug, 0, 255), step(3, 0, 0, 0), step(0x80, mem.ReqState, 0, 64)))
	f.Add(cat(step(0, mem.ReqPlug, regionAddr+4096, 1), step(2, 0xFFFF, ^uint64(0), 255), step(0x80, 9, 0, 0)))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := newRig(t)
		for i := 0; len(data) >= 12 && i < 100; i++ {
			s := data[:12]
			data = data[12:]
			typ := binary.LittleEndian.Uint16(s[1:])
			addr := binary.LittleEndian.Uint64(s[3:])
			if s[0]&0x80 != 0 {
				addr = regionAddr + addr%(regionSize+2*blockSize)
			}
			nb := uint16(s[11]) << ((s[0] >> 3) & 0xF)
			switch s[0] & 7 {
			case 1:
				_ = r.dev.SetRequested(addr % (2 * regionSize))
			case 2:
				// Garbage over the descriptor table and the ring,
				// then a notify: the device may give up on the
				// queue, never more.
				_ = r.mem.WriteAt(s, r.drv.Desc+uint64(s[11]%8)*16)
				_ = r.mem.WriteAt(s[:4], r.drv.Avail)
				r.dev.QueueNotify(0)
				r.dev.Reset()
				r.activate()
			case 3:
				r.dev.Reset()
				r.activate()
			default:
				before := r.dev.State()
				got, st := r.do(typ, addr, nb)
				after := r.dev.State()
				if typ == mem.ReqPlug && got == mem.RespACK && after.Plugged > before.Requested {
					t.Fatalf("plug acknowledged to %d beyond the requested %d", after.Plugged, before.Requested)
				}
				if typ == mem.ReqState && got == mem.RespACK {
					checkState(t, r, addr, nb, st)
				}
			}
			if p := r.dev.Plugged(); p != uint64(len(r.b.plugged))*blockSize || p > regionSize {
				t.Fatalf("plugged %d, backing holds %d blocks", p, len(r.b.plugged))
			}
		}
	})
}

// checkState checks a STATE answer against the backing.
func checkState(t *testing.T, r *rig, addr uint64, nb, st uint16) {
	t.Helper()
	var in, out int
	for i := uint64(0); i < uint64(nb); i++ {
		if r.b.plugged[addr-regionAddr+i*blockSize] {
			in++
		} else {
			out++
		}
	}
	want := uint16(mem.StateMixed)
	switch {
	case out == 0:
		want = mem.StatePlugged
	case in == 0:
		want = mem.StateUnplugged
	}
	if st != want {
		t.Fatalf("state %#x x%d: %d, backing says %d", addr, nb, st, want)
	}
}
