package layout

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"rainforest/ledger"
	"rainforest/partitioner"
)

// checkEnv is a machine (8 CPUs, one node, 8G with a 4G 2M pool, four
// devices), image files in a temp dir, and a valid two-subOS layout.
type checkEnv struct {
	dir    string
	inv    *partitioner.Inventory
	layout *Layout
	disk   string
}

func newCheckEnv(t *testing.T) *checkEnv {
	dir := t.TempDir()
	files := writeFiles(t, dir, "vmlinux", "initramfs.cpio.gz", "disk.img", "data.img", "other/vmlinux")
	inv := fixture(8, 1, 1, 8<<30)
	inv.Devices = []partitioner.PCIDevice{
		{Address: "0000:00:1f.2", IOMMUGroup: 5, Node: -1},
		{Address: "0000:01:00.0", IOMMUGroup: 7, Node: -1},
		{Address: "0000:01:00.1", IOMMUGroup: 7, Node: -1},
		{Address: "0000:02:00.0", IOMMUGroup: -1, Node: -1},
	}
	l := &Layout{
		Defaults: Defaults{Kernel: files[0], Initrd: files[1], PageSize: PageSize2M},
		SubOSes: []SubOS{
			{
				Name: "web", CPUs: 2, Node: -1, Memory: 512 << 20, PageSize: PageSize2M,
				Kernel: files[0], Initrd: files[1],
				Disks:   []Disk{{Path: files[2], ReadOnly: true}},
				Devices: []string{"0000:00:1f.2"},
			},
			{
				Name: "db", Cores: []int{4, 5}, Node: 0, Memory: 1 << 30, PageSize: PageSize2M,
				Kernel: files[4], Initrd: files[1],
				Disks:         []Disk{{Path: files[3]}},
				CmdlineAppend: "rf.cat=/hello.txt",
			},
		},
	}
	return &checkEnv{dir: dir, inv: inv, layout: l, disk: files[2]}
}

func TestCheckValidLayout(t *testing.T) {
	e := newCheckEnv(t)
	f := newFakeChecker(4 << 30)
	if ps := e.layout.Check(e.inv, f); len(ps) != 0 {
		t.Fatalf("problems in a valid layout:\n%s", strings.Join(problemStrings(ps), "\n"))
	}
	if len(f.reserved) != 2 || f.reserved[0].Name != "web" || f.reserved[1].Name != "db" {
		t.Errorf("reserved %+v, want web then db", f.reserved)
	}
	if r := f.reserved[1]; !slices.Equal(r.Cores, []int{4, 5}) || r.Node != 0 || r.Memory != 1<<30 || r.PageSize != PageSize2M {
		t.Errorf("db request = %+v", r)
	}
	// Without inventory and checker only the layout itself is judged.
	if ps := e.layout.Check(nil, nil); len(ps) != 0 {
		t.Errorf("nil inventory and checker: %v", problemStrings(ps))
	}
}

