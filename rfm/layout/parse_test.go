package layout

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"rainforest/internal/tokenbucket"
	"rainforest/ledger"
)

const goodLayout = `# rfm layout
supervisor:
  cores: [0]           # housekeeping cores
defaults:
  kernel: build/images/vmlinux
  initrd: build/images/initramfs.cpio.gz
  page_size: 2M
subos:
  - name: web
    cpus: 2
    memory: 512M
    node: 0
    disks: [{path: build/images/disk.img, readonly: true}]
    devices: ["0000:00:1F.2"]
    cmdline_append: "rf.cat=/hello.txt"
  - name: db
    cores: "2-3,5"
    memory: 1GiB
    page_size: 1G
    kernel: other/vmlinux
    initrd: ""
    disks:
      - path: data.img
        iops: 1000
        iops_burst: 50
        bandwidth: 100M
        bandwidth_burst: 1G
    segments:
      - {name: cache, size: 2M}
      - name: config
        readonly: true
`

func TestParseGood(t *testing.T) {
	l, err := Parse(strings.NewReader(goodLayout), 0)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(l.Supervisor.Cores, []int{0}) {
		t.Errorf("supervisor cores = %v", l.Supervisor.Cores)
	}
	wantDefaults := Defaults{Kernel: "build/images/vmlinux", Initrd: "build/images/initramfs.cpio.gz", PageSize: 2 << 20}
	if l.Defaults != wantDefaults {
		t.Errorf("defaults = %+v", l.Defaults)
	}
	if len(l.SubOSes) != 2 {
		t.Fatalf("%d subOSes", len(l.SubOSes))
	}
	web, db := l.SubOSes[0], l.SubOSes[1]
	if web.Name != "web" || web.CPUs != 2 || web.Cores != nil || web.Node != 0 || web.Memory != 512<<20 ||
		web.PageSize != 2<<20 || web.Kernel != "build/images/vmlinux" || web.Initrd != "build/images/initramfs.cpio.gz" ||
		web.CmdlineAppend != "rf.cat=/hello.txt" {
		t.Errorf("web = %+v", web)
	}
	if !slices.Equal(web.Disks, []Disk{{Path: "build/images/disk.img", ReadOnly: true}}) {
		t.Errorf("web disks = %+v", web.Disks)
	}
	if !slices.Equal(web.Devices, []string{"0000:00:1f.2"}) {
		t.Errorf("web devices = %v (want lower case)", web.Devices)
	}
	if db.Name != "db" || db.CPUs != 0 || !slices.Equal(db.Cores, []int{2, 3, 5}) || db.Node != -1 ||
		db.Memory != 1<<30 || db.PageSize != 1<<30 || db.Kernel != "other/vmlinux" || db.Initrd != "" {
		t.Errorf("db = %+v", db)
	}
	if !slices.Equal(db.Segments, []Segment{{Name: "cache", Size: 2 << 20}, {Name: "config", ReadOnly: true}}) {
		t.Errorf("db segments = %+v", db.Segments)
	}
	if !slices.Equal(db.Disks, []Disk{{Path: "data.img", IOPS: tokenbucket.Limit{Rate: 1000, Burst: 50},
		Bandwidth: tokenbucket.Limit{Rate: 100 << 20, Burst: 1 << 30}}}) {
		t.Errorf("db disks = %+v", db.Disks)
	}
	req := web.Request()
	if req.Name != "web" || req.CPUs != 2 || req.Node != 0 || req.Memory != 512<<20 || req.PageSize != 2<<20 ||
		!slices.Equal(req.Devices, []string{"0000:00:1f.2"}) {
		t.Errorf("request = %+v", req)
	}
}

