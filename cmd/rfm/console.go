package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"rainforest/rfm/consoleclient"
)

func consoleCommand(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "console NAME|SOCKET",
		Short: "Attach this terminal to a subOS's console (by name, or a socket path from rfm vmm --console-socket)",
		Long: `Attach this terminal to a subOS's serial console, by subOS name or by the
path of a console socket (rfm vmm --console-socket).

On a terminal, rfm prints a one-line banner on stderr and puts the terminal
in raw mode: every key, Ctrl-C included, goes to the guest. Type Ctrl-] to
detach; the terminal is restored and the subOS keeps running. When the
subOS stops, rfm says so and exits.

When standard input is not a terminal (a pipe), it is sent to the console
as it comes, with no escape character; its end does not detach: rfm keeps
printing the console's output until the console closes.

Guest output is written to the terminal unfiltered, as a serial console's
bytes are. Both the serial console (ttyS0) and the virtio console (hvc0)
appear; what is typed goes to the serial console, the guest's login
console.`,
		Example: `  rfm console web                     # attach; Ctrl-] detaches
  printf 'uname -a\n' | rfm console web   # type a line from a script
  rfm console /run/rf/web.sock        # a console socket of rfm vmm`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, name := args[0], "console "+args[0]
			if !strings.Contains(path, "/") {
				info, err := g.client().Get(cmd.Context(), path)
				if err != nil {
					return err
				}
				if info.ConsoleSocket == "" {
					return fmt.Errorf("subOS %s has no console socket (it is not running; rfm ps shows its state)", args[0])
				}
				path, name = info.ConsoleSocket, "subOS "+args[0]
			}
			s := consoleclient.Streams{In: os.Stdin, Out: cmd.OutOrStdout(), Messages: cmd.ErrOrStderr()}
			if term.IsTerminal(int(os.Stdin.Fd())) {
				s.Terminal = os.Stdin
			}
			_, err := consoleclient.Attach(cmd.Context(), path, name, s)
			return err
		},
	}
}