func TestCheckProblems(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(e *checkEnv, f *fakeChecker)
		want   string // "%d" in it is replaced by the temp dir
	}{
		{"unknown class", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[1].Class = "urgent" },
			`subos "db": class: unknown class "urgent": want "latency-critical" or "batch"`},
		{"autoscale on batch", func(e *checkEnv, f *fakeChecker) {
			e.layout.SubOSes[1].Autoscale = &Autoscale{Lower: 5 * time.Millisecond, Upper: 20 * time.Millisecond}
		}, `subos "db": autoscale: only a latency-critical subOS autoscales (set class: latency-critical)`},
		{"autoscale lt >= ut", func(e *checkEnv, f *fakeChecker) {
			e.layout.SubOSes[1].Class = ledger.LatencyCritical
			e.layout.SubOSes[1].Autoscale = &Autoscale{Lower: 20 * time.Millisecond, Upper: 5 * time.Millisecond}
		}, `subos "db": autoscale: target "db": lower threshold (lt) 20ms must be below the upper (ut) 5ms`},
		{"duplicate name", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[1].Name = "web" },
			`subos "web": name: "web" is also the name of subos[0]`},
		{"bad name", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[1].Name = "Web_1" },
			`subos "Web_1": name: "Web_1" is not a valid name: use 1 to 32 of a-z, 0-9 and '-', not starting with '-'`},
		{"long name", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[1].Name = strings.Repeat("a", 33) },
			`is not a valid name`},
		{"no name", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[1].Name = "" },
			`subos[1]: name: missing`},
		{"reserved name", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[1].Name = "supervisor" },
			`subos "supervisor": name: "supervisor" is reserved for the supervisor`},
		{"name in use", func(e *checkEnv, f *fakeChecker) { f.names["web"] = true },
			`subos "web": name: subOS "web" already exists`},
		{"overlapping cores", func(e *checkEnv, f *fakeChecker) {
			e.layout.SubOSes[0].CPUs, e.layout.SubOSes[0].Cores = 0, []int{3, 4}
		}, `subos "db": cores: core 4 is also in subos "web"`},
		{"supervisor core", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[1].Cores = []int{0, 5} },
			`subos "db": cores: core 0 is the supervisor's housekeeping core`},
		{"explicit supervisor core", func(e *checkEnv, f *fakeChecker) { e.layout.Supervisor.Cores = []int{1, 5} },
			`subos "db": cores: core 5 is the supervisor's housekeeping core`},
		{"missing core", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[1].Cores = []int{4, 99} },
			`subos "db": cores: core 99 does not exist (this machine has CPUs 0-7)`},
		{"offline core", func(e *checkEnv, f *fakeChecker) { e.inv.CPUs[5].Online = false },
			`subos "db": cores: core 5 is offline`},
		{"core twice", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[1].Cores = []int{4, 4} },
			`subos "db": cores: core 4 is listed twice`},
		{"supervisor core missing", func(e *checkEnv, f *fakeChecker) { e.layout.Supervisor.Cores = []int{42} },
			`supervisor.cores: core 42 does not exist (this machine has CPUs 0-7)`},
		{"supervisor core offline", func(e *checkEnv, f *fakeChecker) {
			e.layout.Supervisor.Cores = []int{7}
			e.inv.CPUs[7].Online = false
		}, `supervisor.cores: core 7 is offline`},
		{"supervisor core twice", func(e *checkEnv, f *fakeChecker) { e.layout.Supervisor.Cores = []int{1, 1} },
			`supervisor.cores: core 1 is listed twice`},
		{"segment bad name", func(e *checkEnv, f *fakeChecker) {
			e.layout.SubOSes[1].Segments = []Segment{{Name: "Big_One", Size: 4096}}
		},
			`subos "db": segments[0].name: "Big_One" is not a valid name`},
		{"segment bad size", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[1].Segments = []Segment{{Name: "s", Size: 1000}} },
			`subos "db": segments[0].size: 1000: want a multiple of 4 KiB up to 1G`},
		{"segment twice", func(e *checkEnv, f *fakeChecker) {
			e.layout.SubOSes[1].Segments = []Segment{{Name: "s", Size: 4096}, {Name: "s"}}
		}, `subos "db": segments[1].name: "s" is also segments[0]`},
		{"segment sizes disagree", func(e *checkEnv, f *fakeChecker) {
			e.layout.SubOSes[0].Segments = []Segment{{Name: "s", Size: 4096}}
			e.layout.SubOSes[1].Segments = []Segment{{Name: "s", Size: 8192}}
		}, `subos "db": segments[0].size: 8K, but subos "web" gives segment "s" 4K`},
		{"segment without size", func(e *checkEnv, f *fakeChecker) {
			e.layout.SubOSes[0].Segments = []Segment{{Name: "s"}}
			e.layout.SubOSes[1].Segments = []Segment{{Name: "s", ReadOnly: true}}
		}, `subos "web": segments[0].size: no subOS gives segment "s" a size`},
		{"disk not a file", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[1].Disks[0].Path = "/dev/null" },
			`subos "db": disks[0].path: /dev/null is not a regular file`},
		{"cpus and cores disagree", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[1].CPUs = 3 },
			`subos "db": cpus: 3 does not match the 2 cores listed in cores; give one of them`},
		{"no cpus", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[0].CPUs = 0 },
			`subos "web": cpus: missing: give cpus (how many) or cores (which host CPUs)`},
		{"negative cpus", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[0].CPUs = -2 },
			`subos "web": cpus: -2: want at least 1`},
		{"too many cpus", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[0].CPUs = 8 },
			`subos "web": cpus: 8 wanted, but this machine has only 7 online cores besides the supervisor's`},
		{"missing node", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[0].Node = 3 },
			`subos "web": node: node 3 does not exist (this machine has nodes 0)`},
		{"memory not page-aligned", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[0].Memory = 513 << 20 },
			`subos "web": memory: 513M is not a multiple of the 2M page size`},
		{"memory not 1G-aligned", func(e *checkEnv, f *fakeChecker) {
			e.layout.SubOSes[0].PageSize = PageSize1G
		}, `subos "web": memory: 512M is not a multiple of the 1G page size`},
		{"no memory", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[0].Memory = 0 },
			`subos "web": memory: missing (e.g. memory: 512M)`},
		{"memory beyond machine", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[0].Memory = 16 << 30 },
			`subos "web": memory: 16G is more than the machine's 8G`},
		{"memory beyond node", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[1].Memory = 10 << 30 },
			`subos "db": memory: 10G is more than node 0's 8G`},
		{"memory beyond pool, cumulative", func(e *checkEnv, f *fakeChecker) { f.pool = 1 << 30 },
			`subos "db": memory: 1073741824 bytes wanted, only 536870912 free`},
		{"4K pages", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[0].PageSize = 4096 },
			`subos "web": page_size: 4K pages are not supported: subOS memory is backed by hugepages; use 2M or 1G`},
		{"3M pages", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[0].PageSize = 3 << 20 },
			`subos "web": page_size: 3M is not a hugepage size; use 2M or 1G`},
		{"no page size", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[0].PageSize = 0 },
			`subos "web": page_size: missing`},
		{"default 4K pages", func(e *checkEnv, f *fakeChecker) { e.layout.Defaults.PageSize = 4096 },
			`defaults.page_size: 4K pages are not supported`},
		{"no 1G pool", func(e *checkEnv, f *fakeChecker) {
			e.inv.Nodes[0].HugePages = e.inv.Nodes[0].HugePages[:1]
			e.layout.SubOSes[1].PageSize = PageSize1G
		}, `subos "db": page_size: this machine has no 1G hugepages`},
		{"kernel missing", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[1].Kernel = filepath.Join(e.dir, "nope") },
			`subos "db": kernel: %d/nope does not exist`},
		{"default kernel missing", func(e *checkEnv, f *fakeChecker) {
			e.layout.Defaults.Kernel = filepath.Join(e.dir, "gone")
			e.layout.SubOSes[0].Kernel = e.layout.Defaults.Kernel
		}, `defaults.kernel: %d/gone does not exist`},
		{"no kernel", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[0].Kernel = "" },
			`subos "web": kernel: missing: set defaults.kernel or the subOS's kernel`},
		{"kernel is a directory", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[1].Kernel = e.dir },
			`subos "db": kernel: %d is a directory, not a file`},
		{"initrd missing", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[1].Initrd = filepath.Join(e.dir, "initrd") },
			`subos "db": initrd: %d/initrd does not exist`},
		{"disk missing", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[1].Disks[0].Path = filepath.Join(e.dir, "x.img") },
			`subos "db": disks[0].path: %d/x.img does not exist`},
		{"disk path empty", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[1].Disks[0].Path = "" },
			`subos "db": disks[0].path: missing`},
		{"disk twice", func(e *checkEnv, f *fakeChecker) {
			e.layout.SubOSes[1].Disks = append(e.layout.SubOSes[1].Disks, e.layout.SubOSes[1].Disks[0])
		}, `subos "db": disks[1].path: %d/data.img is also disks[0]`},
		{"disk written by two", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[1].Disks[0].Path = e.disk },
			`subos "db": disks[0].path: %d/disk.img is also used by subos "web"; subOSes may share a disk only when all of them have it readonly`},
		{"disk iops too low", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[1].Disks[0].IOPS.Rate = 1 },
			`subos "db": disks[0]: iops: rate 1 per second, want 10..10000000`},
		{"bad device address", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[0].Devices = []string{"00:1f.2"} },
			`subos "web": devices: "00:1f.2" is not a PCI address (want domain:bus:slot.function, e.g. 0000:00:1f.2)`},
		{"device missing", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[0].Devices = []string{"0000:09:00.0"} },
			`subos "web": devices: 0000:09:00.0 does not exist on this machine`},
		{"device twice", func(e *checkEnv, f *fakeChecker) {
			e.layout.SubOSes[0].Devices = []string{"0000:00:1f.2", "0000:00:1f.2"}
		}, `subos "web": devices: 0000:00:1f.2 is listed twice`},
		{"device in two subOSes", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[1].Devices = []string{"0000:00:1f.2"} },
			`subos "db": devices: 0000:00:1f.2 is also passed to subos "web"`},
		{"device not isolatable", func(e *checkEnv, f *fakeChecker) {
			e.layout.SubOSes[0].Devices = []string{"0000:02:00.0"}
			f.badDevices["0000:02:00.0"] = "device 0000:02:00.0 is not isolatable: no IOMMU group"
		}, `subos "web": devices: device 0000:02:00.0 is not isolatable: no IOMMU group`},
		{"device owned", func(e *checkEnv, f *fakeChecker) { f.devOwner["0000:00:1f.2"] = "old" },
			`subos "web": devices: device 0000:00:1f.2 is owned by old`},
		{"cmdline control character", func(e *checkEnv, f *fakeChecker) { e.layout.SubOSes[1].CmdlineAppend = "a\nb" },
			`subos "db": cmdline_append: contains a control character (newline, tab, NUL, ...)`},
		{"cmdline too long", func(e *checkEnv, f *fakeChecker) {
			e.layout.SubOSes[1].CmdlineAppend = strings.Repeat("x", MaxCmdlineAppend+1)
		}, `subos "db": cmdline_append: 2049 bytes long; at most 2048`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newCheckEnv(t)
			f := newFakeChecker(4 << 30)
			tc.mutate(e, f)
			got := problemStrings(e.layout.Check(e.inv, f))
			want := strings.ReplaceAll(tc.want, "%d", e.dir)
			if !slices.ContainsFunc(got, func(s string) bool { return strings.Contains(s, want) }) {
				t.Errorf("problems lack %q; got:\n%s", want, strings.Join(got, "\n"))
			}
			for _, s := range got {
				if strings.Contains(s, "\n") {
					t.Errorf("problem is not one line: %q", s)
				}
			}
		})
	}
}

