// Command rfm is RainForest's management tool: it runs subOSes (each an
// unmodified Linux in a KVM VM on exclusive cores and hugepage memory).
//
//	rfm run [LAYOUT]   supervisor in the foreground with a layout's subOSes
//	rfm serve          the supervisor daemon (API on a Unix socket)
//	rfm create/destroy/ps/inspect/console/logs/events/check/exec/stats
//	rfm vmm [flags]    run one subOS in the foreground (the VMM process)
//	rfm uplink [flags] one subOS's rootless user-mode network (hidden; its own process)
//
// The CLI uses github.com/spf13/cobra: the de-facto standard for Go
// command trees (kubectl, docker), with flag parsing, help and completion.
package main

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"rainforest/rfm/api"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	g := &globalFlags{}
	root := rootCommand(g)
	err := root.ExecuteContext(ctx)
	stop()
	os.Exit(report(os.Stderr, err, g.output))
}

// rootCommand builds rfm's command tree.
func rootCommand(g *globalFlags) *cobra.Command {
	root := &cobra.Command{
		Use:   "rfm",
		Short: "RainForest: isolate first, then share",
		Long: `RainForest splits a machine's cores, memory and devices among subOSes: each
an unmodified Linux in a KVM VM on exclusive cores and hugepage memory.
rfm serve (or rfm run) is the supervisor; the other commands talk to it
over its API socket.

Environment:
  RFM_SOCKET  the supervisor's API socket (default ` + api.DefaultSocket + `);
              --socket overrides it
  RF_IMAGES   directory of the default subOS image that make image builds
              (default build/images): rfm run boots it, rfm create's
              --kernel and --initrd default to its files

Exit status:
  0  success
  1  the operation failed (rfm check: the layout has problems)
  2  usage error: unknown command or flag, wrong arguments, a bad flag value
  3  not found: no such subOS, disk or segment
  4  conflict: the name is taken, or the device or segment is busy
  rfm vmm exits with its guest's status instead.`,
		Example: `  rfm serve &                                # the supervisor
  rfm create web --cpus 2 --memory 1G
  rfm ps
  rfm console web                            # Ctrl-] detaches
  rfm destroy web`,
		SilenceUsage:               true,
		SuggestionsMinimumDistance: 2,
		SilenceErrors:              true,
		// A word that is no command is a usage error (exit 2).
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return nil
			}
			hint := "rfm --help lists the commands"
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				hint = "did you mean " + s[0] + "? " + hint
			}
			return usageErrorf("unknown command %q: %s", args[0], hint)
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	socket := api.DefaultSocket
	if s := os.Getenv("RFM_SOCKET"); s != "" {
		socket = s
	}
	root.PersistentFlags().StringVar(&g.socket, "socket", socket, "supervisor API socket (env RFM_SOCKET)")
	console := consoleCommand(g)
	if console.Example == "" {
		console.Example = `  rfm console web
  rfm console /tmp/a.sock        # a VMM started with rfm vmm --console-socket /tmp/a.sock`
	}
	root.AddCommand(vmmCommand(), runCommand(g), console, serveCommand(g), createCommand(g),
		destroyCommand(g), psCommand(g), inspectCommand(g), logsCommand(g), eventsCommand(g), checkCommand(g),
		messageCommand(g), boardCommand(g), attachCommand(g), detachCommand(g), grantCommand(g), revokeCommand(g),
		versionCommand(g), infoCommand(g), execCommand(g), statsCommand(g), resizeCommand(g), autoscaleCommand(g), lendCommand(g),
		returnCommand(g), loansCommand(g), uplinkCommand(), shareCommand(g), unshareCommand(g), sshCommand(g), genManCommand(root))
	addVersionFlag(root, g)
	addCompletions(root, g)
	// cobra's own commands get examples too.
	root.InitDefaultCompletionCmd()
	root.InitDefaultHelpCmd()
	for _, c := range root.Commands() {
		switch c.Name() {
		case "help":
			c.Example = "  rfm help create"
		case "completion":
			c.Example = `  rfm completion bash > /etc/bash_completion.d/rfm
  source <(rfm completion bash)`
			for _, sh := range c.Commands() {
				sh.Example = "  source <(rfm completion " + sh.Name() + ")"
			}
		}
	}
	usageErrors(root)
	return root
}

// usageErrors makes every flag and argument error in the tree a
// usageError (exit status 2).
func usageErrors(root *cobra.Command) {
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return usageError{err: err, cmd: cmd} })
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if check := c.Args; check != nil {
			c.Args = func(cmd *cobra.Command, args []string) error {
				err := check(cmd, args)
				var ue usageError
				if err != nil && !errors.As(err, &ue) {
					return usageError{err: err, cmd: cmd}
				}
				return err
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}
