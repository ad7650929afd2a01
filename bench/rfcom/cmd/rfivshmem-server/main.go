// Command rfivshmem-server is an ivshmem server for QEMU's
// ivshmem-doorbell device, used as a baseline for RainForest's inter-VM
// messaging benchmarks. It hands out a shared memory region and one
// eventfd per vector to every client connecting to its Unix socket:
//
//	rfivshmem-server -socket /tmp/ivshmem.sock -size 1M -vectors 1
//	qemu-system-x86_64 ... -chardev socket,path=/tmp/ivshmem.sock,id=ivsh \
//	    -device ivshmem-doorbell,chardev=ivsh,vectors=1
//
// It logs to stderr and runs until SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"rainforest/bench/rfcom/ivshmem"
	"rainforest/internal/units"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "rfivshmem-server:", err)
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

func run(args []string) error {
	fset := flag.NewFlagSet("rfivshmem-server", flag.ContinueOnError)
	socket := fset.String("socket", "", "Unix socket path to listen on (required)")
	sizeText := fset.String("size", "1M", "shared memory size, power of two, with optional K, M or G suffix")
	vectors := fset.Int("vectors", 1, "interrupt vectors per peer (1..64)")
	maxPeers := fset.Int("max-peers", ivshmem.DefaultMaxPeers, "maximum number of connected peers")
	verbose := fset.Bool("v", false, "log debug events")
	if err := fset.Parse(args); err != nil {
		return err
	}
	if *socket == "" || fset.NArg() != 0 {
		fset.Usage()
		return fmt.Errorf("%w: -socket is required and no arguments are accepted", errUsage)
	}
	size, err := units.ParseNonZeroSize(*sizeText)
	if err != nil {
		return fmt.Errorf("-size: %w", err)
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	srv, err := ivshmem.Listen(ivshmem.Config{
		Socket:   *socket,
		Size:     size,
		Vectors:  *vectors,
		MaxPeers: *maxPeers,
		Log:      log,
	})
	if err != nil {
		return err
	}
	log.Info("ivshmem server listening", "socket", *socket, "size", size, "vectors", *vectors, "max_peers", *maxPeers)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	serveErr := srv.Serve(ctx)
	if err := srv.Close(); err != nil && serveErr == nil {
		serveErr = err
	}
	return serveErr
}
