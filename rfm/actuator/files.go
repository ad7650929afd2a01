package actuator

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// readString reads a control file and trims surrounding whitespace.
func readString(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// writeString writes value to an existing control file in a single write,
// the way cgroupfs, sysfs and procfs expect. The file is never created. An
// empty value is written as a newline: a zero-length write never reaches
// the kernel.
func writeString(path, value string) error {
	data := []byte(value)
	if len(data) == 0 {
		data = []byte("\n")
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, werr := f.Write(data)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("write %q to %s: %w", value, path, err)
	}
	return nil
}

// readList reads a control file in kernel list format.
func readList(path string) ([]int, error) {
	s, err := readString(path)
	if err != nil {
		return nil, err
	}
	l, err := parseList(s)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return l, nil
}

// readUint reads a control file holding one unsigned decimal number.
func readUint(path string) (uint64, error) {
	s, err := readString(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w: %q is not a number", path, ErrInvalid, s)
	}
	return v, nil
}

// exists reports whether path exists.
func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// readPIDs reads a cgroup.procs file.
func readPIDs(path string) ([]int, error) {
	s, err := readString(path)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(s) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w: bad pid %q", path, ErrInvalid, f)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}
