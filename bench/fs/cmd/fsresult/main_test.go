package main

import (
	"os"
	"strings"
	"testing"

	"rainforest/bench/fs/report"
)

func TestLine(t *testing.T) {
	f, err := os.Open("../../fio/testdata/seqread.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := line("host", "seqread", 1, 0, "", f)
	if !s.OK() || s.Ops != 929 {
		t.Errorf("sample %+v", s)
	}
	if s := line("host", "seqread", 1, 1, "", strings.NewReader("fio: no space left")); !strings.Contains(s.Error, "exited with 1") {
		t.Errorf("failed fio: %+v", s)
	}
	if s := line("qemu-9p", "seqread", 1, 0, "no 9p", nil); s.Error != "no 9p" {
		t.Errorf("error: %+v", s)
	}
	got, ok, err := report.ParseLine(report.FormatLine(line("host", "x", 2, 0, "", strings.NewReader("garbage"))))
	if !ok || err != nil || got.OK() {
		t.Errorf("garbage: %+v %v %v", got, ok, err)
	}
}
