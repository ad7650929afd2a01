// Command rfimage builds a RainForest subOS (L2) image from Debian
// packages into a cache directory and prints the paths of its artifacts.
//
// The default image is the Debian cloud kernel with a small busybox
// initramfs and a test disk: it boots in a second or two, for tests. With
// --image debian it also builds a Debian system on an ext4 root disk
// (debian.img: systemd, networking, OpenSSH, iperf3, fio and the agent)
// that the same kernel and initramfs boot with root=/dev/vda.
//
// Usage:
//
//	rfimage [-out DIR] [-v] [-force] [--image default|debian] [--ssh-key FILE]
//	        [--suite NAME] [--mirror URL]... [--size SIZE]
//
// Examples:
//
//	rfimage                                   # the default image in build/images
//	rfimage --image debian --ssh-key ~/.ssh/id_ed25519.pub
//	rfimage --image debian --mirror http://deb.debian.org/debian --size 4G
//
// Exit status: 0 built or up to date, 1 the build failed, 2 bad usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"rainforest/images"
	"rainforest/internal/units"
)

// Image kinds of --image.
const (
	imageDefault = "default"
	imageDebian  = "debian"
)

// mirrorList is a repeatable flag.
type mirrorList []string

func (m *mirrorList) String() string { return strings.Join(*m, " ") }

func (m *mirrorList) Set(v string) error {
	if strings.TrimSpace(v) == "" {
		return errors.New("empty mirror")
	}
	*m = append(*m, v)
	return nil
}

func main() {
	fl := flag.NewFlagSet("rfimage", flag.ContinueOnError)
	out := fl.String("out", images.DefaultOutDir, "output and cache directory")
	verbose := fl.Bool("v", false, "show progress (apt and mmdebstrap output, build steps)")
	force := fl.Bool("force", false, "rebuild even when the cached image is up to date")
	kind := fl.String("image", imageDefault, "what to build: default (kernel, initramfs, test disk) or debian (also a Debian system disk)")
	sshKey := fl.String("ssh-key", "", "debian: public key file (e.g. ~/.ssh/id_ed25519.pub) installed for root; without one nobody can log in over SSH")
	suite := fl.String("suite", images.DefaultDebianSuite, "debian: Debian release")
	size := fl.String("size", "", "debian: disk size, e.g. 4G (default: the content plus 1G)")
	var mirrors mirrorList
	fl.Var(&mirrors, "mirror", "debian: Debian mirror URL or \"deb ...\" line, repeatable (default: deb.debian.org with updates and security)")
	fl.Usage = func() {
		fmt.Fprintf(fl.Output(), `Usage: rfimage [flags]

Builds the subOS images into -out (reused while their inputs do not change).

  rfimage                                  the default image: kernel, initramfs, test disk
  rfimage --image debian --ssh-key ~/.ssh/id_ed25519.pub
                                           also the Debian system disk (needs root and mmdebstrap)

Flags:
`)
		fl.PrintDefaults()
	}
	if err := fl.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	usage := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "rfimage: "+format+"\n", args...)
		os.Exit(2)
	}
	if fl.NArg() > 0 {
		usage("unexpected argument %q", fl.Arg(0))
	}
	if *kind != imageDefault && *kind != imageDebian {
		usage("--image %q: want default or debian", *kind)
	}
	if *kind != imageDebian {
		fl.Visit(func(f *flag.Flag) {
			if f.Name == "ssh-key" || f.Name == "suite" || f.Name == "size" || f.Name == "mirror" {
				usage("--%s needs --image debian", f.Name)
			}
		})
	}
	if *sshKey != "" {
		data, err := os.ReadFile(*sshKey)
		if err == nil {
			_, err = images.ParseAuthorizedKeys(data)
		}
		if err != nil {
			usage("--ssh-key: %v", err)
		}
	}
	var sizeBytes uint64
	if *size != "" {
		var err error
		if sizeBytes, err = units.ParseNonZeroSize(*size); err != nil {
			usage("--size: %v", err)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var log io.Writer = io.Discard
	if *verbose {
		log = os.Stderr
	}
	if *kind == imageDebian {
		deb, err := images.BuildDebian(ctx, images.DebianOptions{
			OutDir: *out, Suite: *suite, Mirrors: mirrors, SSHKey: *sshKey, Size: int64(sizeBytes), Log: log, Force: *force,
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "rfimage:", err)
			os.Exit(1)
		}
		fmt.Printf("kernel-version %s\n", deb.KernelVersion)
		fmt.Printf("vmlinux        %s\n", deb.Kernel)
		fmt.Printf("bzImage        %s\n", deb.BzImage)
		fmt.Printf("initramfs      %s\n", deb.Initramfs)
		fmt.Printf("debian-disk    %s\n", deb.Disk)
		fmt.Printf("packages       %s\n", deb.Packages)
		fmt.Printf("cmdline        %s\n", images.DebianCmdline)
		fmt.Printf("ssh-key        %v\n", deb.SSHKey)
		return
	}
	img, err := images.Build(ctx, images.Options{OutDir: *out, Log: log, Force: *force})
	if err != nil {
		fmt.Fprintln(os.Stderr, "rfimage:", err)
		os.Exit(1)
	}
	fmt.Printf("kernel-version %s\n", img.KernelVersion)
	fmt.Printf("package        %s %s\n", img.KernelPackage, img.KernelPackageVersion)
	fmt.Printf("vmlinux        %s\n", img.Kernel)
	fmt.Printf("bzImage        %s\n", img.BzImage)
	fmt.Printf("initramfs      %s\n", img.Initramfs)
	fmt.Printf("disk           %s\n", img.Disk)
}
