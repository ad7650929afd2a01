package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"rainforest/ficm/board"
	"rainforest/ficm/endpoint"
	"rainforest/rfcom"
	"rainforest/rfcom/fakesys"
	"rainforest/vmm/shmem/abi"
)

type result struct {
	code           int
	stdout, stderr string
}

func runWith(t *testing.T, tr *fakesys.Tree, stdin string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errb, getenvOf(tr))
	return result{code, out.String(), errb.String()}
}

// getenvOf returns the environment of a fake guest (none if tr is nil).
func getenvOf(tr *fakesys.Tree) func(string) string {
	return func(k string) string {
		switch {
		case tr == nil:
			return ""
		case k == "RFCOM_SYS_ROOT":
			return tr.Sys
		case k == "RFCOM_DEV_ROOT":
			return tr.Dev
		case k == "RFCOM_SOCKET":
			return socketOf(tr)
		}
		return ""
	}
}

// socketOf is the daemon socket of a fake guest.
func socketOf(tr *fakesys.Tree) string { return filepath.Join(filepath.Dir(tr.Sys), "rfcom.sock") }

// checkFailure checks the exit code and that stderr is one "rfcom: " line
// containing want.
func checkFailure(t *testing.T, r result, code int, want string) {
	t.Helper()
	if r.code != code {
		t.Errorf("exit %d, want %d (stderr %q)", r.code, code, r.stderr)
	}
	if !strings.HasPrefix(r.stderr, "rfcom: ") || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, want) {
		t.Errorf("stderr %q, want one rfcom: line containing %q", r.stderr, want)
	}
}

func TestUsageErrors(t *testing.T) {
	empty, err := fakesys.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		want string
	}{
		{nil, "no command"},
		{[]string{"frobnicate"}, "unknown command"},
		{[]string{"ls", "extra"}, "unexpected argument"},
		{[]string{"ls", "--bogus"}, "flag provided but not defined"},
		{[]string{"send", "hi"}, "--to NAME or --peer N"},
		{[]string{"send", "--to", "a", "--peer", "2", "hi"}, "exclusive"},
		{[]string{"send", "--peer", "2", "--port", "70000", "hi"}, "--port 70000"},
		{[]string{"send", "--peer", "x"}, "invalid value"},
		{[]string{"send", "--peer", "2", "--timeout", "soon"}, "invalid value"},
		{[]string{"send", "--peer", "2", ""}, "message of 0 bytes"},
		{[]string{"recv", "--count", "-1"}, "--count -1"},
		{[]string{"recv", "x"}, "unexpected argument"},
		{[]string{"bench"}, "--to NAME or --peer N"},
		{[]string{"bench", "--peer", "1", "--mode", "fast"}, "--mode"},
		{[]string{"bench", "--serve", "--peer", "1"}, "--serve takes no"},
		{[]string{"bench", "--peer", "1", "--n", "0"}, "--n 0"},
		{[]string{"map"}, "one segment NAME"},
		{[]string{"map", "a", "b"}, "one segment NAME"},
		{[]string{"map", "a", "--offset", "-1"}, "negative"},
		{[]string{"control", "--count", "-2"}, "--count -2"},
		{[]string{"board", "x"}, "unexpected argument"},
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
	if r := runWith(t, empty, "", "help"); r.code != 0 || !strings.Contains(r.stdout, "rfcom COMMAND") {
		t.Errorf("help: %+v", r)
	}
	if r := runWith(t, empty, "", "send", "-h"); r.code != 0 || !strings.Contains(r.stdout, "rfcom COMMAND") {
		t.Errorf("send -h: %+v", r)
	}
}

func TestNoDevice(t *testing.T) {
	empty, err := fakesys.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if r := runWith(t, empty, "", "ls"); r.code != 0 || r.stdout != "ficm: no device\nsegments: none\n" {
		t.Errorf("ls: %+v", r)
	}
	for _, args := range [][]string{
		{"board"}, {"send", "--peer", "1", "x"}, {"recv"}, {"control", "--timeout", "1s"}, {"bench", "--serve"},
	} {
		checkFailure(t, runWith(t, empty, "", args...), 1, "no FICM device")
	}
	checkFailure(t, runWith(t, empty, "", "map", "data"), 1, `segment not granted: no segment "data"`)
}

const (
	ficmAddr = "0000:00:04.0"
	groupOut = 32768
)

