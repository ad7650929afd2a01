package main

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"rainforest/bench/net/sample"
)

func TestParseWhere(t *testing.T) {
	if r, err := parseWhere("rfm:b", "/bin/rfm"); err != nil || strings.Join(r.(localRunner).prefix, " ") != "/bin/rfm exec b --" {
		t.Errorf("rfm:b: %v %v", r, err)
	}
	if r, err := parseWhere("vsock:4", "rfm"); err != nil || r.(vsockRunner).cid != 4 {
		t.Errorf("vsock:4: %v %v", r, err)
	}
	if _, err := parseWhere("local", "rfm"); err != nil {
		t.Error(err)
	}
	for _, bad := range []string{"", "rfm:", "vsock:2", "vsock:x", "ssh:a"} {
		if _, err := parseWhere(bad, "rfm"); !errors.Is(err, errWhere) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

// fakeRunner answers the tools' commands with the committed reports.
type fakeRunner struct {
	t     *testing.T
	calls []string
	fail  bool
}

func (f *fakeRunner) run(_ context.Context, argv []string) ([]byte, error) {
	f.calls = append(f.calls, argv[0])
	if f.fail {
		return []byte("garbage"), errors.New("exit status 1")
	}
	name := map[string]string{"iperf3": "iperf3-client.json", "sockperf": "sockperf-pingpong.txt", "sh": ""}[argv[0]]
	if name == "" {
		return []byte("started\n"), nil
	}
	b, err := os.ReadFile("../../tool/testdata/" + name)
	if err != nil {
		f.t.Fatal(err)
	}
	return b, nil
}

func TestRunTest(t *testing.T) {
	cl := &fakeRunner{t: t}
	s := runTest(context.Background(), "host", sample.Stream, 1, "127.0.0.1", cl, 1, time.Minute)
	if !s.OK() || s.Gbps < 19 || s.Gbps > 20 || s.Retransmits != 2 {
		t.Errorf("stream %+v", s)
	}
	s = runTest(context.Background(), "host", sample.RR, 2, "127.0.0.1", cl, 1, time.Minute)
	if !s.OK() || s.P50US != 7.704 || s.P99US != 18.19 || s.Run != 2 {
		t.Errorf("rr %+v", s)
	}
}

func TestRunTestFails(t *testing.T) {
	if testing.Short() {
		t.Skip("retries after 2 s")
	}
	cl := &fakeRunner{t: t, fail: true}
	s := runTest(context.Background(), "rftun", sample.RR, 1, "10.0.0.3", cl, 1, time.Minute)
	if s.OK() || !strings.Contains(s.Error, "exit status 1") || len(cl.calls) != 2 {
		t.Errorf("failed test %+v after %d tries", s, len(cl.calls))
	}
}
