package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"rainforest/images"
	"rainforest/internal/nested"
	"rainforest/vmm"
	"rainforest/vmm/hostcpu"
)

// defaultImagesDir is where `make image` puts the default subOS image.
func defaultImagesDir() string {
	if d := os.Getenv("RF_IMAGES"); d != "" {
		return d
	}
	return images.DefaultOutDir
}

func runCommand() *cobra.Command {
	var imagesDir, memory string
	var nestedMode string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Boot the default subOS and show its console",
		Long: `Boot the default subOS (the Debian cloud kernel with the RainForest
initramfs and a test disk) on host cores the machine can spare, with its
serial console on this terminal. Where this host's KVM cannot run Linux
natively (no VT-x/AMD-V, or the kvm_pvm back end), the subOS runs inside the
nested layer: a QEMU guest with an emulated AMD-V CPU, where rfm vmm boots it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			img, err := images.Build(ctx, images.Options{OutDir: imagesDir, Log: cmd.ErrOrStderr()})
			if err != nil {
				return fmt.Errorf("default image: %w", err)
			}
			useNested := nestedMode == "always"
			if nestedMode == "auto" {
				need, why := nested.Needed()
				if need {
					fmt.Fprintf(cmd.ErrOrStderr(), "rfm: %s; booting the subOS inside the nested QEMU layer (slow: about a minute)\n", why)
				}
				useNested = need
			}
			if useNested {
				return runNested(ctx, img, memory, cmd.OutOrStdout())
			}
			cores, err := defaultCores()
			if err != nil {
				return err
			}
			f := vmmFlags{name: "default", kernel: img.Kernel, initrd: img.Initramfs, cpus: hostcpu.FormatList(cores),
				memory: memory, pageSize: "2M", console: "stdio", profile: "host", logLevel: "warn",
				disks: []string{img.Disk + ",ro"}, appendArgs: "rf.cat=/hello.txt"}
			cfg, restore, err := f.linuxConfig(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			defer restore()
			e, err := vmm.BootLinux(ctx, cfg)
			if err != nil {
				return err
			}
			return exitFor(cfg.Logger, e)
		},
	}
	cmd.Flags().StringVar(&imagesDir, "images", defaultImagesDir(), "directory of the default subOS image (built by make image)")
	cmd.Flags().StringVar(&memory, "memory", "512M", "guest RAM of the default subOS")
	cmd.Flags().StringVar(&nestedMode, "nested", "auto", "run inside the nested QEMU layer: auto, always or never")
	return cmd
}

// defaultCores leaves core 0 to the host when there is more than one, and
// gives the subOS up to two of the rest.
func defaultCores() ([]int, error) {
	online, err := hostcpu.Topology{}.Online()
	if err != nil {
		return nil, err
	}
	if len(online) > 1 {
		online = online[1:]
	}
	return online[:min(2, len(online))], nil
}

// runNested boots L1 (QEMU, software CPU with emulated AMD-V) with this rfm
// binary and the image, and runs the default subOS in it with rfm vmm.
func runNested(ctx context.Context, img *images.Image, memory string, out io.Writer) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	files := map[string]string{
		"/bin/rfm":              self,
		"/l2/vmlinux":           img.Kernel,
		"/l2/initramfs.cpio.gz": img.Initramfs,
		"/l2/disk.img":          img.Disk,
	}
	script := strings.Join([]string{
		"/bin/rfm vmm --name default --kernel /l2/vmlinux --initrd /l2/initramfs.cpio.gz --disk /l2/disk.img,ro",
		"--cpus 0-1 --memory " + memory + " --console stdio --append 'rf.cat=/hello.txt rf.poweroff=1'",
	}, " ")
	res, err := nested.Run(ctx, nested.Config{
		L1Kernel: img, ExtraFiles: files, Script: script + "\n", CPUs: 2, MemoryMiB: 2048,
		HugePages: 300, Timeout: 15 * time.Minute, Log: out,
	})
	if err != nil {
		return err
	}
	if res.ExitStatus != 0 {
		return exitError{res.ExitStatus}
	}
	return nil
}
