package benchkit

import (
	"context"
	"os"
)

// Workspace is a session's temporary directory and the static binaries
// built into it.
type Workspace struct {
	Dir string
	// Binaries are the paths of the binaries, in the order of the
	// packages given to NewWorkspace.
	Binaries []string
}

// NewWorkspace creates a temporary directory whose name starts with
// prefix and builds the Go packages pkgs into it (BuildStatic). The
// caller removes it with Remove; on error nothing is left behind.
func NewWorkspace(ctx context.Context, prefix string, pkgs ...string) (*Workspace, error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, err
	}
	bins, err := BuildStatic(ctx, dir, pkgs...)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &Workspace{Dir: dir, Binaries: bins}, nil
}

// Remove deletes the workspace directory and everything in it.
func (w *Workspace) Remove() error { return os.RemoveAll(w.Dir) }
