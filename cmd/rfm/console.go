package main

import (
	"os"

	"github.com/spf13/cobra"

	"rainforest/vmm/consolesock"
)

func consoleCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "console SOCKET",
		Short: "Attach this terminal to a subOS console served by rfm vmm --console-socket",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if restore, ok := rawTerminal(os.Stdin); ok {
				defer restore()
			}
			return consolesock.Attach(cmd.Context(), args[0], os.Stdin, os.Stdout)
		},
	}
}
