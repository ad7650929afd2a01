package benchkit

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"rainforest/images"
	"rainforest/internal/kvmhost"
)

// Common are the settings every benchmark that boots guests takes: how
// many runs, where the JSON goes, the image directory ($RF_IMAGES by
// default) and whether to run nested.
type Common struct {
	Runs       int
	JSONPath   string
	ImagesDir  string
	NestedMode string
}

// AddFlags registers -n, -json, -images and -nested on fs, for benchmark
// name ("boot": JSON in build/bench/boot.json).
func (c *Common) AddFlags(fs *flag.FlagSet, name string, runs int, runsHelp string) {
	dir := os.Getenv("RF_IMAGES")
	if dir == "" {
		dir = images.DefaultOutDir
	}
	fs.IntVar(&c.Runs, "n", runs, runsHelp)
	fs.StringVar(&c.JSONPath, "json", "build/bench/"+name+".json", "write the results as JSON to this file (empty: do not)")
	fs.StringVar(&c.ImagesDir, "images", dir, "directory of the default subOS image (built by make image; $RF_IMAGES)")
	fs.StringVar(&c.NestedMode, "nested", "auto", "run inside the nested QEMU layer: auto, always or never")
}

// Setup is what a guest-booting benchmark has before its session: the
// image, where the guests boot (Nested, and Why), and its static binaries.
type Setup struct {
	Image  *images.Image
	Nested bool
	Why    string
	*Workspace
}

// Prepare builds (or finds) the image, decides nested or direct, and
// builds pkgs statically into a workspace the caller removes.
func Prepare(ctx context.Context, c Common, log io.Writer, prefix string, pkgs ...string) (*Setup, error) {
	img, err := images.Build(ctx, images.Options{OutDir: c.ImagesDir, Log: log})
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	need, why := kvmhost.Choose(c.NestedMode)
	ws, err := NewWorkspace(ctx, prefix, pkgs...)
	if err != nil {
		return nil, err
	}
	return &Setup{Image: img, Nested: need, Why: why, Workspace: ws}, nil
}

// Main runs a benchmark's body with a context that SIGINT and SIGTERM
// cancel, reports it (Finish) and exits with Finish's status.
func Main[R any](name string, run func(ctx context.Context) (*R, error), writeTable func(io.Writer, *R) error, jsonPath string) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	rep, err := run(ctx)
	stop()
	os.Exit(Finish(os.Stdout, os.Stderr, name, rep, err, writeTable, jsonPath))
}
