package qemuguest

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"rainforest/internal/kvmhost"
	"rainforest/internal/qemubundle"
	"strings"
)

// PCBIOS is the firmware of QEMU's pc machine (SeaBIOS).
const PCBIOS = "bios-256k.bin"

// FindBIOS finds the pc machine's BIOS on this host: in the data
// directory of the QEMU binary qemu or SeaBIOS's (Debian's QEMU looks in
// both).
func FindBIOS(qemu string) (string, error) {
	var dirs []string
	if p, err := exec.LookPath(qemu); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			dirs = append(dirs, filepath.Join(filepath.Dir(real), "..", "share", "qemu"))
		}
	}
	dirs = append(dirs, "/usr/share/qemu", "/usr/share/seabios")
	for _, d := range dirs {
		p := filepath.Join(d, PCBIOS)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("qemuguest: %s (QEMU's pc machine BIOS) not found in %s: apt-get install seabios", PCBIOS, strings.Join(dirs, ", "))
}

// BIOSFile returns the file that places the pc machine's BIOS (FindBIOS)
// in the data directory of the QEMU that kvmhost copies into the nested
// L1 guest (Script.QEMU), whose bundle has the microvm firmware only.
func BIOSFile(qemu string) (kvmhost.File, error) {
	bios, err := FindBIOS(qemu)
	if err != nil {
		return kvmhost.File{}, err
	}
	return kvmhost.File{Host: bios, L1: path.Join(qemubundle.GuestDataDir, PCBIOS)}, nil
}
