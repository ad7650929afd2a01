package benchkit

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type testReport struct {
	N int `json:"n"`
}

func writeTestTable(w io.Writer, r *testReport) error {
	_, err := io.WriteString(w, "table\n")
	return err
}

func TestWriteReport(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out", "r.json")
	var out strings.Builder
	if err := WriteReport(&out, &testReport{N: 1}, writeTestTable, path); err != nil {
		t.Fatal(err)
	}
	if want := "table\nJSON: " + path + "\n"; out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "{\n  \"n\": 1\n}\n" {
		t.Errorf("file %q, %v", b, err)
	}
}

func TestWriteReportWithoutJSON(t *testing.T) {
	var out strings.Builder
	if err := WriteReport(&out, &testReport{}, writeTestTable, ""); err != nil {
		t.Fatal(err)
	}
	if out.String() != "table\n" {
		t.Errorf("output %q", out.String())
	}
}

func TestWriteReportErrors(t *testing.T) {
	errTable := errors.New("table failed")
	failing := func(io.Writer, *testReport) error { return errTable }
	path := filepath.Join(t.TempDir(), "r.json")
	var out strings.Builder
	// A failed table does not stop the JSON file, and its error comes first.
	if err := WriteReport(&out, &testReport{}, failing, path); !errors.Is(err, errTable) {
		t.Errorf("err %v", err)
	}
	if _, err := os.Stat(path); err != nil || !strings.Contains(out.String(), "JSON: ") {
		t.Errorf("JSON not written after a failed table: %v, output %q", err, out.String())
	}
	// A failed JSON file is reported and not named.
	out.Reset()
	bad := filepath.Join(path, "under-a-file.json")
	if err := WriteReport(&out, &testReport{}, writeTestTable, bad); err == nil || strings.Contains(out.String(), "JSON: ") {
		t.Errorf("err %v, output %q", err, out.String())
	}
}

func TestFinish(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.json")
	var stdout, stderr strings.Builder
	if code := Finish(&stdout, &stderr, "bench/x", &testReport{N: 2}, nil, writeTestTable, path); code != 0 {
		t.Errorf("exit %d", code)
	}
	if stdout.String() != "table\nJSON: "+path+"\n" || stderr.String() != "" {
		t.Errorf("stdout %q stderr %q", stdout.String(), stderr.String())
	}

	// A failed run with a report: the report is written, the error printed.
	stdout.Reset()
	if code := Finish(&stdout, &stderr, "bench/x", &testReport{}, errors.New("run 2 failed"), writeTestTable, ""); code != 1 {
		t.Errorf("exit %d", code)
	}
	if stdout.String() != "table\n" || stderr.String() != "bench/x: run 2 failed\n" {
		t.Errorf("stdout %q stderr %q", stdout.String(), stderr.String())
	}

	// No report: nothing on stdout.
	stdout.Reset()
	stderr.Reset()
	var none *testReport
	if code := Finish(&stdout, &stderr, "bench/x", none, errors.New("image: x"), writeTestTable, path); code != 1 ||
		stdout.String() != "" || stderr.String() != "bench/x: image: x\n" {
		t.Errorf("exit %d stdout %q stderr %q", code, stdout.String(), stderr.String())
	}

	// A write error alone fails the command.
	stderr.Reset()
	if code := Finish(io.Discard, &stderr, "bench/x", &testReport{}, nil, writeTestTable, filepath.Join(path, "under-a-file.json")); code != 1 ||
		!strings.HasPrefix(stderr.String(), "bench/x: ") {
		t.Errorf("exit %d stderr %q", code, stderr.String())
	}
}

type partialTestReport struct {
	Completion
	N int `json:"n"`
}

func TestWriteReportPartial(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.json")
	rep := &partialTestReport{N: 3}
	table := func(w io.Writer, r *partialTestReport) error { _, err := io.WriteString(w, "table\n"); return err }
	var out strings.Builder
	if err := WriteReport(&out, rep, table, path); err != nil || out.String() != "table\nJSON: "+path+"\n" {
		t.Fatalf("complete report: %v, output %q", err, out.String())
	}
	rep.MarkPartial(errors.New("kvmhost: nested: L1 guest silent for 1m0s\nserial tail:\n..."))
	out.Reset()
	if code := Finish(&out, io.Discard, "bench/x", rep, errors.New("session failed"), table, path); code != 1 {
		t.Errorf("exit %d", code)
	}
	if want := "PARTIAL: the session ended early (kvmhost: nested: L1 guest silent for 1m0s); " +
		"these are the results that completed before.\n\ntable\nJSON: " + path + "\n"; out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}
	b, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(b), `"partial": true`) || !strings.Contains(string(b), `"session_error": "kvmhost: nested: L1 guest silent for 1m0s\nserial tail:\n..."`) || !strings.Contains(string(b), `"n": 3`) {
		t.Errorf("JSON %s, %v", b, err)
	}
}
