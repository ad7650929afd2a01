package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// rfmBinary builds rfm once for the tests that run it as a user would.
func rfmBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "rfm")
	// As make build does: the commit is stamped where git knows it.
	cmd := exec.Command("go", "build", "-buildvcs=auto", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build rfm: %v\n%s", err, out)
	}
	return bin
}

func realKernel() string {
	dir := os.Getenv("RF_IMAGES")
	if dir == "" {
		dir = filepath.Join("..", "..", "build", "images")
	}
	k := filepath.Join(dir, "vmlinux")
	if _, err := os.Stat(k); err != nil {
		return ""
	}
	return k
}

// Every bad input gets exit status 2 and one line naming the problem, before
// anything is allocated (the e2e tests check that no hugepages are left
// behind, in a machine of their own).
func TestVMMBadInput(t *testing.T) {
	bin := rfmBinary(t)
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage")
	os.WriteFile(garbage, []byte(strings.Repeat("not a kernel ", 100)), 0o644)
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o644)
	elfNoNote := filepath.Join(dir, "elf")
	os.WriteFile(elfNoNote, append([]byte("\x7fELF\x02\x01\x01"), make([]byte, 200)...), 0o644)
	kernel := realKernel()
	doc := func(name, text string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(text), 0o644)
		return p
	}
	base := `"name": "a", "kernel": "` + garbage + `", "cores": [0], "memory": 4194304, "console": {"mode": "none"}`
	cfgGood := doc("good.json", `{"version": 1, `+base+`}`)
	cfgUnknown := doc("unknown.json", `{"version": 1, "cpus": 2, `+base+`}`)
	cfgVersion := doc("version.json", `{"version": 2, `+base+`}`)
	cfgRegions := doc("regions.json", `{"version": 1, `+base+`, "regions": [{"name": "r", "protocol": 2, "peers": 2, "output_size": 4096, "vectors": 1, "self": 0}]}`)
	cfgFiles := doc("files.json", `{"version": 1, `+base+`, "files": {"kvm": 0}}`)

	cases := []struct {
		name      string
		args      []string
		want      string
		needsReal bool
	}{
		{"no kernel flag", []string{"--cores", "0"}, "--kernel is required", false},
		{"missing kernel", []string{"--kernel", filepath.Join(dir, "nope"), "--cores", "0"}, "no such file", false},
		{"empty kernel", []string{"--kernel", empty, "--cores", "0"}, "not a non-empty regular file", false},
		{"garbage kernel", []string{"--kernel", garbage, "--cores", "0"}, "kernel " + garbage, false},
		{"truncated ELF", []string{"--kernel", elfNoNote, "--cores", "0"}, "kernel " + elfNoNote, false},
		{"missing initrd", []string{"--kernel", garbage, "--initrd", filepath.Join(dir, "nope"), "--cores", "0"}, "initrd", false},
		{"no cpus", []string{"--kernel", garbage}, "--cores is required", false},
		{"duplicated core", []string{"--kernel", garbage, "--cores", "0,0"}, "--cores: invalid CPU list \"0,0\": CPU 0 is listed twice", false},
		{"bad cpu list", []string{"--kernel", garbage, "--cores", "0-x"}, "--cores", false},
		{"bad memory", []string{"--kernel", garbage, "--cores", "0", "--memory", "lots"}, "--memory: invalid size \"lots\"", false},
		{"zero memory", []string{"--kernel", garbage, "--cores", "0", "--memory", "0M"}, "--memory: invalid size \"0M\": must be more than 0 bytes", false},
		{"bad page size", []string{"--kernel", garbage, "--cores", "0", "--page-size", "3M"}, "unsupported page size", false},
		{"bad profile", []string{"--kernel", garbage, "--cores", "0", "--cpu-profile", "fast"}, "--cpu-profile", false},
		{"bad console log size", []string{"--kernel", garbage, "--cores", "0", "--console-log-size", "lots"}, "--console-log-size: invalid size", false},
		{"tiny console log", []string{"--kernel", garbage, "--cores", "0", "--console-log-size", "1k"}, "--console-log-size: VMM configuration: console: log_size 1024", false},
		{"bad disk option", []string{"--kernel", garbage, "--cores", "0", "--disk", "x,rw"}, "unknown option", false},
		{"bad control fd", []string{"--control-fd", "97"}, "--control-fd: control socket: 97 is not an open descriptor", false},
		{"control fd not a socket", []string{"--control-fd", "0"}, "--control-fd: control socket 0", false},
		{"flags and control fd", []string{"--kernel", garbage, "--cores", "0", "--control-fd", "0"}, "--kernel, --cores: the configuration comes from --config or the control socket, not flags", false},
		{"config and control fd", []string{"--config", cfgGood, "--control-fd", "0"}, "--config and --control-fd", false},
		{"flags and config", []string{"--config", cfgGood, "--memory", "1G"}, "--memory: the configuration comes from", false},
		{"missing config", []string{"--config", filepath.Join(dir, "nope.json")}, "--config: open", false},
		{"config with an unknown field", []string{"--config", cfgUnknown}, `unknown field "cpus"`, false},
		{"config of another version", []string{"--config", cfgVersion}, "version 2, this rfm understands version 1", false},
		{"config with regions", []string{"--config", cfgRegions}, "regions need their descriptors", false},
		{"config with named files", []string{"--config", cfgFiles}, "files (named descriptors) need the control socket", false},
		{"offline core", []string{"--kernel", kernel, "--cores", "4095"}, "core 4095 is not online", true},
		{"memory not page multiple", []string{"--kernel", kernel, "--cores", "0", "--memory", "3M"}, "--memory: VMM configuration: memory 3145728: at least 2 MiB, a multiple of the 2 MiB page size", true},
		{"too few hugepages", []string{"--kernel", kernel, "--cores", "0", "--memory", "4000G"}, "not enough free hugepages", true},
		{"missing disk", []string{"--kernel", kernel, "--cores", "0", "--disk", filepath.Join(dir, "nope.img")}, "disk:", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.needsReal && kernel == "" {
				if os.Getenv("RF_REQUIRE_KVM") == "1" {
					t.Fatal("no image built (make image)")
				}
				t.Skip("no image built (make image)")
			}
			args := append([]string{"vmm", "--console", "none"}, c.args...)
			if slices.Contains(c.args, "--control-fd") || slices.Contains(c.args, "--config") {
				args = append([]string{"vmm"}, c.args...) // no document flags
			}
			cmd := exec.Command(bin, args...)
			out, err := cmd.CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 2 {
				t.Fatalf("exit: %v, want status 2; output:\n%s", err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "rfm: ") {
				t.Errorf("want one line starting with \"rfm: \", got:\n%s", out)
			}
			if !strings.Contains(string(out), c.want) {
				t.Errorf("error does not mention %q:\n%s", c.want, out)
			}
		})
	}
}

