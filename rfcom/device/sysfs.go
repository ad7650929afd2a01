package device

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"rainforest/vmm/shmem/abi"
)

// Info describes one shared-memory PCI function found in sysfs.
type Info struct {
	Address       string // PCI address, e.g. "0000:00:04.0"
	Path          string // <sys>/bus/pci/devices/<Address>
	ConfigPath    string // sysfs config space file
	Resource0     string // sysfs file of the register BAR
	Resource2     string // sysfs file of the memory BAR
	Resource2Size int64  // size of the memory BAR
	Class         uint32 // 24-bit class code; low byte is the protocol
	// Name and Flags come from the vendor capability (region name,
	// abi.CapFlag*). Find fills them when the config space can be read
	// (it needs root) and parses; otherwise they are zero until Open.
	Name  string
	Flags uint32
}

// Protocol returns the protocol byte of the class code.
func (i Info) Protocol() uint8 { return uint8(i.Class) }

// RWReadOnly reports whether the read-write section is read-only for this
// peer (abi.CapFlagRWReadOnly in Flags).
func (i Info) RWReadOnly() bool { return i.Flags&abi.CapFlagRWReadOnly != 0 }

// readCapability fills info's Name and Flags from its config space, if it
// can be read and parsed.
func readCapability(info *Info) {
	f, err := os.Open(info.ConfigPath)
	if err != nil {
		return
	}
	defer f.Close()
	cfg, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return
	}
	if c, err := parseCapability(cfg); err == nil {
		info.Name, info.Flags = c.name, c.flags
	}
}

func readHex(path string) (uint64, error) { return ReadSysfsHex(path, 32) }

// ReadSysfsHex parses a sysfs file holding one hexadecimal number ("0x1af4")
// of at most bits bits.
func ReadSysfsHex(path string, bits int) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	s := strings.TrimPrefix(strings.TrimSpace(string(b)), "0x")
	v, err := strconv.ParseUint(s, 16, bits)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return v, nil
}

// PCIFunction is a PCI function in sysfs.
type PCIFunction struct {
	Address string // e.g. "0000:00:05.0"
	Path    string // <sysRoot>/bus/pci/devices/<Address>
}

// FindPCI lists the PCI functions with the given vendor and device IDs
// under sysRoot (normally "/sys"), sorted by address. No sysfs PCI tree is
// not an error; entries whose IDs cannot be read are skipped.
func FindPCI(sysRoot string, vendor, device uint16) ([]PCIFunction, error) {
	dir := filepath.Join(sysRoot, "bus", "pci", "devices")
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("scan PCI devices: %w", err)
	}
	var out []PCIFunction
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if v, err := ReadSysfsHex(filepath.Join(p, "vendor"), 16); err != nil || v != uint64(vendor) {
			continue
		}
		if d, err := ReadSysfsHex(filepath.Join(p, "device"), 16); err != nil || d != uint64(device) {
			continue
		}
		out = append(out, PCIFunction{Address: e.Name(), Path: p})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Address < out[b].Address })
	return out, nil
}

// Find lists the shared-memory PCI functions (vendor 0x110a, device 0x4106)
// under sysRoot (normally "/sys"), sorted by address. No device is not an
// error.
func Find(sysRoot string) ([]Info, error) {
	fns, err := FindPCI(sysRoot, abi.VendorID, abi.DeviceID)
	if err != nil {
		return nil, err
	}
	var out []Info
	for _, fn := range fns {
		class, err := readHex(filepath.Join(fn.Path, "class"))
		if err != nil {
			return nil, fmt.Errorf("device %s: %w", fn.Address, err)
		}
		info := Info{
			Address:    fn.Address,
			Path:       fn.Path,
			ConfigPath: filepath.Join(fn.Path, "config"),
			Resource0:  filepath.Join(fn.Path, "resource0"),
			Resource2:  filepath.Join(fn.Path, "resource2"),
			Class:      uint32(class),
		}
		st, err := os.Stat(info.Resource2)
		if err != nil {
			return nil, fmt.Errorf("device %s: memory BAR: %w", fn.Address, err)
		}
		info.Resource2Size = st.Size()
		readCapability(&info)
		out = append(out, info)
	}
	return out, nil
}

// bindTimeout bounds the wait for uio_pci_generic to take the device.
const bindTimeout = 5 * time.Second

// DriverName is the kernel driver the device is used through.
const DriverName = "uio_pci_generic"

// bindUIO makes sure uio_pci_generic drives the device at devPath and
// returns the name of its uio device ("uio0") once <devRoot>/uioN exists.
func bindUIO(ctx context.Context, sysRoot, devRoot, devPath, address string) (string, error) {
	return BindUIO(ctx, sysRoot, devRoot, devPath, address, abi.VendorID, abi.DeviceID)
}

// BindUIO makes sure uio_pci_generic drives the PCI function at devPath
// (<sysRoot>/bus/pci/devices/<address>) whose ids are vendor:device: if no
// driver has it, it writes the ids to the driver's new_id (or, when that
// fails, the address to its bind). It returns ErrDriver if another driver
// has it. It then waits, at most 5 s and bounded by ctx, for <devRoot>/uioN
// and returns its name ("uio0").
func BindUIO(ctx context.Context, sysRoot, devRoot, devPath, address string, vendor, device uint16) (string, error) {
	link, err := os.Readlink(filepath.Join(devPath, "driver"))
	switch {
	case err == nil:
		if name := filepath.Base(link); name != DriverName {
			return "", fmt.Errorf("%w: %s is bound to %s", ErrDriver, address, name)
		}
	case errors.Is(err, fs.ErrNotExist):
		drv := filepath.Join(sysRoot, "bus", "pci", "drivers", DriverName)
		werr := os.WriteFile(filepath.Join(drv, "new_id"), []byte(fmt.Sprintf("%04x %04x", vendor, device)), 0)
		if werr != nil {
			// The id may already be known (EEXIST); bind by address.
			if berr := os.WriteFile(filepath.Join(drv, "bind"), []byte(address), 0); berr != nil {
				return "", fmt.Errorf("%w: bind %s to %s: %w", ErrDriver, address, DriverName, errors.Join(werr, berr))
			}
		}
	default:
		return "", fmt.Errorf("%w: %s: %w", ErrDriver, address, err)
	}
	ctx, cancel := context.WithTimeout(ctx, bindTimeout)
	defer cancel()
	for {
		name, err := findUIO(devPath)
		if err == nil {
			if _, err = os.Stat(filepath.Join(devRoot, name)); err == nil {
				return name, nil
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%w: no uio device for %s: %w", ErrDriver, address, errors.Join(err, ctx.Err()))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// findUIO returns the uioN entry of <devPath>/uio.
func findUIO(devPath string) (string, error) {
	ents, err := os.ReadDir(filepath.Join(devPath, "uio"))
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		n := e.Name()
		if rest, ok := strings.CutPrefix(n, "uio"); ok && rest != "" {
			if _, err := strconv.Atoi(rest); err == nil {
				return n, nil
			}
		}
	}
	return "", fmt.Errorf("no uioN in %s/uio", devPath)
}
