package fs_test

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"

	"rainforest/vmm/eventfd"
	vt "rainforest/vmm/virtio/virtiotest"
)

// answer waits for the next used element of queue q (an interrupt on its
// call eventfd) and returns its length and the FUSE out header at out.
func (r *rig) answer(t *testing.T, q int, head uint16, out uint64) (n uint32, errno int32, unique uint64) {
	t.Helper()
	never, err := eventfd.New()
	if err != nil {
		t.Fatal(err)
	}
	defer never.Close()
	drv := r.drivers[q]
	for {
		id, length, ok := drv.TakeUsed()
		if ok {
			if id != head {
				t.Fatalf("queue %d: used element %d, want %d", q, id, head)
			}
			n = length
			break
		}
		if _, err := eventfd.Wait(never, r.bells.calls[q:q+1]); err != nil {
			t.Fatal(err)
		}
	}
	if n >= 16 {
		hdr, _ := r.mem.Slice(out, 16)
		le := binary.LittleEndian
		errno, unique = int32(le.Uint32(hdr[4:])), le.Uint64(hdr[8:])
	}
	return n, errno, unique
}

// fuseRequest puts a FUSE request (opcode, unique) at in with room for
// the answer at out on queue q's ring and returns its head; kick
// notifies the queue; seen is how many used elements the driver took.
func (r *rig) fuseRequest(t *testing.T, q int, opcode uint32, unique uint64, in, out uint64, kick bool, seen uint16) uint16 {
	t.Helper()
	req := make([]byte, fuseInHeader+fuseGetattrIn)
	le := binary.LittleEndian
	le.PutUint32(req[0:], uint32(len(req)))
	le.PutUint32(req[4:], opcode)
	le.PutUint64(req[8:], unique)
	le.PutUint64(req[16:], rootNode)
	if err := r.mem.WriteAt(req, in); err != nil {
		t.Fatal(err)
	}
	bufs := []vt.Buf{{Addr: in, Len: uint32(len(req))}}
	if out != 0 {
		bufs = append(bufs, vt.Buf{Addr: out, Len: 256, Write: true})
	}
	r.drivers[q].SetUsedEvent(seen) // an interrupt at the next used element
	head := r.drivers[q].AddChain(bufs...)
	if kick {
		if err := r.bells.kicks[q].Signal(); err != nil {
			t.Fatal(err)
		}
	}
	return head
}

// Once virtiofsd has died, the guest's requests get EIO from the VMM
// instead of waiting for ever: one left on the ring before (never kicked:
// the back end had not answered it), new ones, and a FORGET (which takes
// no answer) on the high-priority queue.
func TestFailedBackEndAnswersEIO(t *testing.T) {
	r := newRig(t)
	r.activate(t, &vt.IRQ{})
	r.init(t)
	pending := r.fuseRequest(t, 1, fuseGetattr, 1001, 0x50000, 0x51000, false, r.taken)
	if err := r.kill(); err != nil {
		t.Fatal(err)
	}
	<-r.d.Done()
	if n, errno, unique := r.answer(t, 1, pending, 0x51000); n != 16 || errno != -int32(unix.EIO) || unique != 1001 {
		t.Fatalf("the request left pending: %d bytes, error %d, unique %d; want EIO for 1001", n, errno, unique)
	}
	head := r.fuseRequest(t, 1, fuseGetattr, 1003, 0x52000, 0x53000, true, r.taken+1)
	if n, errno, unique := r.answer(t, 1, head, 0x53000); n != 16 || errno != -int32(unix.EIO) || unique != 1003 {
		t.Fatalf("a new request: %d bytes, error %d, unique %d; want EIO for 1003", n, errno, unique)
	}
	const fuseForget = 2
	forget := r.fuseRequest(t, 0, fuseForget, 1005, 0x54000, 0, true, 0)
	if n, _, _ := r.answer(t, 0, forget, 0); n != 0 {
		t.Fatalf("FORGET answered with %d bytes, want none", n)
	}
	// A reset ends it; the device stays failed.
	r.d.Reset()
}
