package hotmeasure

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMeasureRFM drives MeasureRFM against a fake rfm command (a shell
// script noting its arguments) and a fake console socket that answers
// the script's attach and detach with the guest's markers.
func TestMeasureRFM(t *testing.T) {
	dir := t.TempDir()
	rfm := filepath.Join(dir, "rfm")
	script := "#!/bin/sh\necho \"$*\" >>" + dir + "/calls\ncase $1 in attach) touch " + dir + "/attached;; detach) touch " + dir + "/detached;; esac\n"
	if err := os.WriteFile(rfm, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(dir, "hp1.sock"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { // owner: the test, which waits for it
		defer close(done)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		conn.Write([]byte("boot\r\nREADY\r\n"))
		for _, step := range []struct{ file, line string }{{"attached", "ADDED"}, {"detached", "REMOVED"}} {
			for {
				if _, err := os.Stat(filepath.Join(dir, step.file)); err == nil {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			conn.Write([]byte(step.line + "\r\n"))
		}
		buf := make([]byte, 64)
		conn.Read(buf) // until MeasureRFM closes the console
	}()
	defer func() { ln.Close(); <-done }()
	cfg := Config{System: "rfm", Run: 1, HotDisk: "/tmp/hot.img", Markers: testMarkers, Settle: time.Millisecond}
	samples := MeasureRFM(t.Context(), cfg, RFM{Binary: rfm, Name: "hp1", CreateArgs: []string{"--cores", "1"}, RunDir: dir})
	if len(samples) != 2 || !samples[0].OK() || !samples[1].OK() {
		t.Fatalf("samples %+v", samples)
	}
	for _, s := range samples {
		if s.CLI <= 0 || s.Request <= 0 || s.Guest <= 0 {
			t.Errorf("sample %+v", s)
		}
	}
	if samples[1].Removed != samples[1].Request {
		t.Errorf("rfm detach's answer is the removal: %+v", samples[1])
	}
	calls, err := os.ReadFile(filepath.Join(dir, "calls"))
	if err != nil {
		t.Fatal(err)
	}
	want := "create hp1 --cores 1\ninspect hp1\nattach hp1 --disk /tmp/hot.img,ro --id hot\ninspect hp1\ndetach hp1 hot\ndestroy hp1\n"
	if string(calls) != want {
		t.Errorf("rfm calls:\n%s\nwant\n%s", calls, want)
	}
}

func TestMeasureRFMCreateFails(t *testing.T) {
	dir := t.TempDir()
	rfm := filepath.Join(dir, "rfm")
	if err := os.WriteFile(rfm, []byte("#!/bin/sh\necho 'no free cores' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	s := MeasureRFM(t.Context(), Config{System: "rfm", Markers: testMarkers}, RFM{Binary: rfm, Name: "x", RunDir: dir})
	if len(s) != 2 || !strings.Contains(s[0].Error, "no free cores") || s[1].OK() {
		t.Errorf("samples %+v", s)
	}
}
