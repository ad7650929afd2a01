package images

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Sentinel errors of the module resolver.
var (
	// ErrUnknownModule means a requested module (or a dependency) is not
	// in the index.
	ErrUnknownModule = errors.New("images: unknown kernel module")
	// ErrModuleCycle means the dependency graph has a cycle.
	ErrModuleCycle = errors.New("images: kernel module dependency cycle")
	// ErrCompressedModule means the kernel ships compressed modules
	// (.ko.xz/.ko.zst/.ko.gz), which this package does not unpack.
	ErrCompressedModule = errors.New("images: compressed kernel modules are not supported")
)

// Module is one kernel module resolved from an index.
type Module struct {
	// Name is the canonical module name (dashes replaced by underscores).
	Name string
	// Path is the module file relative to the modules directory
	// (lib/modules/<release>), e.g. "kernel/drivers/virtio/virtio.ko".
	Path string
}

// ModuleIndex maps module names to files and their dependencies.
type ModuleIndex struct {
	paths map[string]string
	deps  map[string][]string
}

// ModuleName returns the canonical module name for a file name or module
// name: directory and extension stripped, '-' replaced by '_'.
func ModuleName(s string) string {
	s = path.Base(s)
	if i := strings.Index(s, ".ko"); i >= 0 {
		s = s[:i]
	}
	return strings.ReplaceAll(s, "-", "_")
}

// ParseModulesDep parses a depmod modules.dep file
// ("kernel/a.ko: kernel/b.ko kernel/c.ko" per line).
func ParseModulesDep(r io.Reader) (*ModuleIndex, error) {
	ix := &ModuleIndex{paths: map[string]string{}, deps: map[string][]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		mod, rest, ok := strings.Cut(text, ":")
		if !ok {
			return nil, fmt.Errorf("images: modules.dep line %d: missing ':'", line)
		}
		name := ModuleName(mod)
		ix.paths[name] = strings.TrimSpace(mod)
		var deps []string
		for _, d := range strings.Fields(rest) {
			deps = append(deps, ModuleName(d))
		}
		ix.deps[name] = deps
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("images: read modules.dep: %w", err)
	}
	return ix, nil
}

// LoadModuleIndex builds the index for a modules directory
// (lib/modules/<release>). It uses modules.dep when present; Debian's
// kernel packages do not ship it (depmod runs at install time), so
// otherwise every .ko file's .modinfo "depends=" field is read.
func LoadModuleIndex(modDir string) (*ModuleIndex, error) {
	if f, err := os.Open(filepath.Join(modDir, "modules.dep")); err == nil {
		defer f.Close()
		return ParseModulesDep(f)
	}
	ix := &ModuleIndex{paths: map[string]string{}, deps: map[string][]string{}}
	err := filepath.WalkDir(modDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		base := d.Name()
		switch {
		case strings.HasSuffix(base, ".ko"):
		case strings.HasSuffix(base, ".ko.xz"), strings.HasSuffix(base, ".ko.zst"), strings.HasSuffix(base, ".ko.gz"):
			return fmt.Errorf("%w: %s", ErrCompressedModule, p)
		default:
			return nil
		}
		rel, err := filepath.Rel(modDir, p)
		if err != nil {
			return err
		}
		name, deps, err := readModinfo(p)
		if err != nil {
			return err
		}
		ix.paths[name] = filepath.ToSlash(rel)
		ix.deps[name] = deps
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("images: index modules in %s: %w", modDir, err)
	}
	return ix, nil
}

// readModinfo returns a module's name and direct dependencies from its
// .modinfo ELF section.
func readModinfo(file string) (string, []string, error) {
	f, err := elf.Open(file)
	if err != nil {
		return "", nil, fmt.Errorf("open module %s: %w", file, err)
	}
	defer f.Close()
	name := ModuleName(file)
	sec := f.Section(".modinfo")
	if sec == nil {
		return name, nil, nil
	}
	data, err := sec.Data()
	if err != nil {
		return "", nil, fmt.Errorf("read .modinfo of %s: %w", file, err)
	}
	var deps []string
	for _, kv := range bytes.Split(data, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		switch k {
		case "name":
			name = ModuleName(v)
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d = strings.TrimSpace(d); d != "" {
					deps = append(deps, ModuleName(d))
				}
			}
		}
	}
	return name, deps, nil
}

// WriteModulesDep writes the index in modules.dep format (sorted by
// path), so that a later LoadModuleIndex of the same directory is fast.
func (ix *ModuleIndex) WriteModulesDep(w io.Writer) error {
	paths := make(map[string]string, len(ix.paths))
	for name, p := range ix.paths {
		paths[p] = name
	}
	sorted := make([]string, 0, len(paths))
	for p := range paths {
		sorted = append(sorted, p)
	}
	sort.Strings(sorted)
	bw := bufio.NewWriter(w)
	for _, p := range sorted {
		fmt.Fprintf(bw, "%s:", p)
		for _, d := range ix.deps[paths[p]] {
			if dp, ok := ix.paths[d]; ok {
				fmt.Fprintf(bw, " %s", dp)
			} else {
				fmt.Fprintf(bw, " %s.ko", d)
			}
		}
		bw.WriteString("\n")
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("images: write modules.dep: %w", err)
	}
	return nil
}

// Names returns the names of all modules in the index, sorted.
func (ix *ModuleIndex) Names() []string {
	out := make([]string, 0, len(ix.paths))
	for n := range ix.paths {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Has reports whether the index knows the module.
func (ix *ModuleIndex) Has(name string) bool {
	_, ok := ix.paths[ModuleName(name)]
	return ok
}

// Resolve returns the requested modules together with all their
// dependencies in a valid load order: every module comes after the modules
// it depends on, and otherwise in the order requested. Each module appears
// once.
func (ix *ModuleIndex) Resolve(names ...string) ([]Module, error) {
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var out []Module
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch state[name] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("%w: %s", ErrModuleCycle, strings.Join(append(chain, name), " -> "))
		}
		p, ok := ix.paths[name]
		if !ok {
			if len(chain) > 0 {
				return fmt.Errorf("%w: %s (needed by %s)", ErrUnknownModule, name, chain[len(chain)-1])
			}
			return fmt.Errorf("%w: %s", ErrUnknownModule, name)
		}
		state[name] = visiting
		for _, d := range ix.deps[name] {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = done
		out = append(out, Module{Name: name, Path: p})
		return nil
	}
	for _, n := range names {
		if err := visit(ModuleName(n), nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}
