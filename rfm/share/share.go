// Package share is a host directory given to a subOS as a virtio-fs
// device (RFfuse): what a share is (Spec), the checks on it that both a
// layout check and the supervisor make, and its back end, a virtiofsd
// process serving the directory on a vhost-user socket (Binary, Args,
// Socket), with the read-only view of a read-only share (ReadOnlyView).
//
// The supervisor starts one virtiofsd per share, confined to the shared
// directory by virtiofsd's own sandbox, and hands the connected end of its
// socket to the jailed VMM, which reaches no paths. A read-only share is
// enforced on the host: virtiofsd serves a read-only bind mount of the
// directory, so the host kernel refuses every write (EROFS) whatever the
// guest asks.
package share

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"rainforest/ledger"
	"rainforest/vmm/config"
	"rainforest/vmm/virtio/fs"
)

// Spec is a share of a subOS: the host directory Path, mounted in the
// guest by its Tag (at /mnt/<tag> by the default image).
type Spec struct {
	// ID names the virtio-fs device in the VMM ("share0", "share1", ...
	// by default: WithIDs).
	ID string `json:"id,omitempty"`
	// Path is the host directory, an absolute path.
	Path string `json:"path"`
	// Tag is what the guest mounts it by: 1 to 36 of letters, digits,
	// _ . - (CheckTag).
	Tag string `json:"tag"`
	// ReadOnly makes the host refuse the guest's writes.
	ReadOnly bool `json:"readonly,omitempty"`
	// AllowRoot must be set to share the host's root directory.
	AllowRoot bool `json:"allow_root,omitempty"`
}

// String is the share as the command line gives it: PATH:TAG[,ro][,root].
func (s Spec) String() string {
	out := s.Path + ":" + s.Tag
	if s.ReadOnly {
		out += ",ro"
	}
	if s.AllowRoot {
		out += ",root"
	}
	return out
}

// Syntax is the command line's form of a share.
const Syntax = "/host/dir:TAG[,ro][,root]"

// ErrSyntax means a share that does not parse.
var ErrSyntax = errors.New("share")

// Parse reads a share in Syntax: the directory, a colon, the tag, and
// the options ro (read-only) and root (allow sharing /). The path is
// taken as given (the caller makes it absolute).
func Parse(v string) (Spec, error) {
	i := strings.LastIndexByte(v, ':')
	if i <= 0 {
		return Spec{}, fmt.Errorf("%w %q: want %s", ErrSyntax, v, Syntax)
	}
	s := Spec{Path: v[:i]}
	opts := strings.Split(v[i+1:], ",")
	s.Tag = opts[0]
	for _, o := range opts[1:] {
		switch o {
		case "ro":
			s.ReadOnly = true
		case "root":
			s.AllowRoot = true
		default:
			return Spec{}, fmt.Errorf("%w %q: unknown option %q (ro or root; %s)", ErrSyntax, v, o, Syntax)
		}
	}
	if s.Tag == "" {
		return Spec{}, fmt.Errorf("%w %q: no tag after the colon (%s)", ErrSyntax, v, Syntax)
	}
	return s, nil
}

// tagPattern is what a tag may be: a file name in the guest's /mnt as
// much as a virtio-fs tag, and a word of the kernel command line.
var tagPattern = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

// CheckTag says what is wrong with tag: it must be a virtio-fs tag (at
// most fs.TagSize bytes) made of letters, digits, _ . - and not "." or
// "..", since the guest mounts it at /mnt/<tag>.
func CheckTag(tag string) error {
	if err := fs.CheckTag(tag); err != nil {
		return err
	}
	if !tagPattern.MatchString(tag) || tag == "." || tag == ".." {
		return fmt.Errorf("%w %q: letters, digits, _ . - only (the guest mounts it at /mnt/<tag>), not . or ..", fs.ErrTag, tag)
	}
	return nil
}

// idPattern is what a device id may be (the VMM's rule).
var idPattern = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,32}$`)

// WithIDs returns specs with every missing ID filled in: the first free
// "shareN".
func WithIDs(specs []Spec) []Spec {
	out := append([]Spec(nil), specs...)
	used := map[string]bool{}
	for _, s := range out {
		used[s.ID] = true
	}
	n := 0
	for i := range out {
		if out[i].ID != "" {
			continue
		}
		for used["share"+strconv.Itoa(n)] {
			n++
		}
		out[i].ID = "share" + strconv.Itoa(n)
		used[out[i].ID] = true
	}
	return out
}

// Problems lists what is wrong with specs, each problem's field under
// prefix ("shares" gives "shares[1].path"): more than config.MaxShares
// shares, a path that is not an absolute path to an existing directory,
// the host's root without AllowRoot, a tag CheckTag refuses, a tag or
// an ID used twice. Nothing is made or changed.
func Problems(prefix string, specs []Spec) []ledger.Problem {
	var probs []ledger.Problem
	if len(specs) > config.MaxShares {
		probs = append(probs, ledger.Problem{Field: prefix, Message: fmt.Sprintf("%d shares, at most %d", len(specs), config.MaxShares)})
	}
	tags, ids := map[string]int{}, map[string]int{}
	for i, s := range specs {
		field := func(name string) string { return fmt.Sprintf("%s[%d].%s", prefix, i, name) }
		add := func(name, format string, args ...any) {
			probs = append(probs, ledger.Problem{Field: field(name), Message: fmt.Sprintf(format, args...)})
		}
		if msg := PathProblem(s); msg != "" {
			add("path", "%s", msg)
		}
		if err := CheckTag(s.Tag); err != nil {
			add("tag", "%v", err)
		} else if j, dup := tags[s.Tag]; dup {
			add("tag", "tag %q is also %s[%d]'s: each share needs its own", s.Tag, prefix, j)
		} else {
			tags[s.Tag] = i
		}
		if s.ID != "" {
			if !idPattern.MatchString(s.ID) {
				add("id", "%q: 1 to 32 of letters, digits, _ . -", s.ID)
			} else if j, dup := ids[s.ID]; dup {
				add("id", "id %q is also %s[%d]'s", s.ID, prefix, j)
			} else {
				ids[s.ID] = i
			}
		}
	}
	return probs
}

// PathProblem says what is wrong with s's path ("" when nothing): it
// must be absolute, exist and be a directory (after symbolic links), and
// be the host's root only when AllowRoot says so.
func PathProblem(s Spec) string {
	if s.Path == "" {
		return "required: the host directory to share"
	}
	if !filepath.IsAbs(s.Path) {
		return fmt.Sprintf("%q is not an absolute path", s.Path)
	}
	real, err := filepath.EvalSymlinks(s.Path)
	if err != nil {
		return err.Error()
	}
	st, err := os.Stat(real)
	switch {
	case err != nil:
		return err.Error()
	case !st.IsDir():
		return fmt.Sprintf("%s is not a directory", s.Path)
	case real == "/" && !s.AllowRoot:
		return fmt.Sprintf("%s is the host's root directory: give the share allow_root (the root option) to share it", s.Path)
	}
	return ""
}

// Contains says whether directory dir holds path (or is it), both
// cleaned absolute paths after symbolic links.
func Contains(dir, path string) bool {
	if dir == "/" {
		return true
	}
	return path == dir || strings.HasPrefix(path, dir+"/")
}
