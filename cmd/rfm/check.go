package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"rainforest/ledger"
	"rainforest/partitioner"
	"rainforest/rfm/layout"
	"rainforest/rfm/supervisor"
)

func checkCommand(g *globalFlags) *cobra.Command {
	var sys, proc string
	cmd := &cobra.Command{
		Use:   "check LAYOUT.yaml",
		Short: "Validate a layout against this machine and list every problem",
		Long: `Validate a layout before anything is touched: unknown fields, duplicate
names, overlapping, offline or non-existent cores, the supervisor's core,
memory beyond the hugepage pools or not page-aligned, unsupported page sizes,
missing files, and PCI devices (passthrough is not supported yet). Every
problem is listed; the exit status is 1 when there is any. rfm run and rfm
create run the same checks.`,
		Example: `  rfm check layout.yaml
  rfm check layout.yaml -o json
  rfm check --sysfs /tmp/other/sys --procfs /tmp/other/proc layout.yaml`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			l, err := layout.Parse(f, layout.DefaultMaxBytes)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			l.ResolvePaths(filepath.Dir(args[0]))
			inv, err := partitioner.Discover(partitioner.Roots{Sys: sys, Proc: proc})
			if err != nil {
				return err
			}
			led, err := ledger.New(inv, l.Housekeeping(inv))
			if err != nil {
				return err
			}
			probs := l.Check(inv, supervisor.Admission{Ledger: led})
			err = g.print(cmd.OutOrStdout(), nonNil(probs), func(w io.Writer) {
				if len(probs) == 0 {
					fmt.Fprintf(w, "%s: ok (%d subOSes)\n", args[0], len(l.SubOSes))
				}
				for _, p := range probs {
					fmt.Fprintln(w, p.Error())
				}
			})
			if err == nil && len(probs) > 0 {
				return exitError{code: exitFailed}
			}
			return err
		},
	}
	cmd.Flags().StringVar(&sys, "sysfs", "/sys", "sysfs root (for checking against another machine's tree)")
	cmd.Flags().StringVar(&proc, "procfs", "/proc", "procfs root")
	g.addOutputFlag(cmd, "")
	return cmd
}
