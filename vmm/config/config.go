// Package config is the VMM's launch contract: one versioned JSON document
// that says everything a subOS's VMM needs — what to boot, on which host
// cores, with how much memory of which page size, which disks, where the
// console goes, and which shared-memory regions it is a member of.
//
// The supervisor sends it over the VMM's control socket (rfm/vmmctl), with
// the regions' descriptors beside it; `rfm vmm --config FILE` reads it from
// a file; and `rfm vmm`'s flags build the same document, so there is one
// path from configuration to machine. Decode refuses a document of another
// version or with fields it does not know, naming them.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	"rainforest/vmm/consolelog"
	"rainforest/vmm/ram"
)

// Version is the document version this VMM understands.
const Version = 1

// Limits on what a document may hold.
const (
	// MaxDocument bounds a document's size in bytes.
	MaxDocument = 64 << 10
	// MaxCores bounds the vCPUs (one per host core).
	MaxCores = 254
	// MaxDisks bounds the disks at boot.
	MaxDisks = 16
	// MaxRegions bounds the shared-memory regions.
	MaxRegions = 16
	// MaxVectors bounds a region's vectors per peer.
	MaxVectors = 64
	// MaxPeers bounds a region's peers.
	MaxPeers = 253
)

// ErrInvalid wraps every reason a document is refused.
var ErrInvalid = errors.New("VMM configuration")

// Document is one VMM's configuration.
type Document struct {
	Version int    `json:"version"`
	Name    string `json:"name"`
	// Kernel is a PVH ELF vmlinux or a bzImage; Initrd is optional.
	Kernel string `json:"kernel"`
	Initrd string `json:"initrd,omitempty"`
	// Cmdline replaces the default kernel command line when set; Append
	// is added to it.
	Cmdline string `json:"cmdline,omitempty"`
	Append  string `json:"append,omitempty"`
	// Cores are host cores, one vCPU each, in order.
	Cores []int `json:"cores"`
	// Memory is the guest RAM in bytes, PageSize its backing: "4k", "2M"
	// or "1G" ("2M" when empty).
	Memory   uint64 `json:"memory"`
	PageSize string `json:"page_size,omitempty"`
	// CPUProfile is "host" (default) or "nested-safe".
	CPUProfile string   `json:"cpu_profile,omitempty"`
	Disks      []Disk   `json:"disks,omitempty"`
	Console    Console  `json:"console"`
	Regions    []Region `json:"regions,omitempty"`
	// LogLevel is the VMM's log level: debug, info, warn (default), error.
	LogLevel string `json:"log_level,omitempty"`
	// AllowEmulatedKVM boots even where KVM emulates guest kernel code.
	AllowEmulatedKVM bool `json:"allow_emulated_kvm,omitempty"`
}

// Disk is a raw image file or block device given to the guest as a
// virtio-blk device.
type Disk struct {
	// ID names the disk for detach ("disk0", "disk1", ... when empty).
	ID       string `json:"id,omitempty"`
	Path     string `json:"path"`
	ReadOnly bool   `json:"readonly,omitempty"`
	// Direct opens the backing with O_DIRECT (no host page cache).
	Direct bool `json:"direct,omitempty"`
}

// Console modes.
const (
	ConsoleStdio = "stdio"
	ConsoleNone  = "none"
	ConsoleFile  = "file"
)

// Console says where the serial and virtio consoles go.
type Console struct {
	// Mode is ConsoleStdio (default), ConsoleNone or ConsoleFile.
	Mode string `json:"mode,omitempty"`
	// Path is the log file of ConsoleFile.
	Path string `json:"path,omitempty"`
	// Socket, when set, also serves the console on a Unix socket there.
	Socket string `json:"socket,omitempty"`
	// LogSize caps the console log when it is a regular file (stdout or
	// ConsoleFile), in bytes: 0 for consolelog.DefaultMaxSize, else
	// between consolelog.MinMaxSize and MaxConsoleLog. The log rotates on
	// its descriptor when full (see vmm/consolelog).
	LogSize uint64 `json:"log_size,omitempty"`
	// LogRate is the guest's sustained console output rate in bytes a
	// second (0 for consolelog.DefaultRate, at most MaxConsoleLog); output
	// beyond it is dropped and counted.
	LogRate uint64 `json:"log_rate,omitempty"`
}

