package main

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"rainforest/internal/buildinfo"
	"rainforest/internal/units"
	"rainforest/rfm/api"
)

// versionReport is what rfm version prints: this client's build and the
// server's (absent, with ServerError, when the server did not answer).
type versionReport struct {
	Client      buildinfo.Info     `json:"client"`
	Server      *api.VersionResult `json:"server,omitempty"`
	ServerError string             `json:"server_error,omitempty"`
}

// printVersion prints the client's version and asks the server for its;
// it fails (exit 1) when the server is not reachable, after printing the
// client's part.
func printVersion(cmd *cobra.Command, g *globalFlags) error {
	rep := versionReport{Client: buildinfo.Read()}
	sv, serr := g.client().Version(cmd.Context())
	if serr == nil {
		rep.Server = &sv
	} else {
		rep.ServerError = serr.Error()
	}
	err := g.print(cmd.OutOrStdout(), rep, func(w io.Writer) {
		fmt.Fprintln(w, "Client:")
		buildRows(w, rep.Client)
		fmt.Fprintln(w, "\nServer:")
		if rep.Server == nil {
			fmt.Fprintf(w, " not reachable at %s\n", g.socket)
			return
		}
		buildRows(w, rep.Server.Info)
		fmt.Fprintf(w, " API version:\t%s\n", rep.Server.APIVersion)
	})
	if err != nil {
		return err
	}
	if serr != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "rfm: the server did not answer: %v\n", serr)
		return exitError{code: 1}
	}
	return nil
}

func buildRows(w io.Writer, in buildinfo.Info) {
	fmt.Fprintf(w, " Version:\t%s\n", in.Version)
	fmt.Fprintf(w, " Commit:\t%s\n", in.ShortCommit())
	fmt.Fprintf(w, " Go version:\t%s\n", in.GoVersion)
	fmt.Fprintf(w, " OS/Arch:\t%s/%s\n", in.OS, in.Arch)
}

func versionCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version of rfm and of the supervisor it talks to",
		Long: `Print the version of this rfm (the client) and of the supervisor serving
--socket (the server): each one's version, git commit, Go version and
platform. When the supervisor does not answer, the client's part is still
printed and rfm exits 1. rfm --version does the same.`,
		Example: `  rfm version
  rfm version -o json
  rfm --version`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return printVersion(cmd, g) },
	}
	g.addOutputFlag(cmd, "")
	return cmd
}

// addVersionFlag gives root --version, which prints what rfm version
// does; root without a command prints its help.
func addVersionFlag(root *cobra.Command, g *globalFlags) {
	var version bool
	root.Flags().BoolVar(&version, "version", false, "print the version of rfm and of the supervisor")
	root.RunE = func(cmd *cobra.Command, _ []string) error {
		if version {
			return printVersion(cmd, g)
		}
		return cmd.Help()
	}
}

func infoCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "info",
		Short: "Summarise the machine and who owns what: cores, hugepages, devices",
		Long: `Summarise the machine as the supervisor discovered it and its ledger now:
the online, housekeeping, free and owned cores; each NUMA node's memory and
hugepage pools (pages the ledger may hand out, owned by subOSes, free); what
each subOS owns; and the PCI devices with their IOMMU groups and owners.
-o json prints GET /v1/inventory's answer.`,
		Example: `  rfm info
  rfm info -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			inv, err := g.client().InventoryReport(cmd.Context())
			if err != nil {
				return err
			}
			if inv.Inventory == nil {
				return errors.New("the supervisor sent no inventory")
			}
			return g.print(cmd.OutOrStdout(), inv, func(w io.Writer) { infoTable(w, inv) })
		},
	}
	g.addOutputFlag(cmd, "")
	return cmd
}

// infoTable writes the inventory and usage for people.
func infoTable(w io.Writer, inv api.Inventory) {
	var online []int
	for _, c := range inv.CPUs {
		if c.Online {
			online = append(online, c.ID)
		}
	}
	u := inv.Usage
	owner := map[int]string{}
	devOwner := map[string]string{}
	var owned []int
	if u != nil {
		for _, a := range u.Allocations {
			for _, c := range a.Cores {
				owner[c] = a.Name
				owned = append(owned, c)
			}
			for _, d := range a.Devices {
				devOwner[d] = a.Name
			}
		}
		slices.Sort(owned)
	}
	fmt.Fprintf(w, "Cores:\t%d online (%s)\n", len(online), cpuList(online))
	if u != nil {
		fmt.Fprintf(w, " housekeeping:\t%d (%s)\n", len(u.Housekeeping), cpuList(u.Housekeeping))
		fmt.Fprintf(w, " free:\t%d (%s)\n", len(u.FreeCores), cpuList(u.FreeCores))
		fmt.Fprintf(w, " owned by subOSes:\t%d (%s)\n", len(owned), cpuList(owned))
	} else {
		fmt.Fprintln(w, " ownership:\tnot reported by this supervisor")
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "NODE\tCPUS\tMEMORY\tFREE AT START\tPAGE SIZE\tPAGES\tOWNED\tFREE")
	for _, n := range inv.Nodes {
		mem := fmt.Sprintf("%d MiB", n.MemTotal>>20)
		free := fmt.Sprintf("%d MiB", n.MemFree>>20)
		if len(n.HugePages) == 0 {
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\t-\t-\t-\t-\n", n.ID, cpuList(n.CPUs), mem, free)
		}
		for i, p := range n.HugePages {
			total, own, fr := fmt.Sprint(p.Total), "-", fmt.Sprint(p.Free)
			if u != nil {
				for _, pu := range u.Pools {
					if pu.Node == n.ID && pu.PageSize == p.PageSize {
						total, own, fr = fmt.Sprint(pu.Capacity), fmt.Sprint(pu.Owned), fmt.Sprint(pu.Free)
					}
				}
			}
			if i > 0 {
				fmt.Fprintf(w, "\t\t\t\t%s\t%s\t%s\t%s\n", pageSizeLabel(p.PageSize), total, own, fr)
				continue
			}
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.ID, cpuList(n.CPUs), mem, free, pageSizeLabel(p.PageSize), total, own, fr)
		}
	}
	if u != nil && len(u.Allocations) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "SUBOS\tCORES\tNODE\tMEMORY\tDEVICES")
		for _, a := range u.Allocations {
			fmt.Fprintf(w, "%s\t%s\t%d\t%d x %s\t%s\n", a.Name, cpuList(a.Cores), a.Node, a.Pages, pageSizeLabel(a.PageSize), strings.Join(a.Devices, ","))
		}
	}
	groups := map[int]bool{}
	for _, d := range inv.Devices {
		if d.IOMMUGroup >= 0 {
			groups[d.IOMMUGroup] = true
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Devices:\t%d PCI functions in %d IOMMU groups\n", len(inv.Devices), len(groups))
	if len(inv.Devices) == 0 {
		return
	}
	fmt.Fprintln(w, "ADDRESS\tID\tCLASS\tDRIVER\tIOMMU GROUP\tNODE\tOWNER")
	for _, d := range inv.Devices {
		fmt.Fprintf(w, "%s\t%04x:%04x\t%06x\t%s\t%s\t%s\t%s\n", d.Address, d.Vendor, d.Device, d.Class, dash(d.Driver), orNone(d.IOMMUGroup), orNone(d.Node), dash(devOwner[d.Address]))
	}
}

func cpuList(cpus []int) string {
	if len(cpus) == 0 {
		return "none"
	}
	return units.FormatCPUList(cpus)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// orNone writes an id, "-" for the -1 that means none or unknown.
func orNone(id int) string {
	if id < 0 {
		return "-"
	}
	return fmt.Sprint(id)
}
