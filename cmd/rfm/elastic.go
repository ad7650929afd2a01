package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"rainforest/internal/units"
	"rainforest/ledger"
	"rainforest/rfm/supervisor"
)

// Commands that change a running subOS's size: resize against the free
// pool, lend and return between subOSes.

func resizeCommand(g *globalFlags) *cobra.Command {
	var cpus int
	cmd := &cobra.Command{
		Use:   "resize NAME --cpus N",
		Short: "Grow or shrink a running subOS's cores",
		Long: `Make a running subOS hold N cores while its guest runs. Growing takes free
cores of its memory node from the ledger, pins its parked vCPU threads to
them and has its agent bring the guest CPUs online; shrinking has the agent
take the highest guest CPUs offline, parks their vCPU threads (they cost no
host CPU) and gives the cores back (borrowed ones to their lenders first).

N is at most the subOS's max_cpus (rfm create --max-cpus; by default every
core of its node but the host's). A guest that refuses to take a CPU
offline, too few free cores, or a subOS without a running agent leave
everything as it was, and rfm resize fails saying why.`,
		Example: `  rfm resize web --cpus 4
  rfm resize web --cpus 1 -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("cpus") {
				return usageErrorf("--cpus is required: the number of cores the subOS is to hold")
			}
			if cpus < 1 {
				return usageErrorf("--cpus %d: a subOS needs at least one core", cpus)
			}
			info, err := g.client().ResizeCPUs(cmd.Context(), args[0], cpus)
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), infoJSON(info), func(w io.Writer) { psTable(w, []supervisor.Info{info}) })
		},
	}
	cmd.Flags().IntVar(&cpus, "cpus", 0, "the number of cores the subOS is to hold")
	g.addOutputFlag(cmd, "")
	return cmd
}

func lendCommand(g *globalFlags) *cobra.Command {
	var cpus int
	cmd := &cobra.Command{
		Use:   "lend FROM TO --cpus K",
		Short: "Lend cores of one running subOS to another",
		Long: `Move K of FROM's own cores to TO while both run, recorded in the ledger as
a loan with its lender (rfm loans, rfm ps). FROM's guest takes K CPUs
offline first, then TO's brings K online. FROM keeps at least one core, and
cannot lend on cores it borrowed. rfm return gives them back.`,
		Example: `  rfm lend batch web --cpus 2
  rfm lend batch web --cpus 1 -o json`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cpus < 1 {
				return usageErrorf("--cpus is required: how many cores to lend (at least 1)")
			}
			loan, err := g.client().Lend(cmd.Context(), supervisor.LendRequest{From: args[0], To: args[1], CPUs: cpus})
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), loan, func(w io.Writer) { loansTable(w, []ledger.Loan{loan}) })
		},
	}
	cmd.Flags().IntVar(&cpus, "cpus", 0, "how many cores to lend")
	g.addOutputFlag(cmd, "")
	return cmd
}

func returnCommand(g *globalFlags) *cobra.Command {
	var cpus int
	cmd := &cobra.Command{
		Use:   "return (LOAN-ID | FROM TO) [--cpus K]",
		Short: "Give borrowed cores back to their lender",
		Long: `Give the cores of a loan (by its id, from rfm loans) or of the loans FROM
made TO back to the lender, while both run: the borrower's guest takes
the CPUs offline, then the lender's brings them online. --cpus returns
only K of them (preempted loans first, the most recent first).`,
		Example: `  rfm return 3
  rfm return batch web
  rfm return batch web --cpus 1`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cpus < 0 {
				return usageErrorf("--cpus %d: give a number of cores, or leave it out for all", cpus)
			}
			req := supervisor.ReturnRequest{CPUs: cpus}
			if len(args) == 1 {
				id, err := strconv.ParseUint(args[0], 10, 64)
				if err != nil || id == 0 {
					return usageErrorf("%q is no loan id: give a loan's id (rfm loans) or the lender and the borrower", args[0])
				}
				req.ID = id
			} else {
				req.From, req.To = args[0], args[1]
			}
			return g.client().Return(cmd.Context(), req)
		},
	}
	cmd.Flags().IntVar(&cpus, "cpus", 0, "how many cores to return (default: all)")
	return cmd
}

func loansCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "loans",
		Short:   "List the loans between subOSes",
		Example: "  rfm loans\n  rfm loans -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			loans, err := g.client().Loans(cmd.Context())
			if err != nil {
				return err
			}
			if loans == nil {
				loans = []ledger.Loan{}
			}
			return g.print(cmd.OutOrStdout(), loans, func(w io.Writer) { loansTable(w, loans) })
		},
	}
	g.addOutputFlag(cmd, "")
	return cmd
}

func loansTable(w io.Writer, loans []ledger.Loan) {
	fmt.Fprintln(w, "ID\tLENDER\tBORROWER\tKIND\tCORES")
	for _, l := range loans {
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", l.ID, l.Lender, l.Borrower, l.Kind, units.FormatCPUList(l.Cores))
	}
}

// loanSummary is the LOANS column of rfm ps: cores borrowed (+) and lent
// (-), with the other party; "-" when none.
func loanSummary(a ledger.Allocation) string {
	var parts []string
	for _, l := range a.Borrowed {
		parts = append(parts, fmt.Sprintf("+%s<%s", units.FormatCPUList(l.Cores), l.Lender))
	}
	for _, l := range a.Lent {
		parts = append(parts, fmt.Sprintf("-%s>%s", units.FormatCPUList(l.Cores), l.Borrower))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}
