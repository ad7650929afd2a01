package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"rainforest/vmm/config"
)

// Commands that change a running subOS's devices: disks and shared
// segments are hot-added (the guest finds them through ACPI PCI hotplug)
// and removed once the guest has released them.

func attachCommand(g *globalFlags) *cobra.Command {
	var disk, id string
	cmd := &cobra.Command{
		Use:   "attach NAME --disk PATH[,ro][,direct]",
		Short: "Hot-add a disk to a running subOS",
		Long: `Hot-add a raw image or block device to a running subOS as a virtio-blk
disk. The guest's kernel sees it appear (ACPI PCI hotplug) and loads its
driver by itself. The disk gets an id (disk0, disk1, ... or --id) that
rfm detach takes.`,
		Example: `  rfm attach web --disk /var/lib/images/data.img
  rfm attach web --disk /dev/vg0/db,direct --id db
  rfm attach web --disk scratch.img,iops=500,bw=20M -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if disk == "" {
				return usageErrorf("--disk is required: the image or device to attach, %s", config.DiskSyntax)
			}
			d, err := config.ParseDisk(disk)
			if err != nil {
				return usageErrorf("--disk: %w", err)
			}
			d.Path, d.ID = abs(d.Path), id
			got, err := g.client().AttachDisk(cmd.Context(), args[0], d)
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), got, func(w io.Writer) {
				fmt.Fprintln(w, "DISK\tPATH\tOPTIONS")
				fmt.Fprintf(w, "%s\t%s\t%s\n", got.ID, got.Path, diskOptions(got))
			})
		},
	}
	cmd.Flags().StringVar(&disk, "disk", "", "raw image or block device, "+config.DiskSyntax)
	cmd.Flags().StringVar(&id, "id", "", "the disk's id (default: the first free diskN)")
	g.addOutputFlag(cmd, "")
	return cmd
}

func diskOptions(d config.Disk) string {
	s := "rw"
	if d.ReadOnly {
		s = "ro"
	}
	if d.Direct {
		s += ",direct"
	}
	if l := (config.Disk{IOPS: d.IOPS, Bandwidth: d.Bandwidth}).String(); l != "" {
		s += l // ",iops=N,..." (the path left empty)
	}
	return s
}

func detachCommand(g *globalFlags) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "detach NAME DISK",
		Short: "Remove a disk from a running subOS once the guest releases it",
		Long: `Ask a running subOS's guest to release a disk (by id or path) and remove
it once it has. The guest has --timeout to let go; if it does not, the disk
stays attached and working and rfm detach fails saying so.`,
		Example: `  rfm detach web disk1
  rfm detach web /var/lib/images/data.img --timeout 1m`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			disk := args[1]
			if strings.Contains(disk, "/") {
				disk = abs(disk) // a path, as attached; otherwise an id
			}
			return g.client().DetachDisk(cmd.Context(), args[0], disk, timeout)
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "how long the guest has to release the disk (default 10s)")
	return cmd
}

func grantCommand(g *globalFlags) *cobra.Command {
	var segment string
	cmd := &cobra.Command{
		Use:   "grant NAME --segment NAME[,size=SIZE][,ro]",
		Short: "Grant a running subOS a shared segment",
		Long: `Grant a running subOS a named shared segment: the segment's device is
hot-added to its guest, where rfcom map finds it. The first grant of a
segment creates it and must give its size; ro makes this grant read-only.`,
		Example: `  rfm grant web --segment cache,size=4M
  rfm grant db --segment cache,ro`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if segment == "" {
				return usageErrorf("--segment is required: NAME[,size=SIZE][,ro]")
			}
			grant, err := parseSegment(segment)
			if err != nil {
				return err
			}
			return g.client().Grant(cmd.Context(), args[0], grant)
		},
	}
	cmd.Flags().StringVar(&segment, "segment", "", "shared segment NAME[,size=SIZE][,ro] (size creates it)")
	return cmd
}

func revokeCommand(g *globalFlags) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "revoke NAME SEGMENT",
		Short: "Take a shared segment back from a running subOS once the guest releases it",
		Long: `Ask a running subOS's guest to release a shared segment's device and take
the grant back once it has; the segment is freed with its last grant. The
guest has --timeout to let go; if it does not, the grant stays.`,
		Example: `  rfm revoke web cache`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.client().Revoke(cmd.Context(), args[0], args[1], timeout)
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "how long the guest has to release the segment (default 10s)")
	return cmd
}
