// Command rfm is RainForest's management tool: it runs subOSes (each an
// unmodified Linux in a KVM VM on exclusive cores and hugepage memory).
//
//	rfm run [LAYOUT]   supervisor in the foreground with a layout's subOSes
//	rfm serve          the supervisor daemon (API on a Unix socket)
//	rfm create/destroy/ps/inspect/console/logs/events/check
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

	"rainforest/rfm/api"
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
	g := &globalFlags{}
	root.PersistentFlags().StringVar(&g.socket, "socket", api.DefaultSocket, "supervisor API socket")
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "", "output format: table or json")
	root.AddCommand(vmmCommand(), runCommand(g), consoleCommand(g), serveCommand(g), createCommand(g),
		destroyCommand(g), psCommand(g), inspectCommand(g), logsCommand(g), eventsCommand(g), checkCommand(g),
		messageCommand(g), boardCommand(g), attachCommand(g), detachCommand(g), grantCommand(g), revokeCommand(g),
		versionCommand(g), infoCommand(g))
	addVersionFlag(root, g)
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
