package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"rainforest/rfcom"
	"rainforest/rfcom/fakesys"
	"rainforest/vmm/shmem/abi"
)

func TestFloodUsageErrors(t *testing.T) {
	empty, err := fakesys.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"flood"}, "doorbell or msg"},
		{[]string{"flood", "bell"}, `flood "bell"`},
		{[]string{"flood", "doorbell"}, "--peer N is required"},
		{[]string{"flood", "doorbell", "--peer", "4096"}, "--peer 4096"},
		{[]string{"flood", "doorbell", "--peer", "1", "--vector", "65536"}, "--vector 65536"},
		{[]string{"flood", "doorbell", "--peer", "1", "--vector", "-1"}, "--vector -1"},
		{[]string{"flood", "doorbell", "--peer", "1", "--duration", "1s", "--count", "5"}, "exclusive"},
		{[]string{"flood", "doorbell", "--peer", "1", "--count", "-1"}, "--count -1"},
		{[]string{"flood", "doorbell", "--peer", "1", "--count", "0"}, "--count 0"},
		{[]string{"flood", "doorbell", "--peer", "1", "--duration", "0s"}, "--duration 0"},
		{[]string{"flood", "doorbell", "--peer", "1", "--duration", "-1s"}, "negative"},
		{[]string{"flood", "doorbell", "--peer", "1", "x"}, "unexpected argument"},
		{[]string{"flood", "msg", "--to", ""}, "--to is empty"},
		{[]string{"flood", "msg", "--count", "1", "--duration", "1s"}, "exclusive"},
		{[]string{"flood", "msg", "x"}, "unexpected argument"},
		{[]string{"flood", "msg", "--bogus"}, "flag provided but not defined"},
	}
	for _, c := range cases {
		r := runWith(t, empty, "", c.args...)
		t.Run(strings.Join(c.args, "_"), func(t *testing.T) {
			checkFailure(t, r, 2, c.want)
			if !strings.HasPrefix(r.stderr, "rfcom: usage: flood: ") {
				t.Errorf("stderr %q", r.stderr)
			}
		})
	}
	for _, args := range [][]string{{"flood", "--help"}, {"flood", "doorbell", "-h"}, {"flood", "msg", "--help"}} {
		if r := runWith(t, empty, "", args...); r.code != 0 || !strings.Contains(r.stdout, "flood doorbell --peer N") {
			t.Errorf("%v: %+v", args, r)
		}
	}
	checkFailure(t, runWith(t, empty, "", "flood", "doorbell", "--peer", "1", "--count", "1"), 1, "no FICM device")
	checkFailure(t, runWith(t, empty, "", "flood", "msg", "--count", "1"), 1, "no FICM device")
}

var (
	doorbellLine = regexp.MustCompile(`^RF-FLOOD doorbells=(\d+) seconds=\d+\.\d{3} rate=\d+\n$`)
	messageLine  = regexp.MustCompile(`^RF-FLOOD messages=(\d+) refused=(\d+) seconds=\d+\.\d{3}\n$`)
)

// floodCount returns the number in group i of re's match of out.
func floodCount(t *testing.T, re *regexp.Regexp, out string, i int) uint64 {
	t.Helper()
	m := re.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("output %q does not match %s", out, re)
	}
	n, err := strconv.ParseUint(m[i], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// register reads the 32-bit register at off of the FICM function's
// register BAR file in tr.
func register(t *testing.T, tr *fakesys.Tree, off int) uint32 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(tr.Path(ficmAddr), "resource0"))
	if err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint32(b[off:])
}

// The doorbell flood writes the target and vector into the FICM device's
// DOORBELL register, as many times as asked, and leaves the device's
// interrupts alone (it does not bind uio nor write INT_CONTROL).
func TestFloodDoorbellRegister(t *testing.T) {
	tr, err := fakesys.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// A segment device first: the flood must pick the FICM one.
	for _, d := range []fakesys.Device{
		{Address: "0000:00:03.0", Protocol: abi.ProtocolSegment, Name: "data", Peers: 2, ID: 0, RWSize: 4096, OutputSize: 4096},
		{Address: ficmAddr, Protocol: abi.ProtocolFICM, Name: "ficm", Peers: 3, ID: 1, OutputSize: groupOut},
	} {
		if _, err := tr.Add(d); err != nil {
			t.Fatal(err)
		}
	}
	r := runWith(t, tr, "", "flood", "doorbell", "--peer", "2", "--vector", "5", "--count", "1000")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("flood doorbell: %+v", r)
	}
	if n := floodCount(t, doorbellLine, r.stdout, 1); n != 1000 {
		t.Errorf("doorbells=%d, want 1000", n)
	}
	if got, want := register(t, tr, abi.RegDoorbell), abi.Doorbell(2, 5); got != want {
		t.Errorf("DOORBELL = %#x, want %#x", got, want)
	}
	if v := register(t, tr, abi.RegIntControl); v != 0 {
		t.Errorf("INT_CONTROL = %#x after the flood, want it untouched (0)", v)
	}
	if v := register(t, tr, abi.RegState); v != 0 {
		t.Errorf("STATE = %#x after the flood, want it untouched (0)", v)
	}
	// The default vector is the FICM one.
	if r := runWith(t, tr, "", "flood", "doorbell", "--peer", "0", "--count", "1"); r.code != 0 {
		t.Fatalf("flood doorbell --peer 0: %+v", r)
	}
	if got, want := register(t, tr, abi.RegDoorbell), abi.Doorbell(0, rfcom.Vector); got != want {
		t.Errorf("DOORBELL = %#x, want %#x", got, want)
	}
	checkFailure(t, runWith(t, tr, "", "flood", "doorbell", "--peer", "3", "--count", "1"), 1, "peer 3 outside the 3 peers")
}