func TestParseDefaultsAfterSubOS(t *testing.T) {
	l, err := Parse(strings.NewReader("subos:\n- {name: a, cpus: 1, memory: 64M}\ndefaults: {kernel: k, page_size: 1G}\n"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if s := l.SubOSes[0]; s.Kernel != "k" || s.PageSize != 1<<30 {
		t.Errorf("defaults not applied: %+v", s)
	}
}

func TestParseMinimal(t *testing.T) {
	l, err := Parse(strings.NewReader("subos:\n  - name: a\n    cpus: 1\n    memory: 268435456\n"), 0)
	if err != nil {
		t.Fatal(err)
	}
	s := l.SubOSes[0]
	if s.PageSize != DefaultPageSize || s.Memory != 256<<20 || s.Node != -1 || l.Supervisor.Cores != nil {
		t.Errorf("got %+v, supervisor %+v", s, l.Supervisor)
	}
	// A layout of the supervisor alone is a layout.
	l, err = Parse(strings.NewReader("supervisor: {cores: [1]}\n"), 0)
	if err != nil || len(l.SubOSes) != 0 {
		t.Errorf("supervisor-only layout: %+v, %v", l, err)
	}
}

func TestParseUnknownFieldsAllReported(t *testing.T) {
	in := `supervisor:
  cores: [0]
  threads: 2
subos:
  - name: web
    cpu: 2
    memory: 512M
    disks: [{path: d.img, read_only: true}]
`
	_, err := Parse(strings.NewReader(in), 0)
	if !errors.Is(err, ErrSyntax) {
		t.Fatalf("err = %v, want ErrSyntax", err)
	}
	for _, want := range []string{
		`line 3: supervisor: unknown field "threads" (known: cores)`,
		`line 6: subos[0]: unknown field "cpu" (known: name, cpus, cores, max_cpus, node, memory, max_memory, page_size, kernel, initrd, disks, devices, cmdline_append, ssh_keys, class, autoscale, nets, loop, ports, segments, shares)`,
		`line 8: subos[0].disks[0]: unknown field "read_only" (known: id, path, readonly, direct, iops, iops_burst, bandwidth, bandwidth_burst)`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	var pe *ParseError
	if !errors.As(err, &pe) || pe.Line != 3 {
		t.Errorf("first ParseError = %+v", pe)
	}
}

func TestParseAutoscale(t *testing.T) {
	l, err := Parse(strings.NewReader("subos:\n- name: api\n  class: latency-critical\n  autoscale: {lower: 5ms, upper: 20ms, window: 10s, cooldown: 5s, min_cpus: 2, max_cpus: 4}\n- name: batch\n"), 0)
	if err != nil {
		t.Fatal(err)
	}
	s := l.SubOSes[0]
	want := Autoscale{Lower: 5 * time.Millisecond, Upper: 20 * time.Millisecond, Window: 10 * time.Second, Cooldown: 5 * time.Second, MinCPUs: 2, MaxCPUs: 4}
	if s.Class != ledger.LatencyCritical || s.Autoscale == nil || *s.Autoscale != want || s.Request().Class != ledger.LatencyCritical {
		t.Errorf("api = class %q autoscale %+v", s.Class, s.Autoscale)
	}
	if b := l.SubOSes[1]; b.Class != "" || b.Autoscale != nil {
		t.Errorf("batch = class %q autoscale %+v", b.Class, b.Autoscale)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"empty", "", "the file is empty"},
		{"comment only", "# nothing\n", "the file is empty"},
		{"not a mapping", "- a\n- b\n", `want a mapping of fields, got a list`},
		{"yaml syntax", "subos: [\n", "yaml:"},
		{"two documents", "subos: []\n---\nsubos: []\n", "line 2: more than one YAML document"},
		{"repeated field", "subos:\n- name: a\n  name: b\n", `line 3: subos[0]: field "name" repeated (first on line 2)`},
		{"alias", "defaults: &d {kernel: k}\nsubos:\n- *d\n", "anchors and aliases are not supported"},
		{"unknown unit", "subos:\n- memory: 512MX\n", `line 2: subos[0].memory: invalid size "512MX": unknown unit "MX"`},
		{"fraction", "subos:\n- memory: 1.5G\n", `line 2: subos[0].memory: invalid size "1.5G": want a whole number`},
		{"no number", "subos:\n- memory: lots\n", `subos[0].memory: invalid size "lots"`},
		{"bad page size", "defaults: {page_size: huge}\n", `line 1: defaults.page_size: invalid size`},
		{"bad duration", "subos:\n- autoscale: {lower: 5, upper: 20ms}\n", `line 2: subos[0].autoscale.lower: want a duration such as 5ms or 10s, got "5"`},
		{"autoscale unknown field", "subos:\n- autoscale: {low: 5ms}\n", `subos[0].autoscale: unknown field "low"`},
		{"cpus not a number", "subos:\n- cpus: two\n", `line 2: subos[0].cpus: want a whole number, got "two"`},
		{"negative node", "subos:\n- node: -1\n", `line 2: subos[0].node: want a node number (0 or more), got -1`},
		{"bad cpulist", "subos:\n- cores: 3-1\n", `line 2: subos[0].cores: invalid CPU list "3-1": range 3-1 runs backwards (write 1-3)`},
		{"repeated cpu in cpulist", "subos:\n- cores: 0-3,2\n", `line 2: subos[0].cores: invalid CPU list "0-3,2": CPU 2 is listed twice`},
		{"cpu out of range", "subos:\n- cores: 0-99999999\n", `line 2: subos[0].cores: invalid CPU list "0-99999999": CPU 99999999 is out of range (0 to 8191)`},
		{"cpu out of range in list", "subos:\n- cores: [1, 8192]\n", `line 2: subos[0].cores[1]: cpu 8192 is out of range (0 to 8191)`},
		{"negative cpu", "subos:\n- cores: [-1]\n", `subos[0].cores[0]: cpu -1 is out of range`},
		{"too many cpus", "subos:\n" + strings.Repeat("- cores: 0-8191\n", 3), `line 4: subos[2].cores: too many CPUs listed in the layout (more than 16384)`},
		{"too many subOSes", "subos:\n" + strings.Repeat("- {}\n", MaxSubOSes+1), `line 1026: subos[1024]: more than 1024 subOSes`},
		{"bad core", "subos:\n- cores: [1, x]\n", `line 2: subos[0].cores[1]: want a whole number, got "x"`},
		{"bad bool", "subos:\n- disks: [{path: a, readonly: yes}]\n", `subos[0].disks[0].readonly: want true or false, got "yes"`},
		{"disks not a list", "subos:\n- disks: a.img\n", `line 2: subos[0].disks: want a list, got "a.img"`},
		{"disk is a string", "subos:\n- disks: [a.img]\n", `subos[0].disks[0]: want a mapping of fields, got "a.img"`},
		{"null name", "subos:\n- name:\n", `line 2: subos[0].name: want a value, got nothing`},
		{"name is a list", "subos:\n- name: [a]\n", `subos[0].name: want a value, got a list`},
		{"empty entry", "subos:\n-\n", `subos[0]: empty subos entry`},
		{"subos is a mapping", "subos: {name: a}\n", `line 1: subos: want a list, got a mapping`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := Parse(strings.NewReader(tc.in), 0)
			if err == nil {
				t.Fatalf("no error; got %+v", l)
			}
			if !errors.Is(err, ErrSyntax) {
				t.Errorf("error does not match ErrSyntax: %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q\nlacks %q", err, tc.want)
			}
		})
	}
}

func TestParseTooLarge(t *testing.T) {
	in := "subos: []\n" + strings.Repeat("# padding\n", 100)
	if _, err := Parse(strings.NewReader(in), int64(len(in))); err != nil {
		t.Errorf("exactly the limit: %v", err)
	}
	_, err := Parse(strings.NewReader(in), int64(len(in)-1))
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("one byte over: err = %v, want ErrTooLarge", err)
	}
	big := strings.NewReader(strings.Repeat("#", DefaultMaxBytes+1))
	if _, err := Parse(big, 0); !errors.Is(err, ErrTooLarge) {
		t.Errorf("default limit: err = %v, want ErrTooLarge", err)
	}
}

