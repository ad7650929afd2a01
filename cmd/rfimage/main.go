// Command rfimage builds the default RainForest subOS (L2) image from
// Debian packages into a cache directory and prints the paths of its
// artifacts.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"rainforest/images"
)

func main() {
	out := flag.String("out", images.DefaultOutDir, "output and cache directory")
	verbose := flag.Bool("v", false, "show progress (apt output, build steps)")
	force := flag.Bool("force", false, "rebuild even when the cached image is up to date")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var log io.Writer = io.Discard
	if *verbose {
		log = os.Stderr
	}
	img, err := images.Build(ctx, images.Options{OutDir: *out, Log: log, Force: *force})
	if err != nil {
		fmt.Fprintln(os.Stderr, "rfimage:", err)
		os.Exit(1)
	}
	fmt.Printf("kernel-version %s\n", img.KernelVersion)
	fmt.Printf("package        %s %s\n", img.KernelPackage, img.KernelPackageVersion)
	fmt.Printf("vmlinux        %s\n", img.Kernel)
	fmt.Printf("bzImage        %s\n", img.BzImage)
	fmt.Printf("initramfs      %s\n", img.Initramfs)
	fmt.Printf("disk           %s\n", img.Disk)
}
