package share

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// DefaultBinaries are where virtiofsd is looked for, in order: the Rust
// virtiofsd (Debian's virtiofsd package), then QEMU's C virtiofsd
// (qemu-system-common up to QEMU 7.2).
func DefaultBinaries() []string {
	return []string{"/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"}
}

// ErrNoVirtiofsd means no virtiofsd was found.
var ErrNoVirtiofsd = errors.New("no virtiofsd")

// Binary is a virtiofsd and which command line it takes.
type Binary struct {
	Path string
	// Rust: the Rust virtiofsd (--shared-dir, --sandbox, --readonly);
	// else QEMU's C one (-o source=, -o sandbox=).
	Rust bool
	// ReadOnlyFlag: it has --readonly (the Rust one since 1.7), given
	// on top of the read-only view.
	ReadOnlyFlag bool
}

// helpTimeout bounds virtiofsd --help.
const helpTimeout = 10 * time.Second

// Find returns the first of paths (DefaultBinaries when none) that is an
// executable virtiofsd, telling which kind it is by its --help.
func Find(ctx context.Context, paths ...string) (Binary, error) {
	if len(paths) == 0 {
		paths = DefaultBinaries()
	}
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil || !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
			continue
		}
		hctx, cancel := context.WithTimeout(ctx, helpTimeout)
		help, _ := exec.CommandContext(hctx, p, "--help").CombinedOutput()
		cancel()
		b := Binary{Path: p, Rust: bytes.Contains(help, []byte("--shared-dir"))}
		b.ReadOnlyFlag = b.Rust && bytes.Contains(help, []byte("--readonly"))
		if !b.Rust && !bytes.Contains(help, []byte("source=")) {
			continue // neither kind: not a virtiofsd we can drive
		}
		return b, nil
	}
	return Binary{}, fmt.Errorf("%w: looked for %s (install Debian's virtiofsd package, or qemu-system-common)", ErrNoVirtiofsd, strings.Join(paths, ", "))
}

// SocketArgs is Args for a virtiofsd that creates and listens on the
// vhost-user socket at path itself (--socket-path) rather than on a
// descriptor: for a VMM other than rfm's, such as QEMU in bench/fs.
func (b Binary) SocketArgs(path, source string, readOnly bool, sandbox Sandbox) []string {
	args := b.Args(0, source, readOnly, sandbox)
	for i, a := range args {
		if a == "--fd=0" {
			args[i] = "--socket-path=" + path
		}
	}
	return args
}

// Sandbox is how virtiofsd confines itself to the shared directory.
type Sandbox string

// Sandboxes. Both need root; namespace is the stronger (mount, PID and
// network namespaces, pivot_root into the directory); chroot is for hosts
// whose root cannot be pivoted away from (an initramfs).
const (
	SandboxNamespace Sandbox = "namespace"
	SandboxChroot    Sandbox = "chroot"
)

// DefaultSandbox is SandboxNamespace, or SandboxChroot where the root
// directory is an initramfs (rootfs), which pivot_root cannot leave.
func DefaultSandbox() Sandbox {
	if rootIsRootfs("/proc/self/mounts") {
		return SandboxChroot
	}
	return SandboxNamespace
}

// rootIsRootfs says whether the last mount on / in the mount table at
// path is the initial rootfs.
func rootIsRootfs(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	fstype := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && fields[1] == "/" {
			fstype = fields[2] // a later mount on / hides the earlier
		}
	}
	return fstype == "rootfs"
}

// Args is virtiofsd's command line (without the binary) serving source
// on the listening vhost-user socket at descriptor fd, in sandbox, with
// --readonly where the binary has it and the share is read-only (source
// is then the read-only view already). It has no thread pool: it answers
// each queue's requests in order, which lets the VMM answer the ones left
// when it fails (vmm/virtio/fs).
func (b Binary) Args(fd int, source string, readOnly bool, sandbox Sandbox) []string {
	if b.Rust {
		args := []string{"--fd=" + strconv.Itoa(fd), "--shared-dir=" + source, "--sandbox=" + string(sandbox), "--cache=auto", "--thread-pool-size=0"}
		if readOnly && b.ReadOnlyFlag {
			args = append(args, "--readonly")
		}
		return args
	}
	return []string{"-f", "--fd=" + strconv.Itoa(fd), "-o", "source=" + source, "-o", "sandbox=" + string(sandbox), "-o", "cache=auto", "--thread-pool-size=0"}
}