// A flood that its context (SIGINT, SIGTERM) ends still reports.
func TestFloodDoorbellInterrupted(t *testing.T) {
	a, _ := twoGuests(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errb bytes.Buffer
	code := runContext(ctx, []string{"flood", "doorbell", "--peer", "2", "--duration", "1h"}, strings.NewReader(""), &out, &errb, getenvOf(a))
	if code != 0 || errb.Len() != 0 {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	if n := floodCount(t, doorbellLine, out.String(), 1); n != 0 {
		t.Errorf("doorbells=%d after an interrupt before the start, want 0", n)
	}
}

// The flooded peer's function sees the vector: the fake VMM delivers the
// doorbells into its INT_STATUS.
func TestFloodDoorbellReachesPeer(t *testing.T) {
	a, b := twoGuests(t)
	r := runWith(t, a, "", "flood", "doorbell", "--peer", "2", "--vector", "3", "--count", "200")
	if r.code != 0 || floodCount(t, doorbellLine, r.stdout, 1) != 200 {
		t.Fatalf("flood doorbell: %+v", r)
	}
	// The fake VMM polls the registers: wait for the last doorbell.
	deadline := time.Now().Add(10 * time.Second)
	for register(t, b, abi.RegIntStatus)&(1<<3) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("peer 2 never saw vector 3")
		}
		time.Sleep(time.Millisecond)
	}
}

// flood msg sends numbered datagrams that the peer receives in order.
func TestFloodMsgToPeer(t *testing.T) {
	a, b := twoGuests(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nb, err := rfcom.Open(ctx, rfcom.Options{SysRoot: b.Sys, DevRoot: b.Dev})
	if err != nil {
		t.Fatal(err)
	}
	defer nb.Close()
	const count = 300
	r := runWith(t, a, "", "flood", "msg", "--to", "beta", "--count", strconv.Itoa(count))
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("flood msg: %+v", r)
	}
	if n := floodCount(t, messageLine, r.stdout, 1); n != count {
		t.Errorf("messages=%d, want %d", n, count)
	}
	for i := range count {
		d, err := nb.Recv(ctx)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if d.From != 1 || d.Type != floodDatagram || len(d.Payload) != rfcom.MaxDatagram || binary.LittleEndian.Uint64(d.Payload) != uint64(i) {
			t.Fatalf("datagram %d = from %d type %#x %d bytes seq %d", i, d.From, d.Type, len(d.Payload), binary.LittleEndian.Uint64(d.Payload))
		}
	}
	// By peer id too.
	if r := runWith(t, a, "", "flood", "msg", "--to", "2", "--count", "1"); r.code != 0 || floodCount(t, messageLine, r.stdout, 1) != 1 {
		t.Fatalf("flood msg --to 2: %+v", r)
	}
	if d, err := nb.Recv(ctx); err != nil || d.From != 1 || binary.LittleEndian.Uint64(d.Payload) != 0 {
		t.Fatalf("datagram after --to 2 = %+v, %v", d, err)
	}
}

// Nobody reads the supervisor's ring in the fake group: the flood fills
// it, then counts refusals until its time is up.
func TestFloodMsgFullRing(t *testing.T) {
	a, _ := twoGuests(t)
	r := runWith(t, a, "", "flood", "msg", "--duration", "100ms")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("flood msg: %+v", r)
	}
	if n := floodCount(t, messageLine, r.stdout, 1); n == 0 || n > rfcom.Slots {
		t.Errorf("messages=%d into an unread %d-slot ring", n, rfcom.Slots)
	}
}

func TestFloodMsgBadTarget(t *testing.T) {
	a, _ := twoGuests(t)
	checkFailure(t, runWith(t, a, "", "flood", "msg", "--to", "1", "--count", "1"), 1, "no such peer: 1")
	checkFailure(t, runWith(t, a, "", "flood", "msg", "--to", "3", "--count", "1"), 1, "no such peer: 3")
	checkFailure(t, runWith(t, a, "", "flood", "msg", "--to", "gamma", "--count", "1"), 1, `"gamma" is not on the board`)
	startDaemon(t, a)
	checkFailure(t, runWith(t, a, "", "flood", "msg", "--count", "1"), 1, "stop it to run flood msg")
	// The doorbell flood needs no node: it runs beside the daemon.
	if r := runWith(t, a, "", "flood", "doorbell", "--peer", "2", "--count", "10"); r.code != 0 {
		t.Errorf("flood doorbell beside the daemon: %+v", r)
	}
}

func TestRunFloodRefusals(t *testing.T) {
	// Every other attempt is refused: a count counts the ones that went
	// through.
	i := 0
	r, err := runFlood(context.Background(), floodLimit{count: 10}, func() (bool, error) {
		i++
		return i%2 == 0, nil
	})
	if err != nil || r.done != 10 || r.refused != 10 {
		t.Errorf("runFlood = %+v, %v; want 10 done, 10 refused", r, err)
	}
}
