package launch

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"rainforest/vmm"
	"rainforest/vmm/config"
	"rainforest/vmm/consolelog"
	"rainforest/vmm/ram"
)

// The document becomes the machine's configuration: the default command
// line plus the appended part, disks with their ids, the console where the
// document says.
func TestLinuxConfig(t *testing.T) {
	var out bytes.Buffer
	doc := &config.Document{Version: config.Version, Name: "web", Kernel: "/k", Cores: []int{2, 3}, Memory: 64 << 20,
		PageSize: "4k", Append: "rf.cat=/x", Disks: []config.Disk{{Path: "/a"}, {ID: "data", Path: "/b", Direct: true}},
		Console: config.Console{Socket: "/run/web.sock"}, CPUProfile: "nested-safe"}
	cfg, done, err := linuxConfig(doc, Options{Stdout: &out}, Logger(doc, &out))
	if err != nil {
		t.Fatal(err)
	}
	done()
	if cfg.Cmdline != vmm.DefaultCmdline()+" rf.cat=/x" || cfg.PageSize != ram.Page4K || cfg.Profile != vmm.ProfileNestedSafe {
		t.Errorf("cmdline %q page size %v profile %v", cfg.Cmdline, cfg.PageSize, cfg.Profile)
	}
	if len(cfg.Disks) != 2 || cfg.Disks[0].ID != "disk0" || cfg.Disks[1].ID != "data" || !cfg.Disks[1].Direct {
		t.Errorf("disks %+v", cfg.Disks)
	}
	if cfg.Console != &out || cfg.ConsoleSocket != "/run/web.sock" {
		t.Errorf("console %v socket %q", cfg.Console, cfg.ConsoleSocket)
	}
	// A console file is opened, capped (consolelog) and closed by the
	// returned func.
	logPath := filepath.Join(t.TempDir(), "web.log")
	doc.Console = config.Console{Mode: config.ConsoleFile, Path: logPath, LogSize: consolelog.MinMaxSize}
	doc.Cmdline = "console=ttyS0"
	cfg, done, err = linuxConfig(doc, Options{}, Logger(doc, &out))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := cfg.Console.(*consolelog.Writer); !ok || cfg.Cmdline != "console=ttyS0 rf.cat=/x" {
		t.Errorf("console %T cmdline %q", cfg.Console, cfg.Cmdline)
	}
	for range 4096 {
		cfg.Console.Write([]byte("0123456789abcdef"))
	}
	done()
	if fi, err := os.Stat(logPath); err != nil || fi.Size() > consolelog.MinMaxSize {
		t.Errorf("console file not capped: %v %v", fi.Size(), err)
	}
	// A regular file as stdout (the supervisor's log) is capped too.
	stdout, err := os.OpenFile(filepath.Join(t.TempDir(), "stdout"), os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer stdout.Close()
	doc.Console = config.Console{}
	cfg, done, err = linuxConfig(doc, Options{Stdout: stdout}, Logger(doc, &out))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := cfg.Console.(*consolelog.Writer); !ok {
		t.Errorf("stdout file console %T", cfg.Console)
	}
	done()
	doc.Console = config.Console{Mode: config.ConsoleFile, Path: "/nonexistent/dir/web.log"}
	if _, _, err := linuxConfig(doc, Options{}, Logger(doc, &out)); err == nil || !strings.Contains(err.Error(), "console") {
		t.Errorf("unopenable console file: %v", err)
	}
	// The logger honours the document's level and names the subOS.
	out.Reset()
	doc.LogLevel = "debug"
	Logger(doc, &out).Debug("hello")
	if !strings.Contains(out.String(), "subos=web") {
		t.Errorf("log line %q", out.String())
	}
}