func TestCheckSharedReadOnlyDisk(t *testing.T) {
	e := newCheckEnv(t)
	e.layout.SubOSes[1].Disks = []Disk{{Path: e.disk, ReadOnly: true}}
	if ps := e.layout.Check(e.inv, nil); len(ps) != 0 {
		t.Errorf("read-only shared disk: %v", problemStrings(ps))
	}
}

func TestCheckListsEveryProblem(t *testing.T) {
	e := newCheckEnv(t)
	e.layout.Supervisor.Cores = []int{42}
	web, db := &e.layout.SubOSes[0], &e.layout.SubOSes[1]
	web.Name, web.CPUs, web.Memory, web.PageSize = "Bad Name", 0, 3<<20, 4096
	web.Devices = []string{"junk"}
	db.Name, db.Cores, db.Kernel = "Bad Name", []int{99}, filepath.Join(e.dir, "nope")
	e.layout.SubOSes = append(e.layout.SubOSes, SubOS{Node: 9})
	got := problemStrings(e.layout.Check(e.inv, newFakeChecker(4<<30)))
	for _, want := range []string{
		`supervisor.cores: core 42 does not exist`,
		`subos "Bad Name": name: "Bad Name" is not a valid name`,
		`subos "Bad Name": cpus: missing`,
		`subos "Bad Name": page_size: 4K pages are not supported`,
		`subos "Bad Name": devices: "junk" is not a PCI address`,
		`subos "Bad Name": name: "Bad Name" is also the name of subos[0]`,
		`subos "Bad Name": cores: core 99 does not exist`,
		`subos "Bad Name": kernel: ` + e.dir + `/nope does not exist`,
		`subos[2]: name: missing`,
		`subos[2]: cpus: missing`,
		`subos[2]: memory: missing`,
		`subos[2]: node: node 9 does not exist`,
		`subos[2]: page_size: missing`,
		`subos[2]: kernel: missing`,
	} {
		if !slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, want) }) {
			t.Errorf("problems lack %q", want)
		}
	}
	if t.Failed() {
		t.Logf("got:\n%s", strings.Join(got, "\n"))
	}
	// Layout-wide problems come first, then each subOS's in order.
	if !strings.HasPrefix(got[0], "supervisor.cores") || !strings.HasPrefix(got[len(got)-1], "subos[2]") {
		t.Errorf("order: %q ... %q", got[0], got[len(got)-1])
	}
}

