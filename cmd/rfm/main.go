// Command rfm is RainForest's management tool: it runs subOSes (each an
// unmodified Linux in a KVM VM on exclusive cores and hugepage memory).
//
//	rfm run            boot the default subOS with its console on this terminal
//	rfm vmm [flags]    run one subOS in the foreground (the VMM process)
//
// The CLI uses github.com/spf13/cobra: the de-facto standard for Go
// command trees (kubectl, docker), with flag parsing, help and completion.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// exitError carries a process exit status out of a command.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	root := &cobra.Command{
		Use:           "rfm",
		Short:         "RainForest: isolate first, then share",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(vmmCommand(), runCommand(), consoleCommand())
	err := root.ExecuteContext(ctx)
	stop()
	var ee exitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		os.Exit(ee.code)
	default:
		fmt.Fprintln(os.Stderr, "rfm:", err)
		os.Exit(2)
	}
}
