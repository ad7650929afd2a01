package ram

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"rainforest/internal/units"
)

func pool(t *testing.T, free, resv string) string {
	root := t.TempDir()
	d := filepath.Join(root, "kernel/mm/hugepages/hugepages-2048kB")
	os.MkdirAll(d, 0o755)
	os.WriteFile(filepath.Join(d, "free_hugepages"), []byte(free), 0o644)
	os.WriteFile(filepath.Join(d, "resv_hugepages"), []byte(resv), 0o644)
	return root
}

func TestCheck(t *testing.T) {
	root := pool(t, "10\n", "2\n")
	if err := Check(Options{Size: 16 << 20, PageSize: Page2M, Node: -1, SysRoot: root}); err != nil {
		t.Errorf("8 pages of 8 available: %v", err)
	}
	err := Check(Options{Size: 18 << 20, PageSize: Page2M, Node: -1, SysRoot: root})
	if !errors.Is(err, ErrHugePages) {
		t.Errorf("9 pages of 8 available: %v", err)
	}
	if err := Check(Options{Size: 3 << 20, PageSize: Page2M, Node: -1, SysRoot: root}); !errors.Is(err, ErrSize) {
		t.Errorf("3 MiB with 2 MiB pages: %v", err)
	}
	if err := Check(Options{Size: 1 << 30, PageSize: Page1G, Node: -1, SysRoot: root}); !errors.Is(err, ErrHugePages) {
		t.Errorf("no 1G pool: %v", err)
	}
	if err := Check(Options{Size: 0, PageSize: Page4K}); !errors.Is(err, ErrSize) {
		t.Errorf("zero size: %v", err)
	}
}

func TestParsePageSize(t *testing.T) {
	for in, want := range map[string]PageSize{
		"4k": Page4K, "4096": Page4K, "none": Page4K, "2M": Page2M, "2MiB": Page2M, "2mb": Page2M, "2048k": Page2M,
		"1G": Page1G, "1gib": Page1G, "1024M": Page1G,
	} {
		if got, err := ParsePageSize(in); err != nil || got != want {
			t.Errorf("ParsePageSize(%q) = %v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"3M", "0", "1T"} {
		if _, err := ParsePageSize(bad); err == nil || !strings.Contains(err.Error(), "unsupported page size") {
			t.Errorf("ParsePageSize(%q) = %v; want unsupported page size", bad, err)
		}
	}
	if _, err := ParsePageSize("2X"); !errors.Is(err, units.ErrSize) {
		t.Errorf("ParsePageSize(2X) = %v; want units.ErrSize", err)
	}
}

func TestAllocate4K(t *testing.T) {
	r, err := Allocate(Options{Size: 8 << 20, PageSize: Page4K, Node: -1, Prefault: true})
	if err != nil {
		t.Fatal(err)
	}
	r.Data[len(r.Data)-1] = 1
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}

// mapPerms returns the permissions /proc/self/maps gives the mapping
// holding addr.
func mapPerms(t *testing.T, addr uintptr) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		var lo, hi uintptr
		var perms string
		if _, err := fmt.Sscanf(line, "%x-%x %s", &lo, &hi, &perms); err == nil && lo <= addr && addr < hi {
			return perms
		}
	}
	t.Fatalf("no mapping holds %#x", addr)
	return ""
}

func TestProtect(t *testing.T) {
	const page = 4096
	r, err := Allocate(Options{Size: 4 * page, PageSize: Page4K, Node: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	addr := reflect.ValueOf(r.Data).Pointer() + page
	if err := r.Protect(page, 2*page, false); err != nil {
		t.Fatal(err)
	}
	if p := mapPerms(t, addr); !strings.HasPrefix(p, "---") {
		t.Errorf("after Protect(false): %s, want no access", p)
	}
	if err := r.Protect(page, 2*page, true); err != nil {
		t.Fatal(err)
	}
	if p := mapPerms(t, addr); !strings.HasPrefix(p, "rw") {
		t.Errorf("after Protect(true): %s, want rw", p)
	}
	r.Data[page] = 1
	if err := r.Protect(page+1, page, false); !errors.Is(err, ErrSize) {
		t.Errorf("unaligned Protect: %v, want ErrSize", err)
	}
	if err := r.Protect(3*page, 2*page, false); !errors.Is(err, ErrSize) {
		t.Errorf("Protect past the end: %v, want ErrSize", err)
	}
}