// A fault Check finds itself is not repeated in the checker's words.
func TestCheckNoDuplicateFromChecker(t *testing.T) {
	e := newCheckEnv(t)
	e.layout.SubOSes[1].Cores = []int{0, 5}
	f := newFakeChecker(4 << 30)
	f.extra["db"] = []ledger.Problem{
		{Field: "cores", Message: "cpu 0 is the supervisor's housekeeping core"},
		{Field: "memory", Message: "from the ledger"},
	}
	got := problemStrings(e.layout.Check(e.inv, f))
	want := []string{
		`subos "db": cores: core 0 is the supervisor's housekeeping core`,
		`subos "db": memory: from the ledger`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// db was refused, so it is not reserved; web is.
	if len(f.reserved) != 1 || f.reserved[0].Name != "web" {
		t.Errorf("reserved %+v", f.reserved)
	}
}

// Check against the real ledger, through a scratch copy: the layout's
// subOSes are checked cumulatively and the live ledger is left alone.
func TestCheckWithLedger(t *testing.T) {
	e := newCheckEnv(t)
	led, err := ledger.New(e.inv, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := led.Reserve(ledger.Request{Name: "old", CPUs: 1, Node: -1, Memory: 64 << 20, PageSize: PageSize2M, Devices: []string{"0000:01:00.0"}}); err != nil {
		t.Fatal(err)
	}
	if err := led.SetCapacity(0, PageSize2M, 1024); err != nil { // 2G
		t.Fatal(err)
	}
	scratch, err := Scratch(e.inv, led)
	if err != nil {
		t.Fatal(err)
	}
	if ps := e.layout.Check(e.inv, scratch); len(ps) != 0 {
		t.Fatalf("valid layout: %v", problemStrings(ps))
	}

	scratch, err = Scratch(e.inv, led)
	if err != nil {
		t.Fatal(err)
	}
	web, db := &e.layout.SubOSes[0], &e.layout.SubOSes[1]
	web.CPUs = 4
	web.Devices = []string{"0000:01:00.1"} // IOMMU group 7, shared with old's device
	db.Cores = nil
	db.CPUs, db.Node = 3, -1 // 7 free - old's 1 - web's 4 = 2 left
	db.Memory = 1536 << 20   // 2G - 64M - 512M left
	got := e.layout.Check(e.inv, scratch)
	has := func(name, field, substr string) {
		t.Helper()
		for _, p := range got {
			if p.SubOS == name && p.Field == field && strings.Contains(p.Message, substr) {
				return
			}
		}
		t.Errorf("no %s %s problem with %q in:\n%s", name, field, substr, strings.Join(problemStrings(got), "\n"))
	}
	has("web", "devices", "0000:01:00.1")
	// web was refused (device), so db is checked without web's cores.
	if slices.ContainsFunc(got, func(p Problem) bool { return p.SubOS == "db" && p.Field == "cpus" }) {
		t.Errorf("db should fit without web: %v", problemStrings(got))
	}
	web.Devices = nil
	scratch, err = Scratch(e.inv, led)
	if err != nil {
		t.Fatal(err)
	}
	got = e.layout.Check(e.inv, scratch)
	has("db", "cpus", "")
	db.CPUs = 2
	if scratch, err = Scratch(e.inv, led); err != nil {
		t.Fatal(err)
	}
	got = e.layout.Check(e.inv, scratch)
	has("db", "memory", "")
	if slices.ContainsFunc(got, func(p Problem) bool { return p.SubOS == "web" }) {
		t.Errorf("web should fit: %v", problemStrings(got))
	}
	if a := led.Allocations(); len(a) != 1 || a[0].Name != "old" {
		t.Errorf("live ledger changed: %+v", a)
	}
}
