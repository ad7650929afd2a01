package layout

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseShares(t *testing.T) {
	in := "subos:\n- name: a\n  shares:\n  - {path: data, tag: data}\n  - {path: /srv/docs, tag: docs, readonly: true, id: d}\n  - {path: /, tag: all, readonly: true, allow_root: true}\n"
	l, err := Parse(strings.NewReader(in), 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []Share{{Path: "data", Tag: "data"}, {ID: "d", Path: "/srv/docs", Tag: "docs", ReadOnly: true}, {Path: "/", Tag: "all", ReadOnly: true, AllowRoot: true}}
	got := l.SubOSes[0].Shares
	if len(got) != len(want) {
		t.Fatalf("shares %+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("share %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	l.ResolvePaths("/etc/rfm")
	if p := l.SubOSes[0].Shares[0].Path; p != "/etc/rfm/data" {
		t.Errorf("resolved share path %q", p)
	}
	if _, err := Parse(strings.NewReader("subos:\n- name: a\n  shares: [{path: /x, tag: x, mode: rw}]\n"), 0); err == nil || !strings.Contains(err.Error(), "mode") {
		t.Errorf("unknown share field: %v", err)
	}
}

func TestCheckShares(t *testing.T) {
	e := newCheckEnv(t)
	dir := filepath.Join(e.dir, "share")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	e.layout.SubOSes[0].Shares = []Share{{Path: dir, Tag: "data"}, {Path: dir, Tag: "docs", ReadOnly: true}}
	if ps := e.layout.Check(e.inv, nil); len(ps) != 0 {
		t.Fatalf("good shares: %v", problemStrings(ps))
	}
	e.layout.SubOSes[1].Shares = []Share{
		{Path: filepath.Join(e.dir, "missing"), Tag: "a"},
		{Path: e.disk, Tag: "b"},
		{Path: dir, Tag: "b"},
		{Path: dir, Tag: strings.Repeat("x", 37)},
		{Path: "/", Tag: "root"},
	}
	got := strings.Join(problemStrings(e.layout.Check(e.inv, nil)), "\n")
	for _, want := range []string{
		`subos "db": shares[0].path: lstat ` + filepath.Join(e.dir, "missing") + `: no such file or directory`,
		`subos "db": shares[1].path: ` + e.disk + ` is not a directory`,
		`subos "db": shares[2].tag: tag "b" is also shares[1]'s`,
		`subos "db": shares[3].tag: virtio-fs tag`,
		`subos "db": shares[4].path: / is the host's root directory: give the share allow_root`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("problems lack %q:\n%s", want, got)
		}
	}
}
