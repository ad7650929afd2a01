package nested

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeClock is a console's clock that moves only when told.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newTestConsole(lines *[]string) (*console, *fakeClock, *strings.Builder) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	var log strings.Builder
	return newConsole(clk.now, &log, func(l string) { *lines = append(*lines, l) }), clk, &log
}

func TestConsoleFramesTheScript(t *testing.T) {
	var got []string
	c, _, log := newTestConsole(&got)
	serial := "SeaBIOS noise\r\n" + HeartbeatMarker + " 1.52\r\nRF-NESTED-HUGEPAGES 8\r\n" + BeginMarker + "\r\nline 1\r\n" +
		HeartbeatMarker + " 11.60\r\nline 2\r\n" + ExitMarker + " 3\r\n[ 1.0] reboot: Power down\r\n"
	// Byte by byte: lines and markers may arrive split anywhere.
	for i := range len(serial) {
		c.Write([]byte(serial[i : i+1]))
	}
	c.end()
	res, ok := c.result()
	if !ok {
		t.Fatal("no result")
	}
	if res.ExitStatus != 3 || res.Output != "line 1\nline 2\n" {
		t.Errorf("got %d %q", res.ExitStatus, res.Output)
	}
	if !slices.Equal(got, []string{"line 1", "line 2"}) {
		t.Errorf("lines %q", got)
	}
	if log.String() != serial {
		t.Errorf("log %q, want the raw serial", log.String())
	}
	if !strings.Contains(res.Serial, HeartbeatMarker+" 11.60\n") {
		t.Errorf("serial lost the heartbeat or its CR LF: %q", res.Serial)
	}
}

func TestConsoleHeartbeatFilter(t *testing.T) {
	for _, tc := range []struct {
		name, serial string
		want         []string
	}{
		{"own line", "a\n" + HeartbeatMarker + " 10.00\nb\n", []string{"a", "b"}},
		{"integer uptime", HeartbeatMarker + " 10\n", nil},
		// echo's write lands between two writes of the script's line.
		{"inside a line", "par" + HeartbeatMarker + " 20.01\r\ntial\n", []string{"partial"}},
		{"two in a line", "x" + HeartbeatMarker + " 1.0\n" + HeartbeatMarker + " 2.0\ny\n", []string{"xy"}},
		{"not an uptime", HeartbeatMarker + " soon\n" + HeartbeatMarker + " 1.2.3\n" + HeartbeatMarker + "\n",
			[]string{HeartbeatMarker + " soon", HeartbeatMarker + " 1.2.3", HeartbeatMarker}},
		{"last line before the exit marker", "no newline" + ExitMarker + " 0\n", []string{"no newline"}},
		{"exit marker with text", ExitMarker + " soon\n", []string{ExitMarker + " soon"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			c, _, _ := newTestConsole(&got)
			c.Write([]byte(BeginMarker + "\n" + tc.serial))
			c.end()
			if !slices.Equal(got, tc.want) {
				t.Errorf("lines %q, want %q", got, tc.want)
			}
		})
	}
}

func TestConsoleNothingBeforeBegin(t *testing.T) {
	var got []string
	c, _, _ := newTestConsole(&got)
	c.Write([]byte("boot\nRF-NESTED-HUGEPAGES 0\n" + ExitMarker + " 0\n"))
	c.end()
	if _, ok := c.result(); ok || len(got) != 0 {
		t.Errorf("result before the begin marker; lines %q", got)
	}
}

func TestConsoleSilence(t *testing.T) {
	const boot, silence = 5 * time.Minute, time.Minute
	var got []string
	c, clk, _ := newTestConsole(&got)
	check := func(what string, wantSilent bool, wantText string) {
		t.Helper()
		err := c.silence(clk.now(), boot, silence)
		if (err != nil) != wantSilent || err != nil && (!errors.Is(err, ErrSilent) || !strings.Contains(err.Error(), wantText)) {
			t.Fatalf("%s: silence() = %v", what, err)
		}
	}
	// Booting: output without a heartbeat does not count, the boot bound
	// does.
	clk.advance(4 * time.Minute)
	c.Write([]byte("SeaBIOS\n"))
	clk.advance(59 * time.Second)
	check("booting quietly", false, "")
	clk.advance(time.Second)
	check("no heartbeat at the boot bound", true, "no heartbeat from L1's /init 5m0s after QEMU started")

	c, clk, _ = newTestConsole(&got)
	clk.advance(30 * time.Second)
	c.Write([]byte(HeartbeatMarker + " 25.10\n" + BeginMarker + "\n"))
	// Heartbeats and output each keep the session alive.
	for i := range 10 {
		clk.advance(silence - time.Second)
		check("alive", false, "")
		if i%2 == 0 {
			c.Write([]byte(HeartbeatMarker + " 30.00\n"))
		} else {
			c.Write([]byte("out"))
		}
	}
	clk.advance(silence - time.Nanosecond)
	check("just under the bound", false, "")
	clk.advance(time.Nanosecond)
	check("silent", true, "silent for 1m0s: neither heartbeat nor output (the last heartbeat was at L1 uptime 30.00s)")

	// After the exit marker only QEMU's exit is awaited.
	c.Write([]byte("\n" + ExitMarker + " 0\n"))
	clk.advance(silence)
	check("QEMU not exiting", true, "QEMU did not exit 1m0s after the script ended")
	if res, ok := c.result(); !ok || res.Output != "outoutoutoutout\n" {
		t.Errorf("result %+v, %v", res, ok)
	}
}

func TestTCGWarnings(t *testing.T) {
	var out strings.Builder
	f := tcgWarnings(&out)
	f.Write([]byte("qemu-system-x86_64: warning: TCG doesn't support requested feature: CPUID.07H:EBX.rdseed [bit 18]\nreal "))
	f.Write([]byte("line\n"))
	if out.String() != "real line\n" {
		t.Errorf("filtered output %q", out.String())
	}
}