// supervisorTree is where twoGuests puts the function of peer 0 (the
// supervisor) of guest a's group.
func supervisorTree(a *fakesys.Tree) string {
	return filepath.Join(filepath.Dir(a.Sys), "supervisor")
}

// twoGuests builds the fake trees of peers 1 and 2 of a 3-peer FICM group
// sharing one memory file, every peer alive and a board published; peer 1
// also has two segments. Peer 0's function is in supervisorTree(a), and a
// fake VMM delivers the three peers' doorbells.
func twoGuests(t *testing.T) (a, b *fakesys.Tree) {
	t.Helper()
	var err error
	if a, err = fakesys.New(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if b, err = fakesys.New(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	ficm := fakesys.Device{Address: ficmAddr, Protocol: abi.ProtocolFICM, Name: "ficm", Peers: 3, ID: 1, OutputSize: groupOut, UIO: true}
	mem, err := a.Add(ficm)
	if err != nil {
		t.Fatal(err)
	}
	ficm.ID, ficm.SharedMemory = 2, mem
	if _, err := b.Add(ficm); err != nil {
		t.Fatal(err)
	}
	sup, err := fakesys.New(supervisorTree(a))
	if err != nil {
		t.Fatal(err)
	}
	ficm.ID, ficm.UIO = 0, false
	if _, err := sup.Add(ficm); err != nil {
		t.Fatal(err)
	}
	regs := func(tr *fakesys.Tree) string { return filepath.Join(tr.Path(ficmAddr), "resource0") }
	vmm, err := fakesys.StartVMM(fakesys.ShmemRegisters(), []fakesys.Peer{
		{ID: 0, Resource0: regs(sup)},
		{ID: 1, Resource0: regs(a), UIO: filepath.Join(a.Dev, "uio0")},
		{ID: 2, Resource0: regs(b), UIO: filepath.Join(b.Dev, "uio0")},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(vmm.Stop)
	for _, d := range []fakesys.Device{
		{Address: "0000:00:05.0", Protocol: abi.ProtocolSegment, Name: "data", Peers: 2, ID: 0, RWSize: 8192, OutputSize: 4096},
		{Address: "0000:00:06.0", Protocol: abi.ProtocolSegment, Name: "config", Peers: 2, ID: 1, RWSize: 4096, OutputSize: 4096, ReadOnly: true},
	} {
		if _, err := a.Add(d); err != nil {
			t.Fatal(err)
		}
	}
	l := ficm.Layout()
	state := make([]byte, 12)
	for p := range 3 {
		binary.LittleEndian.PutUint32(state[abi.StateEntryOffset(p):], abi.StateAlive)
	}
	if err := a.WriteMemory(ficmAddr, 0, state); err != nil {
		t.Fatal(err)
	}
	page := make([]byte, board.PageSize)
	w, err := board.NewWriter(page)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Publish([]board.Entry{
		{Peer: 1, State: board.StateRunning, Name: "alpha", CommCores: []int{2, 3}},
		{Peer: 2, State: board.StateRunning, Name: "beta", MAC: [6]byte{0x52, 0x54, 0, 0, 0, 2}},
	}); err != nil {
		t.Fatal(err)
	}
	if err := a.WriteMemory(ficmAddr, int64(l.OutputOffset(0)), page); err != nil {
		t.Fatal(err)
	}
	if _, err := endpoint.NewLayout(3, rfcom.Slots); err != nil {
		t.Fatal(err)
	}
	return a, b
}

func TestLsBoardMap(t *testing.T) {
	a, _ := twoGuests(t)
	r := runWith(t, a, "", "ls")
	want := []string{
		"peer 1 of 3 (ficm device 0000:00:04.0)",
		"segment data 8192 bytes rw (device 0000:00:05.0)",
		"segment config 4096 bytes ro (device 0000:00:06.0)",
		"board seq 4, supervisor peer 0, 2 subOS(es)",
		"  alpha peer 1 running cores 2-3",
		"  beta peer 2 running mac 52:54:00:00:00:02",
	}
	if r.code != 0 || r.stdout != strings.Join(want, "\n")+"\n" {
		t.Errorf("ls = %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := runWith(t, a, "", "board"); r.code != 0 || !strings.Contains(r.stdout, "beta peer 2") {
		t.Errorf("board = %+v", r)
	}

	if r := runWith(t, a, "", "map", "data", "--write", "hello", "--offset", "100"); r.code != 0 || r.stdout != "" {
		t.Errorf("map --write = %+v", r)
	}
	if r := runWith(t, a, "", "map", "--offset", "100", "--read", "16", "data"); r.code != 0 || r.stdout != "hello\n" {
		t.Errorf("map --read = %+v", r)
	}
	if r := runWith(t, a, "", "map", "data"); r.code != 0 || r.stdout != "segment data 8192 bytes rw\n" {
		t.Errorf("map = %+v", r)
	}
	checkFailure(t, runWith(t, a, "", "map", "config", "--write", "x"), 1, `segment "config" is read-only`)
	checkFailure(t, runWith(t, a, "", "map", "data", "--write", "xyz", "--offset", "8190"), 1, "overruns")
	checkFailure(t, runWith(t, a, "", "map", "data", "--read", "10", "--offset", "8190"), 1, "overruns")
	if r := runWith(t, a, "", "map", "config", "--read", "4"); r.code != 0 || r.stdout != "\n" {
		t.Errorf("map config --read = %+v", r)
	}

	// A corrupt board is an error for board, a line for ls.
	if err := a.WriteMemory(ficmAddr, 4096, make([]byte, 8)); err != nil {
		t.Fatal(err)
	}
	checkFailure(t, runWith(t, a, "", "board"), 1, "corrupt")
	if r := runWith(t, a, "", "ls"); r.code != 0 || !strings.Contains(r.stdout, "board: unavailable") {
		t.Errorf("ls with corrupt board = %+v", r)
	}
}

// retry runs args until it succeeds (the other side may not listen yet).
func retry(t *testing.T, tr *fakesys.Tree, stdin string, args ...string) result {
	t.Helper()
	var r result
	for range 100 {
		if r = runWith(t, tr, stdin, args...); r.code == 0 || !strings.Contains(r.stderr, "refused") {
			return r
		}
		time.Sleep(20 * time.Millisecond)
	}
	return r
}

func TestSendRecv(t *testing.T) {
	a, b := twoGuests(t)
	var wg sync.WaitGroup
	var got result
	wg.Go(func() { got = runWith(t, b, "", "recv", "--port", "5", "--timeout", "30s") })
	r := retry(t, a, "", "send", "--to", "beta", "--port", "5", "one", "two words", "three")
	wg.Wait()
	if r.code != 0 || got.code != 0 || got.stdout != "one\ntwo words\nthree\n" {
		t.Fatalf("send %+v, recv %+v", r, got)
	}
	// Stdin lines, --count, --peer.
	wg.Go(func() { got = runWith(t, a, "", "recv", "--port", "6", "--count", "2", "--timeout", "30s") })
	r = retry(t, b, "first\n\nsecond\n", "send", "--peer", "1", "--port", "6")
	wg.Wait()
	if r.code != 0 || got.code != 0 || got.stdout != "first\nsecond\n" {
		t.Fatalf("send %+v, recv %+v", r, got)
	}
	checkFailure(t, runWith(t, a, "", "send", "--to", "gamma", "x"), 1, `"gamma" is not on the board`)
	// Nobody runs on peer 2 now: the dial times out.
	checkFailure(t, runWith(t, a, "", "send", "--peer", "2", "--port", "9", "--timeout", "100ms", "x"), 1, "deadline exceeded")
	checkFailure(t, runWith(t, a, "", "recv", "--timeout", "50ms"), 1, "deadline exceeded")
	checkFailure(t, runWith(t, a, "", "control", "--timeout", "50ms"), 1, "deadline exceeded")
}

func TestBench(t *testing.T) {
	a, b := twoGuests(t)
	for _, mode := range []string{"poll", "irq"} {
		var wg sync.WaitGroup
		var srv result
		wg.Go(func() { srv = runWith(t, b, "", "bench", "--serve", "--mode", mode, "--timeout", "60s") })
		r := runWith(t, a, "", "bench", "--to", "beta", "--n", "20", "--mode", mode, "--timeout", "60s")
		wg.Wait()
		if r.code != 0 || srv.code != 0 || strings.Count(r.stdout, "\n") != 2 ||
			!strings.Contains(r.stdout, "round trip median") || !strings.Contains(r.stdout, "20 of 20 messages") ||
			srv.stdout != "bench: served peer 1\n" {
			t.Fatalf("mode %s: client %+v server %+v", mode, r, srv)
		}
		fmt.Print(r.stdout)
	}
}
