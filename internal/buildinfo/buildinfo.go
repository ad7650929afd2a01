// Package buildinfo says which build of RainForest is running: the main
// module's version, the git commit it was built from, the Go version and
// the platform, as the Go toolchain recorded them in the binary
// (runtime/debug.ReadBuildInfo). The supervisor and the rfm client share
// this one definition, so that the two sides of the API describe
// themselves alike.
package buildinfo

import (
	"runtime"
	"runtime/debug"
	"strings"
)

// Devel stands for a version or commit the build did not record (a test
// binary, go run, a build outside a git checkout).
const Devel = "devel"

// Info describes one build.
type Info struct {
	// Version is the main module's version (a tag or a pseudo-version),
	// Devel when the toolchain recorded none.
	Version string `json:"version"`
	// Commit is the git commit (vcs.revision), Devel when not recorded.
	Commit string `json:"commit"`
	// Modified says the working tree had uncommitted changes
	// (vcs.modified).
	Modified  bool   `json:"modified"`
	GoVersion string `json:"go_version"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
}

// Read returns this binary's Info.
func Read() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return FromBuildInfo(nil)
	}
	return FromBuildInfo(bi)
}

// FromBuildInfo returns the Info that bi records (nil: nothing recorded),
// on this platform.
func FromBuildInfo(bi *debug.BuildInfo) Info {
	in := Info{Version: Devel, Commit: Devel, GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
	if bi == nil {
		return in
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		// A pseudo-version of a modified tree ends in "+dirty";
		// Modified says so.
		in.Version = strings.TrimSuffix(v, "+dirty")
	}
	if bi.GoVersion != "" {
		in.GoVersion = bi.GoVersion
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			if s.Value != "" {
				in.Commit = s.Value
			}
		case "vcs.modified":
			in.Modified = s.Value == "true"
		}
	}
	return in
}

// ShortCommit is Commit cut to 12 hex digits, with "-dirty" when the
// tree was modified.
func (in Info) ShortCommit() string {
	c := in.Commit
	if len(c) > 12 {
		c = c[:12]
	}
	if in.Modified {
		c += "-dirty"
	}
	return c
}

// String is the build in one token, e.g. "v1.2.0+3f2a9c1e0b7d" or
// "devel+3f2a9c1e0b7d-dirty": the version and the short commit. It is the
// API's X-Rainforest-Version header.
func (in Info) String() string {
	return in.Version + "+" + in.ShortCommit()
}

// Differ reports whether two builds, in their String form, are known to
// differ: both name a commit and the commits (a "-dirty" mark aside) are
// not the same. A build that recorded no commit (Devel) differs from none.
func Differ(a, b string) bool {
	ca, cb := commitOf(a), commitOf(b)
	return ca != "" && cb != "" && ca != cb
}

// commitOf is the commit named by a String form, "" when none is.
func commitOf(s string) string {
	i := strings.LastIndex(s, "+")
	if i < 0 {
		return ""
	}
	c := strings.TrimSuffix(s[i+1:], "-dirty")
	if c == Devel {
		return ""
	}
	return c
}
