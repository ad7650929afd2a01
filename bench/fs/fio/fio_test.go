package fio

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
)

// The samples are fio 3.33's output on a small run (testdata/*.json).
func TestParseSamples(t *testing.T) {
	for _, c := range []struct {
		file          string
		ops           int64
		minBps, minIO float64
	}{
		{"seqread.json", 929, 9e8, 900},
		{"randwrite.json", 331777, 1e9, 3e5},
		{"create.json", 1000, 6e7, 15000},
	} {
		data, err := os.ReadFile("testdata/" + c.file)
		if err != nil {
			t.Fatal(err)
		}
		r, err := Parse(append(append([]byte("fio: some warning\n"), data...), "fio: after\n"...))
		if err != nil {
			t.Fatalf("%s: %v", c.file, err)
		}
		if r.Ops != c.ops || r.BytesPerSec < c.minBps || r.IOPS < c.minIO || r.RuntimeMs <= 0 || r.ClatP99Us <= 0 ||
			r.ClatMeanUs <= 0 || r.Version != "fio-3.33" {
			t.Errorf("%s: %+v", c.file, r)
		}
	}
}

func TestParseRejects(t *testing.T) {
	for _, in := range []string{
		"",
		"fio: engine filecreate not loadable",
		`{"jobs": []}`,
		`{"jobs": [{"jobname": "x", "error": 5, "read": {"total_ios": 3}}]}`,
		`{"jobs": [{"jobname": "x", "read": {"total_ios": 0}}]}`,
		`{"jobs": [{}, {}]}`,
		"{" + strings.Repeat(" ", maxOutput),
	} {
		if _, err := Parse([]byte(in)); !errors.Is(err, ErrBadOutput) {
			t.Errorf("Parse(%.40q): %v, want ErrBadOutput", in, err)
		}
	}
}

func TestWorkloads(t *testing.T) {
	ws := Workloads(Settings{FileMiB: 32, RuntimeSec: 3, Files: 500})
	var names []string
	for _, w := range ws {
		names = append(names, w.Name)
		joined := strings.Join(w.Args, " ")
		if !strings.HasPrefix(joined, "--name="+w.Name+" ") {
			t.Errorf("%s: %s", w.Name, joined)
		}
		if w.Metadata != strings.Contains(joined, "--nrfiles=500") || w.Metadata == strings.Contains(joined, "--size=32M") {
			t.Errorf("%s: %s", w.Name, joined)
		}
	}
	// The file is laid out by the sequential write before it is read;
	// files are created before they are stat'ed and unlinked.
	if !slices.Equal(names, []string{SeqWrite, SeqRead, RandRead, RandWrite, Create, Stat, Delete}) {
		t.Errorf("order %v", names)
	}
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	want := Names()
	slices.Sort(want)
	if !slices.Equal(sorted, want) {
		t.Errorf("Names %v, workloads %v", Names(), names)
	}
}
