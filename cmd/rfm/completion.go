package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"

	"rainforest/rfm/supervisor"
)

// completionTimeout bounds the API requests behind a completion: a shell
// waits for them.
const completionTimeout = 2 * time.Second

// addCompletions makes the shell complete subOS names (asked of the
// supervisor) and, after one, the disk or segment names it holds. With no
// supervisor answering, nothing is offered and nothing is printed.
func addCompletions(root *cobra.Command, g *globalFlags) {
	for _, c := range root.Commands() {
		switch c.Name() {
		case "inspect", "logs", "console", "attach", "grant", "message", "exec", "stats", "resize", "autoscale", "share", "ssh":
			c.ValidArgsFunction = g.completeArgs(false, nil)
		case "destroy", "lend", "return":
			c.ValidArgsFunction = g.completeArgs(true, nil)
		case "detach":
			c.ValidArgsFunction = g.completeArgs(false, func(i supervisor.Info) []string {
				var ids []string
				for _, d := range i.Spec.Disks {
					ids = append(ids, d.ID)
				}
				return ids
			})
		case "unshare":
			c.ValidArgsFunction = g.completeArgs(false, func(i supervisor.Info) []string {
				var tags []string
				for _, s := range i.Spec.Shares {
					tags = append(tags, s.Tag)
				}
				return tags
			})
		case "revoke":
			c.ValidArgsFunction = g.completeArgs(false, func(i supervisor.Info) []string {
				var names []string
				for _, s := range i.Spec.Segments {
					names = append(names, s.Name)
				}
				for n := range i.SegmentPeers {
					if !slices.Contains(names, n) {
						names = append(names, n)
					}
				}
				return names
			})
		}
	}
}

// completeArgs completes a subOS name as the first argument (or every
// argument with many), and with second the names second finds in that
// subOS as the second argument.
func (g *globalFlags) completeArgs(many bool, second func(supervisor.Info) []string) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		ctx := cmd.Context()
		if ctx == nil {
			ctx = context.Background()
		}
		ctx, cancel := context.WithTimeout(ctx, completionTimeout)
		defer cancel()
		var names []string
		switch {
		case len(args) == 0 || many:
			list, err := g.client().List(ctx)
			if err != nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			for _, i := range list {
				if !slices.Contains(args, i.Name) {
					names = append(names, i.Name)
				}
			}
		case len(args) == 1 && second != nil:
			info, err := g.client().Get(ctx, args[0])
			if err != nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			names = second(info)
		}
		var out []cobra.Completion
		for _, n := range names {
			if n != "" && strings.HasPrefix(n, toComplete) {
				out = append(out, n)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// fixedValues completes a flag from a list ("VALUE\tdescription" each).
func fixedValues(cmd *cobra.Command, flag string, values ...string) {
	_ = cmd.RegisterFlagCompletionFunc(flag, cobra.FixedCompletions(values, cobra.ShellCompDirectiveNoFileComp))
}

// genManCommand writes a man page per command (make install runs it).
// The pages come from the command tree through github.com/spf13/cobra/doc:
// cobra's own companion package, so the pages cannot drift from --help.
func genManCommand(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:     "gen-man DIR",
		Short:   "Write rfm's man pages (section 1) into DIR",
		Hidden:  true,
		Example: `  rfm gen-man /usr/local/share/man/man1`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := os.MkdirAll(args[0], 0o755); err != nil {
				return err
			}
			root.DisableAutoGenTag = true
			hdr := &doc.GenManHeader{Title: "RFM", Section: "1", Source: "RainForest", Manual: "RainForest Manual"}
			if err := doc.GenManTree(root, hdr, args[0]); err != nil {
				return fmt.Errorf("man pages in %s: %w", args[0], err)
			}
			return nil
		},
	}
}
