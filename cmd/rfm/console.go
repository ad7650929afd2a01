package main

import (
	"os"
	"strings"

	"github.com/spf13/cobra"

	"rainforest/vmm/consolesock"
)

func consoleCommand(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "console NAME|SOCKET",
		Short: "Attach this terminal to a subOS's console (by name, or a socket path from rfm vmm --console-socket)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			if !strings.Contains(path, "/") {
				info, err := g.client().Get(cmd.Context(), path)
				if err != nil {
					return err
				}
				path = info.ConsoleSocket
			}
			if restore, ok := rawTerminal(os.Stdin); ok {
				defer restore()
			}
			return consolesock.Attach(cmd.Context(), path, os.Stdin, os.Stdout)
		},
	}
}
