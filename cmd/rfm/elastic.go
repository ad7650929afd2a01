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
	var memory string
	cmd := &cobra.Command{
		Use:   "resize NAME (--cpus N | --memory SIZE)...",
		Short: "Grow or shrink a running subOS's cores or memory",
		Long: `Make a running subOS hold N cores, SIZE of memory, or both (cores first),
while its guest runs.

Cores: growing takes free cores of its memory node from the ledger, pins
its parked vCPU threads to them and has its agent bring the guest CPUs
online; shrinking has the agent take the highest guest CPUs offline, parks
their vCPU threads (they cost no host CPU) and gives the cores back
(borrowed ones to their lenders first). N is at most the subOS's max_cpus
(rfm create --max-cpus; by default every core of its node but the host's).

Memory: growing takes hugepages of its node's pool from the ledger and has
the guest plug them through virtio-mem (online as movable memory);
shrinking has the guest unplug memory and gives the pages back to the
pool (and to the host, where rfm grew the pool for it). SIZE is the
subOS's boot memory plus a multiple of its hotplug block (2 MiB), at most
its max_memory (rfm create --max-memory). A guest that cannot free or take
it all within 30s stops where it got to: rfm resize fails naming what was
asked and what the subOS holds now, which the ledger holds too.

A guest that refuses to take a CPU offline, too few free cores or pages,
or a subOS without a running agent leave everything as it was, and rfm
resize fails saying why.`,
		Example: `  rfm resize web --cpus 4
  rfm resize web --memory 1G
  rfm resize web --cpus 2 --memory 512M -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			setCPUs, setMemory := cmd.Flags().Changed("cpus"), cmd.Flags().Changed("memory")
			if !setCPUs && !setMemory {
				return usageErrorf("--cpus or --memory is required: the number of cores or the memory the subOS is to hold")
			}
			if setCPUs && cpus < 1 {
				return usageErrorf("--cpus %d: a subOS needs at least one core", cpus)
			}
			var bytes uint64
			if setMemory {
				var err error
				if bytes, err = units.ParseNonZeroSize(memory); err != nil {
					return usageErrorf("--memory %q: %v", memory, err)
				}
			}
			c := g.client()
			var info supervisor.Info
			var err error
			if setCPUs {
				info, err = c.ResizeCPUs(cmd.Context(), args[0], cpus)
			}
			if err == nil && setMemory {
				info, err = c.ResizeMemory(cmd.Context(), args[0], bytes)
			}
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), infoJSON(info), func(w io.Writer) { psTable(w, []supervisor.Info{info}) })
		},
	}
	cmd.Flags().IntVar(&cpus, "cpus", 0, "the number of cores the subOS is to hold")
	cmd.Flags().StringVar(&memory, "memory", "", "the memory the subOS is to hold, e.g. 768M or 2G")
	g.addOutputFlag(cmd, "")
	return cmd
}

// optionalSize parses the size flag name when it was given (0 when not).
func optionalSize(cmd *cobra.Command, name, value string) (uint64, error) {
	if !cmd.Flags().Changed(name) {
		return 0, nil
	}
	n, err := units.ParseNonZeroSize(value)
	if err != nil {
		return 0, usageErrorf("--%s %q: %v", name, value, err)
	}
	return n, nil
}

func lendCommand(g *globalFlags) *cobra.Command {
	var cpus int
	var memory string
	cmd := &cobra.Command{
		Use:   "lend FROM TO (--cpus K | --memory SIZE)...",
		Short: "Lend cores or memory of one running subOS to another",
		Long: `Move K of FROM's own cores, SIZE of its hotplugged memory, or both, to TO
while both run, recorded in the ledger as one loan with its lender (rfm
loans, rfm ps). FROM's guest takes K CPUs offline and unplugs the memory
first, then TO's brings the CPUs online and plugs the memory; if either
guest cannot, everything is put back. FROM keeps at least one core and
its boot memory, and cannot lend on what it borrowed; TO must have room
below its max_cpus and max_memory. rfm return gives them back.`,
		Example: `  rfm lend batch web --cpus 2
  rfm lend batch web --memory 256M
  rfm lend batch web --cpus 1 -o json`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			bytes, err := optionalSize(cmd, "memory", memory)
			if err != nil {
				return err
			}
			if cpus < 0 || cpus == 0 && bytes == 0 {
				return usageErrorf("--cpus or --memory is required: how many cores (at least 1) or how much memory to lend")
			}
			loan, err := g.client().Lend(cmd.Context(), supervisor.LendRequest{From: args[0], To: args[1], CPUs: cpus, Memory: bytes})
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), loan, func(w io.Writer) { loansTable(w, []ledger.Loan{loan}) })
		},
	}
	cmd.Flags().IntVar(&cpus, "cpus", 0, "how many cores to lend")
	cmd.Flags().StringVar(&memory, "memory", "", "how much memory to lend, e.g. 256M")
	g.addOutputFlag(cmd, "")
	return cmd
}

func returnCommand(g *globalFlags) *cobra.Command {
	var cpus int
	var memory string
	cmd := &cobra.Command{
		Use:   "return (LOAN-ID | FROM TO) [--cpus K] [--memory SIZE]",
		Short: "Give borrowed cores and memory back to their lender",
		Long: `Give the cores and memory of a loan (by its id, from rfm loans) or of the
loans FROM made TO back to the lender, while both run: the borrower's
guest takes the CPUs offline and unplugs the memory, then the lender's
brings the CPUs online and plugs the memory. --cpus and --memory return
only that much (preempted loans first, the most recent first).`,
		Example: `  rfm return 3
  rfm return batch web
  rfm return batch web --cpus 1
  rfm return batch web --memory 128M`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cpus < 0 {
				return usageErrorf("--cpus %d: give a number of cores, or leave it out for all", cpus)
			}
			bytes, err := optionalSize(cmd, "memory", memory)
			if err != nil {
				return err
			}
			req := supervisor.ReturnRequest{CPUs: cpus, Memory: bytes}
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
	cmd.Flags().StringVar(&memory, "memory", "", "how much memory to return, e.g. 128M (default: all)")
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
	fmt.Fprintln(w, "ID\tLENDER\tBORROWER\tKIND\tCORES\tMEMORY")
	for _, l := range loans {
		cores, memory := units.FormatCPUList(l.Cores), units.FormatSize(l.Memory)
		if len(l.Cores) == 0 {
			cores = "-"
		}
		if l.Memory == 0 {
			memory = "-"
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\n", l.ID, l.Lender, l.Borrower, l.Kind, cores, memory)
	}
}

// loanSummary is the LOANS column of rfm ps: cores and memory borrowed
// (+) and lent (-), with the other party ("+2<a", "-256M>b"); "-" when
// none.
func loanSummary(a ledger.Allocation) string {
	var parts []string
	// what is a loan's cores and memory, each shown on its own.
	what := func(l ledger.Loan) []string {
		var w []string
		if len(l.Cores) > 0 {
			w = append(w, units.FormatCPUList(l.Cores))
		}
		if l.Memory > 0 {
			w = append(w, units.FormatSize(l.Memory))
		}
		return w
	}
	for _, l := range a.Borrowed {
		for _, x := range what(l) {
			parts = append(parts, fmt.Sprintf("+%s<%s", x, l.Lender))
		}
	}
	for _, l := range a.Lent {
		for _, x := range what(l) {
			parts = append(parts, fmt.Sprintf("-%s>%s", x, l.Borrower))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}
