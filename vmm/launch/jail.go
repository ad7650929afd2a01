package launch

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"rainforest/rfm/vmmctl"
	"rainforest/vmm/config"
	"rainforest/vmm/jail"
)

// Bounds on what a jailed VMM writes to regular files (RLIMIT_FSIZE): its
// console log (the console_log descriptor) and its own log (stderr,
// <rundir>/<name>.vmm.log). The limit is the size a file may reach, so it
// also bounds a writable disk image: it is raised to the largest
// writable regular-file disk at launch, and a larger one hot-added later
// is refused (fitsFileSizeLimit) rather than failing the guest's writes
// with EFBIG past the limit. Block devices are not limited.
const (
	// ConsoleLogBound bounds the console log file's size.
	ConsoleLogBound = config.MaxConsoleLog
	// VMMLogBound bounds the VMM's own log file.
	VMMLogBound = 64 << 20
)

// Descriptor bounds behind RLIMIT_NOFILE.
const (
	// baseFiles: standard streams, the runtime's epoll and its wake-up
	// descriptor, the control and console listeners, concurrent control
	// connections and console clients.
	baseFiles = 64
	// pciSlots is the most devices a machine has (PCI bus 0's slots).
	pciSlots = 31
	// deviceFiles bounds one device's descriptors: a region's files as
	// received (at most vmmctl.MaxFiles) plus its vector eventfds and
	// doorbells (2 per vector), or a disk's backing and queue eventfds.
	deviceFiles = vmmctl.MaxFiles + 2*config.MaxVectors
)

// NoFileLimit is RLIMIT_NOFILE for doc's VMM: /dev/kvm and the VM, one
// per vCPU, every PCI slot holding its largest device, and the base.
func NoFileLimit(doc *config.Document) uint64 {
	return baseFiles + 2 + uint64(len(doc.Cores)) + pciSlots*deviceFiles
}

// FileSizeLimit is RLIMIT_FSIZE for a VMM with these disk files: the log
// bounds, or the largest writable regular file when larger.
func FileSizeLimit(disks map[string]*os.File, doc *config.Document) uint64 {
	// Guest RAM is a memfd sized with ftruncate, which RLIMIT_FSIZE
	// bounds too (4k pages; hugetlb files are not limited).
	limit := uint64(ConsoleLogBound+VMMLogBound) + doc.Memory
	for _, d := range doc.WithDiskIDs() {
		f := disks[d.ID]
		if f == nil || d.ReadOnly {
			continue
		}
		if st, err := f.Stat(); err == nil && st.Mode().IsRegular() && uint64(st.Size()) > limit {
			limit = uint64(st.Size())
		}
	}
	return limit
}

// enterJail confines the VMM (vmm/jail) once it holds its descriptors.
func enterJail(doc *config.Document, o Options, disks map[string]*os.File) error {
	j := doc.Jail
	return jail.Enter(jail.Config{Root: j.Root, UID: j.UID, GID: j.GID, HostMountNS: j.HostMountNS,
		NoFile: NoFileLimit(doc), FileSize: FileSizeLimit(disks, doc), Sys: o.SysRoot == ""})
}

// fitsFileSizeLimit refuses a writable regular file larger than the
// process's RLIMIT_FSIZE (writes past it would fail).
func fitsFileSizeLimit(f *os.File, readOnly bool) error {
	if readOnly {
		return nil
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return err
	}
	var l unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_FSIZE, &l); err != nil {
		return err
	}
	if l.Cur != unix.RLIM_INFINITY && uint64(st.Size()) > l.Cur {
		return fmt.Errorf("a writable %d-byte file is larger than the jail's file size limit (%d bytes)", st.Size(), l.Cur)
	}
	return nil
}