// MaxConsoleLog bounds Console.LogSize and Console.LogRate.
const MaxConsoleLog = 1 << 30

// Region is a shared-memory region this VMM is a member of. Its memfd and
// Peers x Vectors eventfds (peer-major) travel beside the document.
type Region struct {
	Name       string `json:"name"`
	Protocol   uint8  `json:"protocol"`
	Peers      int    `json:"peers"`
	RWSize     uint64 `json:"rw_size"`
	OutputSize uint64 `json:"output_size"`
	Vectors    int    `json:"vectors"`
	Self       int    `json:"self"` // this VMM's peer id
	RWReadOnly bool   `json:"rw_readonly,omitempty"`
}

// Files is the number of descriptors that travel with r: its memfd and
// its eventfds.
func (r Region) Files() int { return 1 + r.Peers*r.Vectors }

// Validate checks r's counts (the memory layout itself is checked by the
// device).
func (r Region) Validate() error {
	switch {
	case r.Name == "":
		return fmt.Errorf("%w: region without a name", ErrInvalid)
	case r.Peers < 1 || r.Peers > MaxPeers:
		return fmt.Errorf("%w: region %q: %d peers (1..%d)", ErrInvalid, r.Name, r.Peers, MaxPeers)
	case r.Vectors < 1 || r.Vectors > MaxVectors:
		return fmt.Errorf("%w: region %q: %d vectors (1..%d)", ErrInvalid, r.Name, r.Vectors, MaxVectors)
	case r.Self < 0 || r.Self >= r.Peers:
		return fmt.Errorf("%w: region %q: peer id %d of %d", ErrInvalid, r.Name, r.Self, r.Peers)
	}
	return nil
}

// FieldError is a document refused because of one field (named as in
// the JSON); it wraps ErrInvalid.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return ErrInvalid.Error() + ": " + e.Msg }

func (e *FieldError) Unwrap() error { return ErrInvalid }

