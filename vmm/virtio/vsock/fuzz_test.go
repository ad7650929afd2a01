package vsock_test

import (
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"

	"context"

	"rainforest/vmm/virtio/vsock"
)

// FuzzPackets is a guest sending any sequence of packets: data is cut
// into packets, each a 2-byte little-endian length (at most maxFuzzPacket)
// and that many bytes posted as one tx chain. Guest-initiated connections
// to even ports reach a host peer that reads everything; odd ports are
// refused. Whatever the guest sends:
//   - every tx chain is completed (the guest keeps receive buffers
//     posted, so RSTs never pile up);
//   - every packet delivered to the guest is well formed (host CID to the
//     guest's, stream, a length that matches what was written);
//   - connections stay within MaxConns;
//   - a packet CheckGuest refuses, or one too short for a header, is
//     counted as malformed;
//   - Close returns (every goroutine stops).
func FuzzPackets(f *testing.F) {
	pkt := func(h vsock.Header, payload []byte) []byte {
		h.Len = uint32(len(payload))
		b := make([]byte, 2+vsock.HeaderLen+len(payload))
		binary.LittleEndian.PutUint16(b, uint16(vsock.HeaderLen+len(payload)))
		h.Encode(b[2:])
		copy(b[2+vsock.HeaderLen:], payload)
		return b
	}
	cat := func(ps ...[]byte) []byte {
		var out []byte
		for _, p := range ps {
			out = append(out, p...)
		}
		return out
	}
	sh := hdr(vsock.OpShutdown, 5, 6)
	sh.Flags = vsock.ShutdownSend | vsock.ShutdownRcv
	f.Add(cat(pkt(hdr(vsock.OpRequest, 5, 6), nil), pkt(hdr(vsock.OpRW, 5, 6), []byte("hello")), pkt(sh, nil)))
	f.Add(cat(pkt(hdr(vsock.OpRequest, 5, 7), nil), pkt(hdr(vsock.OpCreditRequest, 5, 7), nil), pkt(hdr(vsock.OpRST, 5, 7), nil)))
	f.Add(cat(pkt(hdr(vsock.OpRW, 1, 2), []byte("x")), pkt(hdr(9, 1, 2), nil), []byte{3, 0, 1, 2, 3}))
	f.Fuzz(func(t *testing.T, data []byte) {
		const maxFuzzPacket = 512
		var peers sync.WaitGroup
		dial := func(_ context.Context, port uint32) (net.Conn, error) {
			if port%2 == 1 {
				return nil, io.ErrClosedPipe
			}
			a, b := net.Pipe()
			peers.Add(1)
			go func() { // owner: the test; ends when the device closes a
				defer peers.Done()
				io.Copy(io.Discard, b)
				b.Close()
			}()
			return a, nil
		}
		r := newRig(t, vsock.Options{Dial: dial})
		malformed := 0
		for len(data) >= 2 {
			n := min(int(binary.LittleEndian.Uint16(data)), maxFuzzPacket, len(data)-2)
			b := data[2 : 2+n]
			data = data[2+n:]
			if h, err := vsock.DecodeHeader(b); err != nil || h.CheckGuest(guestCID, uint64(n-vsock.HeaderLen)) != nil {
				malformed++
			}
			if !r.post(b) {
				t.Fatal("tx chain not completed")
			}
			for {
				if _, _, ok := r.tryRecv(); !ok { // checks the header
					break
				}
			}
			s := r.dev.Stats()
			if s.Conns > vsock.MaxConns {
				t.Fatalf("%d connections", s.Conns)
			}
			if s.Malformed < malformed {
				t.Fatalf("%d malformed packets counted, at least %d sent", s.Malformed, malformed)
			}
		}
		if r.irq.NeedsResetCount() != 0 {
			t.Fatal("well-formed queues needed a reset")
		}
		r.dev.Close()
		peers.Wait()
	})
}
