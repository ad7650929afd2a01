package benchkit

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// BuildStatic builds each Go package in pkgs as a static binary
// (CGO_ENABLED=0 go build) into dir, named after the last element of the
// package path, and returns the binaries' paths in the order of pkgs.
func BuildStatic(ctx context.Context, dir string, pkgs ...string) ([]string, error) {
	names := make([]string, len(pkgs))
	for i, pkg := range pkgs {
		names[i] = path.Base(pkg)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return nil, fmt.Errorf("the go tool is needed to build %s: %w", strings.Join(names, " and "), err)
	}
	out := make([]string, len(pkgs))
	for i, pkg := range pkgs {
		out[i] = filepath.Join(dir, names[i])
		cmd := exec.CommandContext(ctx, goBin, "build", "-o", out[i], pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if msg, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build %s: %w\n%s", pkg, err, msg)
		}
	}
	return out, nil
}
