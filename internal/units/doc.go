// Package units parses and formats the two notations that RainForest's
// commands, layout files and the kernel's own files use for host resources:
// sizes in bytes and CPU lists. Host code (the supervisor, the VMM) and
// guest tools import it alike; it imports nothing but the standard library.
//
// # Sizes
//
// A size is a whole number of bytes, optionally followed by a unit:
//
//	4096  4096B        bytes
//	64K   64KB  64KiB  64 * 1024
//	512M  512MB 512MiB 512 * 1024^2
//	2G    2GB   2GiB   2 * 1024^3
//	1T    1TB   1TiB   1024^4
//
// Units are always powers of 1024 ("MB" means the same as "MiB", as in the
// kernel's memparse and the sysfs names "hugepages-2048kB"), and letters may
// be in any case. The Kubernetes spelling without the B ("512Mi") is
// accepted too. Spaces around the size are ignored; spaces inside it
// ("512 M"), fractions ("1.5G"), signs and other units are errors, and so is
// a size that does not fit in 64 bits. ParseSize accepts zero;
// ParseNonZeroSize is for callers to whom zero bytes makes no sense.
// FormatSize writes a size back with the largest unit that divides it
// exactly ("512M", "2G", "4097"), so ParseSize(FormatSize(n)) == n.
//
// # CPU lists
//
// A CPU list is the kernel's cpulist format, as in
// /sys/devices/system/cpu/online, cpuset.cpus and smp_affinity_list:
// comma-separated entries, each a CPU number "N" or an inclusive range
// "A-B" ("0-3,8-11"). Whitespace around the list, its entries and the
// bounds of a range is ignored, so a file's trailing newline is fine; the
// empty list is the empty string. The same lists name NUMA nodes (cpuset.mems).
//
// ParseCPUList refuses what is almost certainly a mistake: empty entries
// ("1,,2", a trailing comma), reversed ranges ("3-1"), a CPU listed twice
// (also through overlapping ranges, "0-3,2"), negative numbers and numbers
// above MaxCPU, Linux's largest possible CPU number. The last bound keeps a
// short string from expanding into a huge list: a valid list holds at most
// MaxCPU+1 CPUs. Entries may come in any order; the result is sorted. The
// kernel's other forms ("all", "N" for the last CPU, strides "0-31:2/8") are
// not accepted.
//
// FormatCPUList is the inverse: it sorts, drops duplicates and collapses
// runs into ranges ("0-3,8"), so ParseCPUList(FormatCPUList(l)) gives back
// l sorted.
//
// Errors match ErrSize or ErrCPUList and quote the input; callers add
// what the value was (a flag, a layout field, a file) when they wrap them.
package units