// A truncated bzImage is refused in one line naming the sizes, before
// anything is allocated, instead of booting and triple-faulting.
func TestVMMTruncatedBzImage(t *testing.T) {
	kernel := realKernel()
	if kernel == "" {
		t.Skip("no image built (make image)")
	}
	bz, err := os.ReadFile(filepath.Join(filepath.Dir(kernel), "bzImage"))
	if err != nil {
		t.Skipf("no bzImage beside %s: %v", kernel, err)
	}
	cut := filepath.Join(t.TempDir(), "bzImage")
	os.WriteFile(cut, bz[:len(bz)/2], 0o644)
	out, err := exec.Command(rfmBinary(t), "vmm", "--kernel", cut, "--cores", "0", "--memory", "64M", "--page-size", "4k", "--console", "none").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("exit %v, want 2:\n%s", err, out)
	}
	want := fmt.Sprintf("bzImage truncated: %d bytes, header says ", len(bz)/2)
	if !strings.Contains(string(out), want) || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
		t.Errorf("want one line saying %q, got:\n%s", want, out)
	}
}

// On a host whose KVM emulates guest kernel code, booting Linux is refused
// in one line instead of hanging.
func TestVMMRefusesEmulatedKVM(t *testing.T) {
	if _, err := os.Stat("/sys/module/kvm_pvm"); err != nil {
		t.Skip("host KVM is not the emulating kvm_pvm back end")
	}
	kernel := realKernel()
	if kernel == "" {
		t.Skip("no image built (make image)")
	}
	out, err := exec.Command(rfmBinary(t), "vmm", "--kernel", kernel, "--cores", "0", "--memory", "64M", "--page-size", "4k", "--console", "none").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("exit %v, want 2:\n%s", err, out)
	}
	if !strings.Contains(string(out), "emulates guest kernel code") || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
		t.Errorf("want one line about the emulating KVM, got:\n%s", out)
	}
}

// rfm check lists every problem of a bad layout, one line each, and exits 1.
func TestCheckLayout(t *testing.T) {
	bin := rfmBinary(t)
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("k"), 0o644)
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o644)
		return p
	}
	bad := write("bad.yaml", `
supervisor:
  cores: [0]
defaults:
  kernel: vmlinux
subos:
  - name: web
    cores: [0]
    memory: 3M
  - name: web
    cores: [4095]
    memory: 64M
  - name: db
    cpus: 1
    memory: 64M
    page_size: 4k
    disks: [{path: nope.img}]
`)
	out, err := exec.Command(bin, "check", bad).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit %v, want 1:\n%s", err, out)
	}
	for _, want := range []string{
		`supervisor's housekeeping core`, `not a multiple`, `also the name`, `core 4095 does not exist`, `4K pages are not supported`, `nope.img does not exist`,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("rfm check output lacks %q:\n%s", want, out)
		}
	}
	unknown := write("unknown.yaml", "subos:\n  - name: a\n    cpu: 1\n")
	out, err = exec.Command(bin, "check", unknown).CombinedOutput()
	if err == nil || !strings.Contains(string(out), `unknown field "cpu"`) || !strings.Contains(string(out), "line 3") {
		t.Errorf("unknown field: %v\n%s", err, out)
	}
	// A device is refused, whatever the machine: no passthrough would
	// attach it. (The layout must name one this machine has, or that is
	// all rfm check says about it.)
	if pci, _ := filepath.Glob("/sys/bus/pci/devices/*"); len(pci) > 0 {
		addr := filepath.Base(pci[0])
		dev := write("device.yaml", "defaults:\n  kernel: vmlinux\nsubos:\n  - name: a\n    cpus: 1\n    memory: 2M\n    devices: [\""+addr+"\"]\n")
		out, err = exec.Command(bin, "check", dev).CombinedOutput()
		want := `subos "a": devices[0]: PCI passthrough is not supported yet; nothing would attach ` + addr
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), want) {
			t.Errorf("device: %v, want exit 1 and %q:\n%s", err, want, out)
		}
	}
	good := write("good.yaml", "defaults:\n  kernel: vmlinux\nsubos:\n  - name: a\n    cpus: 1\n    memory: 2M\n")
	out, err = exec.Command(bin, "check", good).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "hugepage") && !strings.Contains(string(out), "memory") {
		t.Errorf("good layout: %v\n%s", err, out)
	}
}
