package peercred

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// maxStatus bounds how much of /proc/<pid>/status is read. The Uid and
// Groups lines come early; a process whose group list does not fit is
// treated as a member of none of them (refused unless root or the owner).
const maxStatus = 64 << 10

// Allow answers Check for a peer known only by its SO_PEERCRED numbers,
// the shape of consolesock.Options.Allow. Root, the owner and a primary
// gid of Group are decided from the numbers; supplementary groups are read
// from /proc/<pid>/status (a bounded read), and only when that process
// still has effective uid uid. Prefer Check with Of(conn), whose groups
// come from the socket itself (SO_PEERGROUPS): a pid can be reused after
// the peer exits and by then name another process.
func (p Policy) Allow(uid, gid uint32, pid int32) bool {
	return p.allowProc("/proc", uid, gid, pid)
}

func (p Policy) allowProc(procRoot string, uid, gid uint32, pid int32) bool {
	c := Cred{PID: pid, UID: uid, GID: gid}
	if p.Check(c) == nil {
		return true
	}
	if p.Group == NoGroup || pid <= 0 {
		return false
	}
	euid, groups, err := procCred(procRoot, pid)
	if err != nil || euid != uid {
		return false
	}
	c.Groups = groups
	return p.Check(c) == nil
}

// procCred reads a process's effective uid and supplementary groups from
// <procRoot>/<pid>/status.
func procCred(procRoot string, pid int32) (euid uint32, groups []uint32, err error) {
	f, err := os.Open(filepath.Join(procRoot, strconv.Itoa(int(pid)), "status"))
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxStatus))
	if err != nil {
		return 0, nil, err
	}
	var haveUID, haveGroups bool
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxStatus)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(val)
		switch key {
		case "Uid": // real, effective, saved, filesystem
			if len(fields) < 2 {
				return 0, nil, fmt.Errorf("%s/%d/status: malformed Uid line", procRoot, pid)
			}
			u, err := strconv.ParseUint(fields[1], 10, 32)
			if err != nil {
				return 0, nil, fmt.Errorf("%s/%d/status: Uid: %w", procRoot, pid, err)
			}
			euid, haveUID = uint32(u), true
		case "Groups":
			for _, s := range fields {
				g, err := strconv.ParseUint(s, 10, 32)
				if err != nil {
					return 0, nil, fmt.Errorf("%s/%d/status: Groups: %w", procRoot, pid, err)
				}
				groups = append(groups, uint32(g))
			}
			haveGroups = true
		}
	}
	if !haveUID || !haveGroups {
		// Cut short by maxStatus, or not a status file.
		return 0, nil, fmt.Errorf("%s/%d/status: no Uid or Groups line in the first %d bytes", procRoot, pid, maxStatus)
	}
	return euid, groups, nil
}
