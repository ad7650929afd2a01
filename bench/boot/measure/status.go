package measure

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ErrNoVmRSS means a /proc/PID/status text had no VmRSS line (the process
// was gone, or it is a kernel thread).
var ErrNoVmRSS = errors.New("measure: no VmRSS in /proc/PID/status")

// ProcStatus holds the memory fields of /proc/PID/status, in KiB. Fields
// the kernel did not report are zero.
type ProcStatus struct {
	// VmRSS is the resident set size: RssAnon + RssFile + RssShmem.
	// Pages of hugetlbfs mappings are not part of it.
	VmRSS uint64 `json:"vm_rss"`
	// VmHWM is the peak of VmRSS.
	VmHWM uint64 `json:"vm_hwm"`
	// RssAnon, RssFile and RssShmem split VmRSS into anonymous memory,
	// mapped files and shared memory (files on tmpfs count here).
	RssAnon  uint64 `json:"rss_anon"`
	RssFile  uint64 `json:"rss_file"`
	RssShmem uint64 `json:"rss_shmem"`
	// HugetlbPages is the size of the hugetlb pages the process maps
	// (Linux 4.4+), i.e. the hugepage-backed guest RAM of a VMM.
	HugetlbPages uint64 `json:"hugetlb_pages"`
}

// ParseStatus parses the text of /proc/PID/status. Unknown lines are
// ignored; a VmRSS line is required.
func ParseStatus(text []byte) (ProcStatus, error) {
	var st ProcStatus
	fields := map[string]*uint64{
		"VmRSS": &st.VmRSS, "VmHWM": &st.VmHWM, "RssAnon": &st.RssAnon,
		"RssFile": &st.RssFile, "RssShmem": &st.RssShmem, "HugetlbPages": &st.HugetlbPages,
	}
	haveRSS := false
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		dst, ok := fields[key]
		if !ok {
			continue
		}
		n, err := parseKiB(val)
		if err != nil {
			return ProcStatus{}, fmt.Errorf("measure: status %s: %w", key, err)
		}
		*dst = n
		if key == "VmRSS" {
			haveRSS = true
		}
	}
	if err := sc.Err(); err != nil {
		return ProcStatus{}, fmt.Errorf("measure: status: %w", err)
	}
	if !haveRSS {
		return ProcStatus{}, ErrNoVmRSS
	}
	return st, nil
}

// parseKiB parses "  1234 kB".
func parseKiB(val string) (uint64, error) {
	f := strings.Fields(val)
	if len(f) == 0 || len(f) > 2 || (len(f) == 2 && f[1] != "kB") {
		return 0, fmt.Errorf("unexpected value %q", strings.TrimSpace(val))
	}
	n, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("unexpected value %q: %w", strings.TrimSpace(val), err)
	}
	return n, nil
}

// ReadStatus reads and parses /proc/<pid>/status.
func ReadStatus(pid int) (ProcStatus, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return ProcStatus{}, fmt.Errorf("measure: %w", err)
	}
	return ParseStatus(b)
}
