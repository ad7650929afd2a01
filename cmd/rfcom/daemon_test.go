package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"rainforest/ficm/control"
	"rainforest/ficm/endpoint"
	"rainforest/ficm/queue"
	"rainforest/rfcom"
	"rainforest/rfcom/device"
	"rainforest/rfcom/fakesys"
	"rainforest/rfcom/local"
)

// syncBuffer is a bytes.Buffer written by one goroutine and read by
// another.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// daemonRun is an in-process `rfcom daemon`.
type daemonRun struct {
	stdout, stderr syncBuffer
	stop           func() int // stops it and returns its exit status
}

// startDaemon runs `rfcom daemon` for tr until the test ends, and waits
// until it answers.
func startDaemon(t *testing.T, tr *fakesys.Tree) *daemonRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d := &daemonRun{}
	done := make(chan int, 1)
	go func() {
		done <- runContext(ctx, []string{"daemon"}, strings.NewReader(""), &d.stdout, &d.stderr, getenvOf(tr))
	}()
	var once sync.Once
	code := -1
	d.stop = func() int {
		once.Do(func() {
			cancel()
			select {
			case code = <-done:
			case <-time.After(20 * time.Second):
				t.Errorf("daemon did not stop: %s", d.stderr.String())
			}
		})
		return code
	}
	t.Cleanup(func() { d.stop() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if ok, _ := local.Running(ctx, socketOf(tr)); ok {
			return d
		}
		select {
		case c := <-done:
			t.Fatalf("daemon exited %d: %s", c, d.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon does not answer: %s", d.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// supervisor returns a bare endpoint for peer 0 of the FICM group of the
// fake guest a (from twoGuests), to send control messages with.
func supervisor(t *testing.T, a *fakesys.Tree) *endpoint.Endpoint {
	t.Helper()
	sup, err := fakesys.New(supervisorTree(a)) // the paths of the tree twoGuests filled
	if err != nil {
		t.Fatal(err)
	}
	infos, err := device.Find(sup.Sys)
	if err != nil || len(infos) != 1 {
		t.Fatalf("find: %v, %v", infos, err)
	}
	d, err := device.Open(context.Background(), sup.Sys, sup.Dev, infos[0], device.WithoutInterrupts())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	ep, err := d.NewEndpoint(device.EndpointOptions{
		Slots: rfcom.Slots, Vector: rfcom.Vector, SectionOffset: rfcom.SectionOffset, UseStateTable: true, RequireFICM: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	return ep
}

func sendControl(t *testing.T, ep *endpoint.Endpoint, to int, m queue.Message) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for err := ep.Send(to, m); err != nil; err = ep.Send(to, m) {
		if !errors.Is(err, endpoint.ErrFull) || time.Now().After(deadline) {
			t.Fatalf("supervisor send: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitFor polls until cond holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDaemon(t *testing.T) {
	a, b := twoGuests(t)
	lsDirect, boardDirect := runWith(t, a, "", "ls"), runWith(t, a, "", "board")
	if lsDirect.code != 0 || boardDirect.code != 0 {
		t.Fatalf("direct: %+v %+v", lsDirect, boardDirect)
	}
	da, db := startDaemon(t, a), startDaemon(t, b)

	// ls and board print the same through the daemon.
	if r := runWith(t, a, "", "ls"); r != lsDirect {
		t.Errorf("ls through the daemon:\n%+v\nwant\n%+v", r, lsDirect)
	}
	if r := runWith(t, a, "", "board"); r != boardDirect {
		t.Errorf("board through the daemon:\n%+v\nwant\n%+v", r, boardDirect)
	}
	checkFailure(t, runWith(t, a, "", "daemon"), 1, "a daemon already listens on")
	checkFailure(t, runWith(t, a, "", "daemon", "x"), 2, "unexpected argument")
	checkFailure(t, runWith(t, a, "", "bench", "--peer", "2", "--n", "1"), 1, "the rfcom daemon on "+socketOf(a)+" holds the FICM device")

	// Two receivers wait on one port at once; two senders, one of them
	// reading stdin, each reach one of them.
	var wg sync.WaitGroup
	var recvs [2]result
	for i := range recvs {
		wg.Go(func() { recvs[i] = runWith(t, b, "", "recv", "--port", "5", "--timeout", "30s") })
	}
	s1 := retry(t, a, "", "send", "--to", "beta", "--port", "5", "one", "two words")
	s2 := retry(t, a, "x\n\ny\n", "send", "--peer", "2", "--port", "5")
	wg.Wait()
	if s1.code != 0 || s2.code != 0 {
		t.Fatalf("send: %+v %+v", s1, s2)
	}
	got := []string{recvs[0].stdout, recvs[1].stdout}
	slices.Sort(got)
	if recvs[0].code != 0 || recvs[1].code != 0 || !slices.Equal(got, []string{"one\ntwo words\n", "x\ny\n"}) {
		t.Fatalf("recv: %+v", recvs)
	}
	// --count, the other direction.
	var r result
	wg.Go(func() { r = runWith(t, a, "", "recv", "--port", "6", "--count", "1", "--timeout", "30s") })
	if s := retry(t, b, "", "send", "--peer", "1", "--port", "6", "first"); s.code != 0 {
		t.Fatalf("send: %+v", s)
	}
	wg.Wait()
	if r.code != 0 || r.stdout != "first\n" {
		t.Fatalf("recv --count 1: %+v", r)
	}
	checkFailure(t, runWith(t, a, "", "send", "--to", "gamma", "x"), 1, `"gamma" is not on the board`)
	checkFailure(t, runWith(t, a, "", "send", "--peer", "1", "x"), 1, "no such peer")
	checkFailure(t, runWith(t, a, "", "send", "--peer", "2", "--port", "9", "x"), 1, "connection refused")
	checkFailure(t, runWith(t, a, "", "recv", "--timeout", "50ms"), 1, "deadline exceeded")
	checkFailure(t, runWith(t, a, "", "control", "--timeout", "50ms"), 1, "deadline exceeded")

	// Control messages: one sent while nobody subscribes is kept for the
	// next subscriber; the daemon prints them all.
	sup := supervisor(t, a)
	early, _ := control.Text("early")
	sendControl(t, sup, 1, early)
	sendControl(t, sup, 1, control.Board(8))
	waitFor(t, "the daemon to print the control message", func() bool {
		return strings.Contains(da.stdout.String(), "control: early\nboard: seq 8\n")
	})
	var c result
	wg.Go(func() { c = runWith(t, a, "", "control", "--count", "2", "--timeout", "30s") })
	time.Sleep(100 * time.Millisecond)
	late, _ := control.Text("late")
	sendControl(t, sup, 1, late)
	wg.Wait()
	if c.code != 0 || c.stdout != "control: early\nboard: seq 8\ncontrol: late\n" {
		t.Fatalf("control: %+v", c)
	}

	// A corrupt board through the daemon: an error for board, a line for
	// ls.
	page, err := a.ReadMemory(ficmAddr, 4096, 8)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.WriteMemory(ficmAddr, 4096, make([]byte, 8)); err != nil {
		t.Fatal(err)
	}
	checkFailure(t, runWith(t, a, "", "board"), 1, "board: corrupt page")
	if r := runWith(t, a, "", "ls"); r.code != 0 || !strings.Contains(r.stdout, "board: unavailable: board: corrupt page") {
		t.Errorf("ls with a corrupt board = %+v", r)
	}
	if err := a.WriteMemory(ficmAddr, 4096, page); err != nil {
		t.Fatal(err)
	}

	// Stopped, the daemons remove their sockets; the commands use the
	// device again.
	if code := da.stop(); code != 0 {
		t.Fatalf("daemon a exited %d: %s", code, da.stderr.String())
	}
	if code := db.stop(); code != 0 {
		t.Fatalf("daemon b exited %d: %s", code, db.stderr.String())
	}
	if _, err := os.Stat(socketOf(a)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket after the daemon stopped: %v", err)
	}
	t.Logf("daemon a's log:\n%s", da.stderr.String())
	if r := runWith(t, a, "", "ls"); r != lsDirect {
		t.Errorf("ls after the daemon:\n%+v", r)
	}
	wg.Go(func() { r = runWith(t, b, "", "recv", "--port", "5", "--timeout", "30s") })
	if s := retry(t, a, "", "send", "--to", "beta", "--port", "5", "direct"); s.code != 0 {
		t.Fatalf("direct send: %+v", s)
	}
	wg.Wait()
	if r.code != 0 || r.stdout != "direct\n" {
		t.Fatalf("direct recv: %+v", r)
	}
}

func TestDaemonNoDevice(t *testing.T) {
	empty, err := fakesys.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	checkFailure(t, runWith(t, empty, "", "daemon"), 1, "no FICM device")
	if _, err := os.Stat(socketOf(empty)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left by a failed daemon: %v", err)
	}
	// A stale socket is ignored by the commands.
	ln, _, err := local.Listen(socketOf(empty))
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	checkFailure(t, runWith(t, empty, "", "send", "--peer", "1", "x"), 1, "no FICM device")
	if r := runWith(t, empty, "", "ls"); r.code != 0 || r.stdout != "ficm: no device\nsegments: none\n" {
		t.Errorf("ls: %+v", r)
	}
	checkFailure(t, runWith(t, empty, "", "bench", "--serve"), 1, "no FICM device")
}