// Decode reads one document: at most MaxDocument bytes, Version only, no
// unknown fields; the result is validated.
func Decode(r io.Reader) (*Document, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxDocument+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if len(data) > MaxDocument {
		return nil, fmt.Errorf("%w: document larger than %d bytes", ErrInvalid, MaxDocument)
	}
	var head struct {
		Version *int `json:"version"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrInvalid, jsonProblem(err))
	}
	switch {
	case head.Version == nil:
		return nil, fmt.Errorf("%w: no \"version\" (this rfm understands version %d)", ErrInvalid, Version)
	case *head.Version != Version:
		return nil, fmt.Errorf("%w: version %d, this rfm understands version %d", ErrInvalid, *head.Version, Version)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var d Document
	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrInvalid, jsonProblem(err))
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: more than one JSON value", ErrInvalid)
	}
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return &d, nil
}

// jsonProblem turns encoding/json's errors into one plain line.
func jsonProblem(err error) string {
	msg := strings.TrimPrefix(err.Error(), "json: ")
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %q: %s is not a %s", te.Field, te.Value, te.Type)
	}
	return msg
}

// Encode writes d as JSON.
func (d *Document) Encode() ([]byte, error) { return json.Marshal(d) }

var namePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,31}$`)

// Validate checks everything that can be checked without touching the
// host: the files, cores and hugepages are checked when the VMM starts.
func (d *Document) Validate() error {
	bad := func(field, format string, args ...any) error {
		return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	switch {
	case d.Version != Version:
		return bad("version", "version %d, this rfm understands version %d", d.Version, Version)
	case !namePattern.MatchString(d.Name):
		return bad("name", "name %q: 1-32 of a-z 0-9 _ . -, starting with a letter or digit", d.Name)
	case d.Kernel == "":
		return bad("kernel", "no kernel")
	case len(d.Cores) == 0:
		return bad("cores", "no cores")
	case len(d.Cores) > MaxCores:
		return bad("cores", "%d cores, at most %d", len(d.Cores), MaxCores)
	case len(d.Disks) > MaxDisks:
		return bad("disks", "%d disks, at most %d", len(d.Disks), MaxDisks)
	case len(d.Regions) > MaxRegions:
		return bad("regions", "%d regions, at most %d", len(d.Regions), MaxRegions)
	}
	seen := map[int]bool{}
	for _, c := range d.Cores {
		if c < 0 || seen[c] {
			return bad("cores", "cores %v: each core once, none negative", d.Cores)
		}
		seen[c] = true
	}
	ps, err := d.Pages()
	if err != nil {
		return bad("page_size", "page_size: %v", err)
	}
	if d.Memory < 2<<20 || d.Memory%uint64(ps) != 0 {
		return bad("memory", "memory %d: at least 2 MiB, a multiple of the %s page size", d.Memory, ps)
	}
	switch d.CPUProfile {
	case "", "host", "nested-safe":
	default:
		return bad("cpu_profile", "cpu_profile %q: host or nested-safe", d.CPUProfile)
	}
	switch d.LogLevel {
	case "", "debug", "info", "warn", "error":
	default:
		return bad("log_level", "log_level %q: debug, info, warn or error", d.LogLevel)
	}
	switch d.Console.Mode {
	case "", ConsoleStdio, ConsoleNone:
		if d.Console.Path != "" {
			return bad("console", "console: path %q is only for mode %q", d.Console.Path, ConsoleFile)
		}
	case ConsoleFile:
		if d.Console.Path == "" {
			return bad("console", "console: mode %q needs a path", ConsoleFile)
		}
	default:
		return bad("console", "console mode %q: stdio, none or file", d.Console.Mode)
	}
	if s := d.Console.LogSize; s != 0 && (s < consolelog.MinMaxSize || s > MaxConsoleLog) {
		return bad("console.log_size", "console: log_size %d: 0 (default) or %d to %d bytes", s, consolelog.MinMaxSize, MaxConsoleLog)
	}
	if r := d.Console.LogRate; r > MaxConsoleLog {
		return bad("console.log_rate", "console: log_rate %d: at most %d bytes a second", r, MaxConsoleLog)
	}
	ids := map[string]bool{}
	for i, disk := range d.WithDiskIDs() {
		if err := disk.Check(); err != nil {
			return bad("disks", "disks[%d]: %v", i, err)
		}
		if ids[disk.ID] {
			return bad("disks", "disks[%d]: id %q used twice", i, disk.ID)
		}
		ids[disk.ID] = true
	}
	names := map[string]bool{}
	for _, r := range d.Regions {
		if err := r.Validate(); err != nil {
			return err
		}
		if names[r.Name] {
			return bad("regions", "region %q given twice", r.Name)
		}
		names[r.Name] = true
	}
	return nil
}

// Pages returns the backing page size (2M when unset).
func (d *Document) Pages() (ram.PageSize, error) {
	if d.PageSize == "" {
		return ram.Page2M, nil
	}
	return ram.ParsePageSize(d.PageSize)
}

// WithDiskIDs returns the disks with default IDs filled in ("disk<i>").
func (d *Document) WithDiskIDs() []Disk {
	out := append([]Disk(nil), d.Disks...)
	for i := range out {
		if out[i].ID == "" {
			out[i].ID = fmt.Sprintf("disk%d", i)
		}
	}
	return out
}

var idPattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,31}$`)

// Check validates a disk on its own.
func (k Disk) Check() error {
	if k.Path == "" {
		return errors.New("no path")
	}
	if k.ID != "" && !idPattern.MatchString(k.ID) {
		return fmt.Errorf("id %q: 1-32 of letters, digits, _ . -", k.ID)
	}
	return nil
}

// ParseDisk parses the command-line form of a disk, PATH[,ro][,direct].
func ParseDisk(s string) (Disk, error) {
	parts := strings.Split(s, ",")
	d := Disk{Path: parts[0]}
	if d.Path == "" {
		return Disk{}, fmt.Errorf("disk %q: no path (PATH[,ro][,direct])", s)
	}
	for _, opt := range parts[1:] {
		switch opt {
		case "ro":
			d.ReadOnly = true
		case "direct":
			d.Direct = true
		default:
			return Disk{}, fmt.Errorf("disk %q: unknown option %q (PATH[,ro][,direct])", s, opt)
		}
	}
	return d, nil
}

// String is the command-line form of the disk.
func (k Disk) String() string {
	s := k.Path
	if k.ReadOnly {
		s += ",ro"
	}
	if k.Direct {
		s += ",direct"
	}
	return s
}
