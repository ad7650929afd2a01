package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"rainforest/rfcom/fakesys"
	"rainforest/rfcom/ivshmem/ivshmemfake"
)

const ivshmemAddr = "0000:00:07.0"

func TestIvshmemUsageErrors(t *testing.T) {
	empty, err := fakesys.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"bench", "--ivshmem", "--to", "beta"}, "--to makes no sense with --ivshmem"},
		{[]string{"bench", "--ivshmem", "--serve", "--to", "beta"}, "--to makes no sense with --ivshmem"},
		{[]string{"bench", "--ivshmem"}, "--to NAME or --peer N"},
		{[]string{"bench", "--ivshmem", "--peers", "1", "--peer", "0"}, "--peers 1 outside"},
		{[]string{"bench", "--ivshmem", "--peers", "65537", "--peer", "0"}, "--peers 65537 outside"},
		{[]string{"bench", "--ivshmem", "--peer", "2"}, "--peer 2 outside the 2 peers"},
		{[]string{"bench", "--ivshmem", "--peers", "4", "--peer", "4"}, "--peer 4 outside the 4 peers"},
		{[]string{"bench", "--ivshmem", "--serve", "--peer", "1"}, "--serve takes no"},
		{[]string{"bench", "--peers", "3", "--peer", "1"}, "--peers needs --ivshmem"},
		{[]string{"bench", "--ivshmem", "--peer", "1", "--mode", "fast"}, "--mode"},
		{[]string{"bench", "--ivshmem=maybe"}, "invalid"},
	}
	for _, c := range cases {
		r := runWith(t, empty, "", c.args...)
		t.Run(strings.Join(c.args, "_"), func(t *testing.T) {
			checkFailure(t, r, 2, c.want)
			if !strings.HasPrefix(r.stderr, "rfcom: usage: ") {
				t.Errorf("stderr %q", r.stderr)
			}
		})
	}
	for _, args := range [][]string{{"bench", "--ivshmem", "--serve"}, {"bench", "--ivshmem", "--peer", "1"}} {
		checkFailure(t, runWith(t, empty, "", args...), 1, "no ivshmem device")
	}
	if r := runWith(t, empty, "", "help"); !strings.Contains(r.stdout, "bench --ivshmem") {
		t.Errorf("help: %+v", r)
	}
}

// ivshmemGuests builds two fake trees with an ivshmem function each (peer
// ids 0 and 1, one memory file) and starts a fake VMM delivering their
// doorbells.
func ivshmemGuests(t *testing.T, dev ivshmemfake.Device) (a, b *fakesys.Tree) {
	t.Helper()
	var err error
	if a, err = fakesys.New(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if b, err = fakesys.New(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	dev.Address, dev.ID, dev.MemSize, dev.UIO = ivshmemAddr, 0, 1<<20, true
	mem, err := ivshmemfake.Add(a, dev)
	if err != nil {
		t.Fatal(err)
	}
	dev.ID, dev.SharedMemory = 1, mem
	if _, err := ivshmemfake.Add(b, dev); err != nil {
		t.Fatal(err)
	}
	var peers []ivshmemfake.Peer
	for _, tr := range []*fakesys.Tree{a, b} {
		peers = append(peers, ivshmemfake.Peer{
			Resource0: filepath.Join(tr.Path(ivshmemAddr), "resource0"),
			UIO:       filepath.Join(tr.Dev, "uio0"),
		})
	}
	vmm, err := ivshmemfake.StartVMM(peers)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(vmm.Stop)
	return a, b
}

func TestIvshmemBench(t *testing.T) {
	a, b := ivshmemGuests(t, ivshmemfake.Device{})
	for _, mode := range []string{"poll", "irq"} {
		var wg sync.WaitGroup
		var srv result
		// The server is peer 1, the client peer 0.
		wg.Go(func() { srv = runWith(t, b, "", "bench", "--serve", "--ivshmem", "--mode", mode, "--timeout", "60s") })
		r := runWith(t, a, "", "bench", "--ivshmem", "--peers", "2", "--peer", "1", "--n", "20", "--mode", mode, "--timeout", "60s")
		wg.Wait()
		if r.code != 0 || srv.code != 0 || strings.Count(r.stdout, "\n") != 2 ||
			!strings.Contains(r.stdout, "bench: peer 1 mode "+mode+" 64-byte round trip median") ||
			!strings.Contains(r.stdout, "(20 round trips)") ||
			!strings.Contains(r.stdout, "bench: peer 1 mode "+mode+" throughput 20 of 20 messages") ||
			srv.stdout != "bench: served peer 0\n" {
			t.Fatalf("mode %s: client %+v server %+v", mode, r, srv)
		}
		fmt.Print(r.stdout)
	}
	// Peer 0 is the client itself.
	checkFailure(t, runWith(t, a, "", "bench", "--ivshmem", "--peer", "0", "--timeout", "5s"), 1, "peer 0 is this peer")
	// Nobody serves: the client gives up.
	checkFailure(t, runWith(t, a, "", "bench", "--ivshmem", "--peer", "1", "--mode", "poll", "--timeout", "200ms"), 1, "no answer from peer 1")
}

func TestIvshmemNoINTx(t *testing.T) {
	// QEMU's ivshmem-doorbell: no interrupt pin, so irq mode is refused
	// and poll mode works.
	a, b := ivshmemGuests(t, ivshmemfake.Device{NoPin: true})
	checkFailure(t, runWith(t, a, "", "bench", "--ivshmem", "--peer", "1", "--mode", "irq"), 1, "use --mode poll")
	var wg sync.WaitGroup
	var srv result
	wg.Go(func() { srv = runWith(t, b, "", "bench", "--serve", "--ivshmem", "--mode", "poll", "--timeout", "60s") })
	r := runWith(t, a, "", "bench", "--ivshmem", "--peer", "1", "--n", "10", "--mode", "poll", "--timeout", "60s")
	wg.Wait()
	if r.code != 0 || srv.code != 0 || !strings.Contains(r.stdout, "10 of 10 messages") {
		t.Fatalf("client %+v server %+v", r, srv)
	}
	// ivshmem-plain is refused.
	plain, err := fakesys.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ivshmemfake.Add(plain, ivshmemfake.Device{Address: ivshmemAddr, MemSize: 1 << 20, NoBAR1: true, UIO: true}); err != nil {
		t.Fatal(err)
	}
	checkFailure(t, runWith(t, plain, "", "bench", "--ivshmem", "--peer", "1", "--mode", "poll"), 1, "ivshmem-plain")
	// A group too big for the shared memory.
	checkFailure(t, runWith(t, a, "", "bench", "--ivshmem", "--peers", "200", "--peer", "1", "--mode", "poll"), 1, "exceed")
}
