package benchkit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteJSONFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a", "b", "report.json")
	v := struct {
		Name string `json:"name"`
		N    int    `json:"n"`
	}{"rfm", 3}
	if err := WriteJSONFile(path, v); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := "{\n  \"name\": \"rfm\",\n  \"n\": 3\n}\n"; string(got) != want {
		t.Errorf("file %q, want %q", got, want)
	}
	// A second write replaces the file.
	if err := WriteJSONFile(path, []int{1}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != "[\n  1\n]\n" {
		t.Errorf("rewritten file %q", got)
	}
}

func TestWriteJSONFileErrors(t *testing.T) {
	dir := t.TempDir()
	if err := WriteJSONFile(filepath.Join(dir, "f.json"), func() {}); err == nil || !strings.HasPrefix(err.Error(), "report: ") {
		t.Errorf("unencodable value: %v", err)
	}
	blocker := filepath.Join(dir, "file")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteJSONFile(filepath.Join(blocker, "x.json"), 1); err == nil {
		t.Error("no error for a directory that is a file")
	}
}
