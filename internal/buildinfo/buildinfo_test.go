package buildinfo

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	none := FromBuildInfo(nil)
	if none.Version != Devel || none.Commit != Devel || none.Modified || none.OS != runtime.GOOS || none.Arch != runtime.GOARCH || none.GoVersion == "" {
		t.Errorf("nothing recorded: %+v", none)
	}
	if got := none.String(); got != "devel+devel" {
		t.Errorf("String() = %q", got)
	}
	in := FromBuildInfo(&debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.0"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "3f2a9c1e0b7d55aa0011223344556677889900aa"}, {Key: "vcs.modified", Value: "true"},
	}})
	if in.Version != "v1.2.0" || in.Commit != "3f2a9c1e0b7d55aa0011223344556677889900aa" || !in.Modified || in.GoVersion != "go1.26.8" {
		t.Errorf("recorded: %+v", in)
	}
	if got := in.String(); got != "v1.2.0+3f2a9c1e0b7d-dirty" {
		t.Errorf("String() = %q", got)
	}
	if dev := FromBuildInfo(&debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}); dev.Version != Devel {
		t.Errorf("(devel): %+v", dev)
	}
	if r := Read(); r.GoVersion == "" || r.Version == "" || r.Commit == "" {
		t.Errorf("Read() = %+v", r)
	}
}

func TestDiffer(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want bool
	}{
		{"v1+0123456789ab", "v1+0123456789ab", false},
		{"v1+0123456789ab-dirty", "v2+0123456789ab", false},
		{"v1+0123456789ab", "v1+ba9876543210", true},
		{"devel+devel", "v1+0123456789ab", false},
		{"v1+0123456789ab", "", false},
		{"garbage", "v1+0123456789ab", false},
	} {
		if got := Differ(c.a, c.b); got != c.want {
			t.Errorf("Differ(%q, %q) = %v", c.a, c.b, got)
		}
	}
}
