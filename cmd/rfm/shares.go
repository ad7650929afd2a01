package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"rainforest/rfm/share"
	"rainforest/rfm/supervisor"
)

// Shared directories (virtio-fs): rfm create --share, rfm share and rfm
// unshare.

// shareFlagHelp is --share's help.
const shareFlagHelp = "host directory shared with the guest, " + share.Syntax + " (ro: read-only, enforced on the host; root: allow sharing /); repeatable"

// parseShare parses --share, making the directory's path absolute.
func parseShare(v string) (supervisor.ShareSpec, error) {
	s, err := share.Parse(v)
	if err != nil {
		return s, usageErrorf("--share: %w", err)
	}
	s.Path = abs(s.Path)
	return s, nil
}

func shareCommand(g *globalFlags) *cobra.Command {
	var v, id string
	cmd := &cobra.Command{
		Use:   "share NAME --share " + share.Syntax,
		Short: "Share a host directory with a running subOS",
		Long: `Share a host directory with a running subOS as a virtio-fs device: the
supervisor starts a virtiofsd for it in the subOS's cgroup, and the guest
sees the device appear (ACPI PCI hotplug). The default image mounts the
shares it boots with at /mnt/TAG; one added while it runs is mounted with
  mount -t virtiofs TAG /mnt/TAG
(rfm exec NAME -- ...). ro makes the share read-only, enforced on the host
(writes fail with EROFS); sharing / needs root. The share gets an id
(share0, share1, ... or --id); rfm unshare takes its tag.`,
		Example: `  rfm share web --share /srv/data:data
  rfm share web --share /srv/docs:docs,ro
  rfm share web --share /srv/data:data -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if v == "" {
				return usageErrorf("--share is required: the directory and its tag, %s", share.Syntax)
			}
			s, err := parseShare(v)
			if err != nil {
				return err
			}
			s.ID = id
			got, err := g.client().AddShare(cmd.Context(), args[0], s)
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), got, func(w io.Writer) {
				fmt.Fprintln(w, "SHARE\tTAG\tPATH\tMODE")
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", got.ID, got.Tag, got.Path, shareMode(got))
			})
		},
	}
	cmd.Flags().StringVar(&v, "share", "", "the directory and its tag, "+share.Syntax)
	cmd.Flags().StringVar(&id, "id", "", "the share's device id (default: the first free shareN)")
	g.addOutputFlag(cmd, "")
	return cmd
}

func unshareCommand(g *globalFlags) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "unshare NAME TAG",
		Short: "Remove a share from a running subOS once the guest releases it",
		Long: `Ask a running subOS's guest to release a share (by tag or id), remove its
device once it has and end its virtiofsd. The guest must have unmounted it:
it has --timeout to let go; if it does not, the share stays and rfm unshare
fails saying so.`,
		Example: `  rfm exec web -- umount /mnt/data && rfm unshare web data
  rfm unshare web docs --timeout 1m`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.client().RemoveShare(cmd.Context(), args[0], args[1], timeout)
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "how long the guest has to release the share (default 10s)")
	return cmd
}

func shareMode(s supervisor.ShareSpec) string {
	m := "rw"
	if s.ReadOnly {
		m = "ro"
	}
	if s.AllowRoot {
		m += ",root"
	}
	return m
}

// sharesTable lists a subOS's shares and their virtiofsd (rfm inspect -o
// table); nothing without shares.
func sharesTable(w io.Writer, i supervisor.Info) {
	if len(i.Shares) == 0 {
		return
	}
	fmt.Fprintln(w, "\nSHARE\tTAG\tPATH\tMODE\tSTATE\tPID\tERROR")
	for _, s := range i.Shares {
		pid, why := "-", "-"
		if s.PID > 0 {
			pid = fmt.Sprint(s.PID)
		}
		if s.Error != "" {
			why = s.Error
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, s.Tag, s.Path, shareMode(s.ShareSpec), s.State, pid, why)
	}
}

// shareLines prints the shares the guest has mounted and what the host
// spends on the subOS (rfm stats).
func shareLines(w io.Writer, st supervisor.AgentStats) {
	for _, m := range st.Shares { // printable ASCII (agentproto checks)
		fmt.Fprintf(w, "SHARE %s\tmounted at %s\n", m.Tag, m.Dir)
	}
	h := st.Host
	if h == nil {
		return
	}
	for _, b := range h.Backends {
		fmt.Fprintf(w, "BACKEND %s\tvirtiofsd pid %d (share %s): %.2fs CPU\n", b.Tag, b.PID, b.ID, float64(b.CPUUsec)/1e6)
	}
}