func TestResolvePaths(t *testing.T) {
	l, err := Parse(strings.NewReader(goodLayout), 0)
	if err != nil {
		t.Fatal(err)
	}
	l.SubOSes[1].Kernel = "/abs/vmlinux"
	l.ResolvePaths("/etc/rfm")
	if l.Defaults.Kernel != "/etc/rfm/build/images/vmlinux" || l.SubOSes[0].Disks[0].Path != "/etc/rfm/build/images/disk.img" ||
		l.SubOSes[1].Kernel != "/abs/vmlinux" || l.SubOSes[1].Initrd != "" {
		t.Errorf("resolved: %+v", l)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(goodLayout)
	f.Add("subos:\n- {name: a, cores: \"1-3\", memory: 1G}\n")
	f.Add("a: &x [*x]\n")
	f.Fuzz(func(t *testing.T, in string) {
		l, err := Parse(strings.NewReader(in), 1<<16)
		if err == nil {
			_ = l.Check(nil, nil)
		}
	})
}

// A subOS's nets name a network of the layout (resolved to its bridge),
// a bridge, or a TAP alone; a network that is not there is an error.
func TestParseNets(t *testing.T) {
	l, err := Parse(strings.NewReader(`networks:
- name: lan
  create: true
  address: 10.77.0.1/24
- name: up
  bridge: br0
subos:
- name: web
  cpus: 1
  memory: 64M
  nets: [{network: lan, ip: 10.77.0.2/24}, {network: up, mac: "02:00:00:00:00:07", vhost: off}, {tap: rf-x, vhost: on}]
- name: api
  cpus: 1
  memory: 64M
  ports: ["8080:80", "5353:53/udp"]
`), 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []NIC{{Network: "lan", Bridge: "lan", CreateBridge: true, BridgeAddress: "10.77.0.1/24", IP: "10.77.0.2/24"},
		{Network: "up", Bridge: "br0", MAC: "02:00:00:00:00:07", Vhost: "off"}, {TAP: "rf-x", Vhost: "on"}}
	if got := l.SubOSes[0].Nets; !reflect.DeepEqual(got, want) {
		t.Errorf("nets %+v, want %+v", got, want)
	}
	if got := l.SubOSes[1].Nets; !reflect.DeepEqual(got, []NIC{{User: true, Publish: []string{"8080:80", "5353:53/udp"}}}) {
		t.Errorf("ports gave nets %+v", got)
	}
	for _, bad := range []string{
		"subos:\n- name: web\n  nets: [{network: nope}]\n",
		"subos:\n- name: web\n  nets: [{}]\n",
		"networks:\n- name: lan\nsubos:\n- name: web\n  nets: [{network: lan, bridge: br0}]\n",
		"networks:\n- bridge: br0\n",
		"subos:\n- name: web\n  nets: [{tap: rf-x, vhost: yes}]\n",
		"subos:\n- name: web\n  nets: [{tap: rf-x, ip: 10.77.0.2}]\n",
		"subos:\n- name: web\n  nets: [{tap: rf-x, ip: fd00::2/64}]\n",
	} {
		if _, err := Parse(strings.NewReader(bad), 0); err == nil {
			t.Errorf("Parse accepted:\n%s", bad)
		}
	}
}

// TestParseLoopNets: loop: true puts a subOS on the loop network "loop",
// a network with loop: true is a named one; each NIC gets its network's
// members in file order; a loop network of one member is a problem of
// Check; bridge settings on a loop network are refused.
func TestParseLoopNets(t *testing.T) {
	l, err := Parse(strings.NewReader(`networks:
- name: back
  loop: true
  subnet: 10.98.0.0/24
subos:
- {name: a, cpus: 1, memory: 64M, loop: true, nets: [{network: back}]}
- {name: b, cpus: 1, memory: 64M, loop: true}
- {name: c, cpus: 1, memory: 64M, nets: [{network: back}]}
`), 0)
	if err != nil {
		t.Fatal(err)
	}
	back := NIC{Network: "back", Loop: "back", LoopMembers: []string{"a", "c"}, LoopSubnet: "10.98.0.0/24"}
	loop := NIC{Loop: DefaultLoopNetwork, LoopMembers: []string{"a", "b"}}
	// In the order of the file.
	for i, want := range [][]NIC{{loop, back}, {loop}, {back}} {
		if got := l.SubOSes[i].Nets; !reflect.DeepEqual(got, want) {
			t.Errorf("subOS %s: nets %+v, want %+v", l.SubOSes[i].Name, got, want)
		}
	}

	one, err := Parse(strings.NewReader("subos:\n- {name: a, cpus: 1, memory: 64M, loop: true}\n- {name: b, cpus: 1, memory: 64M}\n"), 0)
	if err != nil {
		t.Fatal(err)
	}
	probs := problemStrings(one.Check(fixture(4, 1, 1, 8<<30), nil))
	if !slices.ContainsFunc(probs, func(p string) bool { return strings.Contains(p, `loop network "loop" has one member (a)`) }) {
		t.Errorf("a loop network of one member: problems %q", probs)
	}

	for _, bad := range []string{
		"networks:\n- {name: back, loop: true, create: true}\n",
		"networks:\n- {name: lan, subnet: 10.0.0.0/24}\n",
		"networks:\n- {name: loop}\n",
		"networks:\n- {name: back, loop: true}\nsubos:\n- name: web\n  nets: [{network: back, mac: \"02:00:00:00:00:07\"}]\n",
	} {
		if _, err := Parse(strings.NewReader(bad), 0); err == nil {
			t.Errorf("Parse accepted:\n%s", bad)
		}
	}
}
