package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"rainforest/internal/tokenbucket"
	"rainforest/vmm/ram"
)

const good = `{"version": 1, "name": "web", "kernel": "/k", "cores": [2, 3], "memory": 536870912,
 "page_size": "2M", "disks": [{"path": "/d.img", "readonly": true}, {"id": "data", "path": "/dev/vg/data", "direct": true}],
 "console": {"mode": "file", "log_size": 65536, "log_rate": 4096, "path": "/run/web.log", "socket": "/run/web.sock"},
 "regions": [{"name": "ficm", "protocol": 1, "peers": 16, "rw_size": 0, "output_size": 65536, "vectors": 1, "self": 3}]}`

func TestDecode(t *testing.T) {
	d, err := Decode(strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	disks := d.WithDiskIDs()
	if d.Name != "web" || len(d.Cores) != 2 || disks[0].ID != "disk0" || disks[1].ID != "data" || !disks[1].Direct {
		t.Fatalf("decoded %+v", d)
	}
	if d.Regions[0].Files() != 17 {
		t.Errorf("region files %d", d.Regions[0].Files())
	}
	// A document survives a round trip.
	b, err := d.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Decode(strings.NewReader(string(b))); err != nil {
		t.Fatalf("re-decode: %v", err)
	}
}

// Every refusal names what is wrong.
func TestDecodeRefuses(t *testing.T) {
	for _, c := range []struct{ doc, want string }{
		{`{"name": "a"}`, `no "version"`},
		{`{"version": 2, "name": "a"}`, "version 2, this rfm understands version 1"},
		{strings.Replace(good, `"name"`, `"nmae"`, 1), `unknown field "nmae"`},
		{strings.Replace(good, `"readonly": true`, `"readonly": true, "cache": "none"`, 1), `unknown field "cache"`},
		{strings.Replace(good, `"memory": 536870912`, `"memory": "512M"`, 1), `field "memory"`},
		{strings.Replace(good, `"cores": [2, 3]`, `"cores": []`, 1), "no cores"},
		{strings.Replace(good, `"cores": [2, 3]`, `"cores": [2, 2]`, 1), "each core once"},
		{strings.Replace(good, `"cores": [2, 3]`, `"cores": [2, 3], "max_vcpus": 1`, 1), "max_vcpus 1: 0 (as many as cores) or 2 (the cores given) to 254"},
		{strings.Replace(good, `"cores": [2, 3]`, `"cores": [2, 3], "max_vcpus": -4`, 1), "max_vcpus -4"},
		{strings.Replace(good, `"cores": [2, 3]`, `"cores": [2, 3], "max_vcpus": 255`, 1), "max_vcpus 255"},
		{strings.Replace(good, `"memory": 536870912`, `"memory": 536870913`, 1), "multiple of the 2 MiB page size"},
		{strings.Replace(good, `"page_size": "2M"`, `"page_size": "3M"`, 1), "page_size"},
		{strings.Replace(good, `"name": "web"`, `"name": "Web Server"`, 1), `name "Web Server"`},
		{strings.Replace(good, `"kernel": "/k"`, `"kernel": ""`, 1), "no kernel"},
		{strings.Replace(good, `{"id": "data", `, `{"id": "disk0", `, 1), `id "disk0" used twice`},
		{strings.Replace(good, `"path": "/d.img"`, `"path": ""`, 1), "disks[0]: no path"},
		{strings.Replace(good, `"mode": "file"`, `"mode": "tty"`, 1), `console mode "tty"`},
		{strings.Replace(good, `"log_size": 65536`, `"log_size": 100`, 1), "log_size 100"},
		{strings.Replace(good, `"log_size": 65536`, `"log_size": 2147483648`, 1), "log_size 2147483648"},
		{strings.Replace(good, `"log_rate": 4096`, `"log_rate": 2147483648`, 1), "log_rate 2147483648"},
		{strings.Replace(good, `"self": 3`, `"self": 16`, 1), "peer id 16 of 16"},
		{strings.Replace(good, `"vectors": 1`, `"vectors": 0`, 1), "0 vectors"},
		{good + good, "after top-level value"},
		{`{"version": 1, ` + strings.Repeat(" ", MaxDocument) + `}`, "larger than"},
		{`not json`, "VMM configuration"},
	} {
		_, err := Decode(strings.NewReader(c.doc))
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%.60s...: %v, want an ErrInvalid naming %q", c.doc, err, c.want)
		}
	}
}

// max_vcpus is the machine's vCPU count, len(cores) when absent; a
// refusal names the field.
func TestMaxVCPUs(t *testing.T) {
	d, err := Decode(strings.NewReader(good))
	if err != nil || d.MaxVCPUs != 0 || d.VCPUs() != 2 {
		t.Fatalf("without max_vcpus: %d vCPUs (%+v, %v)", d.VCPUs(), d, err)
	}
	for _, n := range []int{2, 3, MaxCores} {
		doc := strings.Replace(good, `"cores": [2, 3]`, fmt.Sprintf(`"cores": [2, 3], "max_vcpus": %d`, n), 1)
		d, err := Decode(strings.NewReader(doc))
		if err != nil || d.VCPUs() != n {
			t.Fatalf("max_vcpus %d: %v", n, err)
		}
		b, _ := d.Encode()
		if !strings.Contains(string(b), fmt.Sprintf(`"max_vcpus":%d`, n)) {
			t.Errorf("encoded without max_vcpus %d: %s", n, b)
		}
	}
	var fe *FieldError
	_, err = Decode(strings.NewReader(strings.Replace(good, `"cores": [2, 3]`, `"cores": [2, 3], "max_vcpus": 1`, 1)))
	if !errors.As(err, &fe) || fe.Field != "max_vcpus" {
		t.Errorf("max_vcpus below the cores: %v", err)
	}
}

func TestParseDisk(t *testing.T) {
	for in, want := range map[string]Disk{
		"/a.img":          {Path: "/a.img"},
		"/a.img,ro":       {Path: "/a.img", ReadOnly: true},
		"/dev/sdb,direct": {Path: "/dev/sdb", Direct: true},
		"/x,ro,direct":    {Path: "/x", ReadOnly: true, Direct: true},
		"/x,direct,ro,ro": {Path: "/x", ReadOnly: true, Direct: true},
		"/x,iops=1000":    {Path: "/x", IOPS: tokenbucket.Limit{Rate: 1000}},
		"/x,iops=500,iops-burst=2000,bw=100M,bw-burst=1G": {Path: "/x",
			IOPS: tokenbucket.Limit{Rate: 500, Burst: 2000}, Bandwidth: tokenbucket.Limit{Rate: 100 << 20, Burst: 1 << 30}},
	} {
		got, err := ParseDisk(in)
		if err != nil || got != want {
			t.Errorf("ParseDisk(%q) = %+v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", ",ro", "/a,rw", "/a,", "/a,iops", "/a,iops=x", "/a,iops=1",
		"/a,iops-burst=10", "/a,bw=1K", "/a,bw=2T", "/a,bw=1M,bw-burst=1T", "/a,bw=-1"} {
		if _, err := ParseDisk(in); err == nil {
			t.Errorf("ParseDisk(%q) accepted", in)
		}
	}
	if s := (Disk{Path: "/x", ReadOnly: true, Direct: true}).String(); s != "/x,ro,direct" {
		t.Errorf("String = %q", s)
	}
	limited := Disk{Path: "/x", IOPS: tokenbucket.Limit{Rate: 100, Burst: 200}, Bandwidth: tokenbucket.Limit{Rate: 1 << 20, Burst: 1 << 21}}
	if back, err := ParseDisk(limited.String()); err != nil || back != limited {
		t.Errorf("round trip of %q: %+v, %v", limited.String(), back, err)
	}
}

func TestDiskLimitsInDocument(t *testing.T) {
	doc := `{"version":1,"name":"a","kernel":"k","cores":[0],"memory":2097152,"console":{},
		"disks":[{"path":"/a","iops":{"rate":1000,"burst":100},"bandwidth":{"rate":1048576}}]}`
	d, err := Decode(strings.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	if k := d.Disks[0]; k.IOPS != (tokenbucket.Limit{Rate: 1000, Burst: 100}) || k.Bandwidth.Rate != 1<<20 {
		t.Fatalf("disk %+v", k)
	}
	b, _ := (&Document{Version: 1, Disks: []Disk{{Path: "/a"}}}).Encode()
	if strings.Contains(string(b), "iops") || strings.Contains(string(b), "bandwidth") {
		t.Errorf("unlimited disk encodes its limits: %s", b)
	}
	bad := strings.Replace(doc, `"rate":1000,`, "", 1)
	var fe *FieldError
	if _, err := Decode(strings.NewReader(bad)); !errors.As(err, &fe) || fe.Field != "disks" || !strings.Contains(err.Error(), "burst without a rate") {
		t.Errorf("burst without rate: %v", err)
	}
}

// FuzzDecode: any input is refused with ErrInvalid or decodes to a
// document that validates and survives a round trip.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte(`{"version":1,"name":"a","kernel":"k","cores":[0],"memory":2097152,"console":{}}`))
	f.Add([]byte(`{"version":1,"name":"a","kernel":"k","cores":[0,1],"max_vcpus":4,"memory":2097152,"console":{}}`))
	f.Add([]byte(`{"version":1,"name":"a","kernel":"k","cores":[0],"memory":2097152,"console":{},"shares":[{"tag":"t","socket":"/s"},{"id":"b","tag":"u"}],"files":{"share/b":0}}`))
	f.Add([]byte(`{"version":1,"name":"a","kernel":"k","cores":[0],"memory":2097152,"console":{},"nets":[{"mac":"52:54:00:00:00:01","tap":"t0"},{"id":"b","mac":"52:54:00:00:00:02"}],"files":{"net/b":0}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Decode(strings.NewReader(string(data)))
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error not ErrInvalid: %v", err)
			}
			return
		}
		if err := d.Validate(); err != nil {
			t.Fatalf("decoded document does not validate: %v", err)
		}
		b, err := d.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Decode(strings.NewReader(string(b))); err != nil {
			t.Fatalf("round trip: %v", err)
		}
	})
}

func TestRegionDoorbellLimit(t *testing.T) {
	r := Region{Name: "ficm", Peers: 2, Vectors: 1, OutputSize: 4096}
	if err := r.Validate(); err != nil {
		t.Fatalf("default: %v", err)
	}
	r.Doorbells = tokenbucket.Limit{Rate: 1000, Burst: 10}
	if err := r.Validate(); err != nil {
		t.Fatalf("1000/s: %v", err)
	}
	for _, l := range []tokenbucket.Limit{{Burst: 10}, {Rate: 1}, {Rate: MaxDoorbells + 1}} {
		r.Doorbells = l
		if err := r.Validate(); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "doorbells") {
			t.Errorf("%+v: %v", l, err)
		}
	}
}

// The descriptor table names known descriptors, each index once, in range.
func TestFilesTable(t *testing.T) {
	ok := strings.Replace(good, `"version": 1,`, `"version": 1, "files": {"kvm": 0, "kernel": 1, "disk/disk0": 2, "disk/data": 3, "console_log": 4, "console_socket": 5},`, 1)
	d, err := Decode(strings.NewReader(ok))
	if err != nil {
		t.Fatal(err)
	}
	if i, ok := d.FileIndex(DiskFile("data")); !ok || i != 3 {
		t.Errorf("FileIndex(disk/data) = %d, %v", i, ok)
	}
	if _, ok := d.FileIndex(FileInitrd); ok {
		t.Error("initrd found")
	}
	for _, c := range []struct{ files, want string }{
		{`{"kvm": 0, "kernel": 0}`, `index 0 used by "kernel" and "kvm"`},
		{`{"kvm": 1}`, `"kvm" at index 1, want 0..0`},
		{`{"kvm": -1}`, `"kvm" at index -1`},
		{`{"bogus": 0}`, `unknown descriptor name "bogus"`},
		{`{"disk/nope": 0}`, `unknown descriptor name "disk/nope"`},
		{`{"initrd": 0}`, `unknown descriptor name "initrd"`}, // no initrd in the document
		{`{"disk/": 0}`, `unknown descriptor name "disk/"`},
	} {
		doc := strings.Replace(good, `"version": 1,`, `"version": 1, "files": `+c.files+`,`, 1)
		_, err := Decode(strings.NewReader(doc))
		var fe *FieldError
		if err == nil || !errors.As(err, &fe) || fe.Field != "files" || !strings.Contains(err.Error(), c.want) {
			t.Errorf("files %s: %v, want %q", c.files, err, c.want)
		}
	}
	noFile := strings.Replace(strings.Replace(good, `"mode": "file", `, ``, 1), `"path": "/run/web.log", `, ``, 1)
	noFile = strings.Replace(noFile, `"version": 1,`, `"version": 1, "files": {"console_log": 0},`, 1)
	if _, err := Decode(strings.NewReader(noFile)); err == nil || !strings.Contains(err.Error(), "only for console mode") {
		t.Errorf("console_log without file mode: %v", err)
	}
}

func TestJailIdentity(t *testing.T) {
	for _, c := range []struct {
		jail string
		ok   bool
	}{
		{`{"root": "/run/rf/jail/web", "uid": 64434, "gid": 64434}`, true},
		{`{"root": "/run/rf/jail/web", "uid": 0, "gid": 64434}`, false},
		{`{"root": "/run/rf/jail/web", "uid": 64434, "gid": 0}`, false},
		{`{"root": "jail/web", "uid": 64434, "gid": 64434}`, false},
		{`{"root": "/j", "uid": 64434, "gid": 64434, "cap": 1}`, false},
	} {
		doc := strings.Replace(good, `"version": 1,`, `"version": 1, "jail": `+c.jail+`,`, 1)
		_, err := Decode(strings.NewReader(doc))
		if (err == nil) != c.ok {
			t.Errorf("jail %s: %v", c.jail, err)
		}
	}
}

func TestVsock(t *testing.T) {
	with := func(v string) string {
		return strings.Replace(good, `"version": 1,`, `"version": 1, "vsock": `+v+`,`, 1)
	}
	d, err := Decode(strings.NewReader(with(`{"cid": 3, "socket": "/run/web.vsock"}`)))
	if err != nil {
		t.Fatal(err)
	}
	if d.Vsock == nil || d.Vsock.CID != 3 || d.Vsock.Socket != "/run/web.vsock" {
		t.Fatalf("vsock %+v", d.Vsock)
	}
	if _, err := Decode(strings.NewReader(with(`{"cid": 4294967294, "socket": "/v"}`))); err != nil {
		t.Fatalf("largest CID: %v", err)
	}
	for _, c := range []struct{ v, field, want string }{
		{`{"cid": 2, "socket": "/v"}`, "vsock.cid", "cid 2: a guest CID, 3 to 4294967294"},
		{`{"cid": 4294967295, "socket": "/v"}`, "vsock.cid", "cid 4294967295"},
		{`{"cid": 3, "socket": "run/v"}`, "vsock.socket", `socket "run/v" is not an absolute path`},
		{`{"cid": 3}`, "vsock.socket", `socket "" is not an absolute path`},
		{`{"cid": 3, "socket": "/` + strings.Repeat("v", 100) + `"}`, "vsock.socket", "socket path of 101 bytes"},
	} {
		_, err := Decode(strings.NewReader(with(c.v)))
		var fe *FieldError
		if err == nil || !errors.As(err, &fe) || fe.Field != c.field || !strings.Contains(err.Error(), c.want) {
			t.Errorf("vsock %s: %v, want %s: %q", c.v, err, c.field, c.want)
		}
	}
	// Its listener may come as a descriptor, only with a vsock section.
	files := strings.Replace(with(`{"cid": 3, "socket": "/v"}`), `"version": 1,`, `"version": 1, "files": {"vsock_socket": 0},`, 1)
	if _, err := Decode(strings.NewReader(files)); err != nil {
		t.Fatalf("vsock_socket: %v", err)
	}
	files = strings.Replace(good, `"version": 1,`, `"version": 1, "files": {"vsock_socket": 0},`, 1)
	if _, err := Decode(strings.NewReader(files)); err == nil || !strings.Contains(err.Error(), `unknown descriptor name "vsock_socket"`) {
		t.Fatalf("vsock_socket without vsock: %v", err)
	}
}

func TestHotplugMemory(t *testing.T) {
	for _, c := range []struct {
		pages string
		size  uint64
		ok    bool
	}{
		{"2M", 0, true},
		{"2M", 2 << 20, true},
		{"4k", 64 << 20, true},
		{"2M", MaxHotplugMemory, true},
		{"2M", 1 << 20, false},
		{"4k", 4096, false},
		{"1G", 2 << 20, false},
		{"1G", 2 << 30, true},
		{"2M", MaxHotplugMemory + 2<<20, false},
	} {
		doc := strings.Replace(good, `"cores": [2, 3]`, fmt.Sprintf(`"cores": [2, 3], "hotplug_memory": %d`, c.size), 1)
		doc = strings.Replace(doc, `"page_size": "2M"`, fmt.Sprintf(`"page_size": %q`, c.pages), 1)
		doc = strings.Replace(doc, `"memory": 536870912`, `"memory": 1073741824`, 1)
		d, err := Decode(strings.NewReader(doc))
		if c.ok {
			if err != nil || d.HotplugMemory != c.size {
				t.Errorf("%s pages, %d: %v", c.pages, c.size, err)
			}
			continue
		}
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != "hotplug_memory" {
			t.Errorf("%s pages, %d: %v, want a hotplug_memory error", c.pages, c.size, err)
		}
	}
	if HotplugBlockSize(ram.Page4K) != 2<<20 || HotplugBlockSize(ram.Page1G) != 1<<30 {
		t.Error("block sizes")
	}
}

func TestShares(t *testing.T) {
	with := func(v string) string {
		return strings.Replace(good, `"version": 1,`, `"version": 1, "shares": `+v+`,`, 1)
	}
	d, err := Decode(strings.NewReader(with(`[{"tag": "home", "socket": "/run/web.home.vfs"}, {"id": "src", "tag": "src", "socket": "/run/src.vfs"}]`)))
	if err != nil {
		t.Fatal(err)
	}
	shares := d.WithShareIDs()
	if len(shares) != 2 || shares[0].ID != "share0" || shares[0].Tag != "home" || shares[1].ID != "src" || shares[1].Socket != "/run/src.vfs" {
		t.Fatalf("shares %+v", shares)
	}
	for _, c := range []struct{ v, field, want string }{
		{`[{"tag": "", "socket": "/s"}]`, "shares[0].tag", "1 to 36 bytes"},
		{`[{"tag": "` + strings.Repeat("t", 37) + `", "socket": "/s"}]`, "shares[0].tag", "1 to 36 bytes"},
		{`[{"tag": "my home", "socket": "/s"}]`, "shares[0].tag", "printable ASCII without spaces"},
		{`[{"tag": "a", "socket": "/s"}, {"tag": "a", "socket": "/t"}]`, "shares[1].tag", `tag "a" used twice`},
		{`[{"id": "data", "tag": "a", "socket": "/s"}]`, "shares[0].id", `id "data" is another device's`},
		{`[{"id": "console", "tag": "a", "socket": "/s"}]`, "shares[0].id", `id "console" is another device's`},
		{`[{"tag": "a", "socket": "/s"}, {"id": "share0", "tag": "b", "socket": "/s"}]`, "shares[1].id", `id "share0" is another device's`},
		{`[{"id": "a b", "tag": "a", "socket": "/s"}]`, "shares[0].id", `id "a b"`},
		{`[{"tag": "a"}]`, "shares[0].socket", `no socket`},
		{`[{"tag": "a", "socket": "run/s"}]`, "shares[0].socket", `socket "run/s" is not an absolute path`},
		{`[{"tag": "a", "socket": "/` + strings.Repeat("s", 107) + `"}]`, "shares[0].socket", "socket path of 108 bytes"},
		{`[` + strings.Repeat(`{"tag": "a", "socket": "/s"},`, MaxShares) + `{"tag": "b", "socket": "/s"}]`, "shares", "9 shares, at most 8"},
	} {
		_, err := Decode(strings.NewReader(with(c.v)))
		var fe *FieldError
		if err == nil || !errors.As(err, &fe) || fe.Field != c.field || !strings.Contains(err.Error(), c.want) {
			t.Errorf("shares %s: %v, want %s: %q", c.v, err, c.field, c.want)
		}
	}
	// A jailed VMM's share comes as a connected socket, without a path.
	files := strings.Replace(with(`[{"id": "home", "tag": "home"}]`), `"version": 1,`, `"version": 1, "files": {"share/home": 0},`, 1)
	if _, err := Decode(strings.NewReader(files)); err != nil {
		t.Fatalf("share descriptor: %v", err)
	}
	files = strings.Replace(good, `"version": 1,`, `"version": 1, "files": {"share/home": 0},`, 1)
	if _, err := Decode(strings.NewReader(files)); err == nil || !strings.Contains(err.Error(), `unknown descriptor name "share/home"`) {
		t.Fatalf("share descriptor without the share: %v", err)
	}
}

func TestNets(t *testing.T) {
	with := func(nets string) string {
		return strings.Replace(good, `"version": 1,`, `"version": 1, "nets": `+nets+`,`, 1)
	}
	d, err := Decode(strings.NewReader(with(`[{"mac": "52:54:00:12:34:56", "tap": "rf-web0"},
		{"id": "back", "mac": "52:54:00:AB:cd:EF", "tap": "rf-web1", "any_source_mac": true}]`)))
	if err != nil {
		t.Fatal(err)
	}
	nets := d.WithNetIDs()
	if nets[0].ID != "net0" || nets[1].ID != "back" || !nets[1].AnySourceMAC || nets[0].Tap != "rf-web0" {
		t.Fatalf("nets %+v", nets)
	}
	if mac, err := nets[1].HardwareAddr(); err != nil || mac != [6]byte{0x52, 0x54, 0, 0xab, 0xcd, 0xef} {
		t.Fatalf("mac %x %v", mac, err)
	}
	// The TAP may come as a descriptor instead of a name; a jailed VMM
	// needs the descriptor.
	files := func(doc string) string {
		return strings.Replace(doc, `"version": 1,`, `"version": 1, "files": {"net/net0": 0},`, 1)
	}
	jail := func(doc string) string {
		return strings.Replace(doc, `"version": 1,`, `"version": 1, "jail": {"root": "/j", "uid": 1000, "gid": 1000},`, 1)
	}
	for _, doc := range []string{files(with(`[{"mac": "52:54:00:12:34:56"}]`)), jail(files(with(`[{"mac": "52:54:00:12:34:56", "tap": "t"}]`)))} {
		if _, err := Decode(strings.NewReader(doc)); err != nil {
			t.Errorf("descriptor: %v", err)
		}
	}
	eight := strings.Repeat(`{"mac": "52:54:00:00:00:01", "tap": "t"},`, MaxNets+1)
	for _, c := range []struct{ doc, want string }{
		{with(`[{"tap": "t"}]`), `nets[0]: mac ""`},
		{with(`[{"mac": "52:54:00:12:34", "tap": "t"}]`), `mac "52:54:00:12:34"`},
		{with(`[{"mac": "52-54-00-12-34-56", "tap": "t"}]`), `mac "52-54-00-12-34-56"`},
		{with(`[{"mac": "01:00:5e:00:00:01", "tap": "t"}]`), "not a unicast address"},
		{with(`[{"mac": "00:00:00:00:00:00", "tap": "t"}]`), "not a unicast address"},
		{with(`[{"mac": "52:54:00:12:34:56", "tap": "t"}, {"mac": "52:54:00:12:34:56", "tap": "u"}]`), "nets[1]: mac 52:54:00:12:34:56 used twice"},
		{with(`[{"mac": "52:54:00:12:34:56", "tap": "t"}, {"id": "net0", "mac": "52:54:00:12:34:57", "tap": "u"}]`), `nets[1]: id "net0" already names a device`},
		{with(`[{"id": "data", "mac": "52:54:00:12:34:56", "tap": "t"}]`), `id "data" already names a device`},
		{with(`[{"id": "console", "mac": "52:54:00:12:34:56", "tap": "t"}]`), `id "console" already names a device`},
		{with(`[{"id": "a/b", "mac": "52:54:00:12:34:56", "tap": "t"}]`), `id "a/b"`},
		{with(`[{"mac": "52:54:00:12:34:56"}]`), `nets[0]: no tap and no descriptor "net/net0"`},
		{with(`[{"mac": "52:54:00:12:34:56", "tap": "a-very-long-name"}]`), `tap "a-very-long-name"`},
		{with(`[{"mac": "52:54:00:12:34:56", "tap": ".."}]`), `tap ".."`},
		{with(`[{"mac": "52:54:00:12:34:56", "tap": "a b"}]`), `tap "a b"`},
		{jail(with(`[{"mac": "52:54:00:12:34:56", "tap": "t"}]`)), `a jailed VMM opens no TAP; pass descriptor "net/net0"`},
		{with(`[` + eight[:len(eight)-1] + `]`), "9 nets, at most 8"},
	} {
		_, err := Decode(strings.NewReader(c.doc))
		var fe *FieldError
		if err == nil || !errors.As(err, &fe) || fe.Field != "nets" || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want nets: %q", c.want, err, c.want)
		}
	}
	// A TAP net may have a vhost-net descriptor too.
	vhostFiles := strings.Replace(with(`[{"mac": "52:54:00:12:34:56"}]`), `"version": 1,`, `"version": 1, "files": {"net/net0": 0, "vhost-net/net0": 1},`, 1)
	if _, err := Decode(strings.NewReader(vhostFiles)); err != nil {
		t.Errorf("vhost-net descriptor: %v", err)
	}
	if _, err := Decode(strings.NewReader(strings.Replace(good, `"version": 1,`, `"version": 1, "files": {"vhost-net/net0": 0},`, 1))); err == nil || !strings.Contains(err.Error(), `unknown descriptor name "vhost-net/net0"`) {
		t.Errorf("vhost-net/net0 without nets: %v", err)
	}
	// A descriptor for a net the document does not have is unknown.
	if _, err := Decode(strings.NewReader(files(good))); err == nil || !strings.Contains(err.Error(), `unknown descriptor name "net/net0"`) {
		t.Errorf("net/net0 without nets: %v", err)
	}
}

func TestNetBackends(t *testing.T) {
	with := func(nets string, files string) string {
		doc := strings.Replace(good, `"version": 1,`, `"version": 1, "nets": `+nets+`,`, 1)
		if files != "" {
			doc = strings.Replace(doc, `"version": 1,`, `"version": 1, "files": `+files+`,`, 1)
		}
		return doc
	}
	if _, err := Decode(strings.NewReader(with(`[{"mac": "52:54:00:12:34:56", "backend": "socket"}]`, `{"net/net0": 0}`))); err != nil {
		t.Errorf("socket backend with its descriptor: %v", err)
	}
	for _, c := range []struct{ nets, files, want string }{
		{`[{"mac": "52:54:00:12:34:56", "backend": "socket"}]`, "", "no tap and no descriptor"},
		{`[{"mac": "52:54:00:12:34:56", "backend": "socket", "tap": "t"}]`, `{"net/net0": 0}`, "takes no tap"},
		{`[{"mac": "52:54:00:12:34:56", "backend": "carrier-pigeon", "tap": "t"}]`, "", `backend "carrier-pigeon"`},
	} {
		if _, err := Decode(strings.NewReader(with(c.nets, c.files))); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("nets %s: %v, want %q", c.nets, err, c.want)
		}
	}
}

// TestLoopNets: a loop member's net, its descriptors, and every refusal
// naming its field.
func TestLoopNets(t *testing.T) {
	base, err := Decode(strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	members := []LoopMember{
		{Name: "web", MAC: "02:00:00:00:00:01", IP: "10.0.0.1"},
		{Name: "db", MAC: "02:00:00:00:00:02", IP: "10.0.0.2"},
		{Name: "cache", MAC: "02:00:00:00:00:03"},
	}
	doc := func(f func(d *Document, n *Net)) *Document {
		d := *base
		n := Net{ID: "lan", MAC: "02:00:00:00:00:01", Loop: &Loop{Network: "lan0", Self: 0, Members: append([]LoopMember(nil), members...)}}
		d.Files = map[string]int{}
		for k := range members {
			d.Files[LoopLaneFile("lan", k)] = len(d.Files)
			d.Files[LoopBellFile("lan", k)] = len(d.Files)
		}
		if f != nil {
			f(&d, &n)
		}
		d.Nets = []Net{n}
		return &d
	}
	d := doc(nil)
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	b, err := d.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode(strings.NewReader(string(b)))
	if err != nil {
		t.Fatalf("round trip: %v", err)
	}
	lc, err := back.Nets[0].Loop.Config()
	if err != nil || lc.Self != 0 || len(lc.Members) != 3 || lc.Members[1].IP.String() != "10.0.0.2" || lc.Members[2].IP.IsValid() ||
		lc.Members[2].MAC != [6]byte{2, 0, 0, 0, 0, 3} {
		t.Fatalf("loop config %+v, %v", lc, err)
	}
	if LoopLaneFile("lan", 2) != "loop/lan/lane/2" || LoopBellFile("lan", 0) != "loop/lan/bell/0" {
		t.Errorf("descriptor names %s %s", LoopLaneFile("lan", 2), LoopBellFile("lan", 0))
	}
	for _, c := range []struct {
		field, want string
		f           func(d *Document, n *Net)
	}{
		{"nets[0].loop.members", "has 1 member(s): a loop network needs at least two", func(d *Document, n *Net) {
			n.Loop.Members = n.Loop.Members[:1]
		}},
		{"nets[0].loop.members", "at most 16", func(d *Document, n *Net) {
			for i := len(n.Loop.Members); i <= 16; i++ {
				n.Loop.Members = append(n.Loop.Members, LoopMember{Name: fmt.Sprintf("m%d", i), MAC: fmt.Sprintf("02:00:00:00:01:%02x", i)})
			}
		}},
		{"nets[0].loop.network", `network ""`, func(d *Document, n *Net) { n.Loop.Network = "" }},
		{"nets[0].loop.self", "self 3", func(d *Document, n *Net) { n.Loop.Self = 3 }},
		{"nets[0].loop.slots", "slots 1000", func(d *Document, n *Net) { n.Loop.Slots = 1000 }},
		{"nets[0].loop.members[1].name", `name "web" used twice`, func(d *Document, n *Net) { n.Loop.Members[1].Name = "web" }},
		{"nets[0].loop.members[1].name", `name "a b"`, func(d *Document, n *Net) { n.Loop.Members[1].Name = "a b" }},
		{"nets[0].loop.members[2].mac", "used twice", func(d *Document, n *Net) { n.Loop.Members[2].MAC = "02:00:00:00:00:02" }},
		{"nets[0].loop.members[2].mac", "not a unicast address", func(d *Document, n *Net) { n.Loop.Members[2].MAC = "01:00:00:00:00:02" }},
		{"nets[0].loop.members[1].ip", "ip 10.0.0.1 used twice", func(d *Document, n *Net) { n.Loop.Members[1].IP = "10.0.0.1" }},
		{"nets[0].loop.members[1].ip", `ip "fe80::1"`, func(d *Document, n *Net) { n.Loop.Members[1].IP = "fe80::1" }},
		{"nets[0].loop.members[1].ip", `ip "10.0.0"`, func(d *Document, n *Net) { n.Loop.Members[1].IP = "10.0.0" }},
		{"nets[0].mac", "is not the mac of member 0", func(d *Document, n *Net) { n.MAC = "02:00:00:00:00:09" }},
		{"nets[0].tap", "a loop member has no TAP", func(d *Document, n *Net) { n.Tap = "t0" }},
		{"nets[0].tap", "a loop member has no TAP", func(d *Document, n *Net) { d.Files[NetFile("lan")] = len(d.Files) }},
		{"nets[0].any_source_mac", "own MAC only", func(d *Document, n *Net) { n.AnySourceMAC = true }},
		{"files", "vhost-net is for a TAP net only", func(d *Document, n *Net) { d.Files[VhostNetFile("lan")] = len(d.Files) }},
		{"files", `no descriptor "loop/lan/bell/2"`, func(d *Document, n *Net) {
			delete(d.Files, LoopBellFile("lan", 2))
			d.Files[LoopLaneFile("lan", 2)] = len(d.Files) - 1
		}},
		{"files", `unknown descriptor name "loop/lan/lane/3"`, func(d *Document, n *Net) { d.Files[LoopLaneFile("lan", 3)] = len(d.Files) }},
		{"files", `unknown descriptor name "loop/wan/lane/0"`, func(d *Document, n *Net) { d.Files[LoopLaneFile("wan", 0)] = len(d.Files) }},
	} {
		err := doc(c.f).Validate()
		var fe *FieldError
		if err == nil || !errors.As(err, &fe) || fe.Field != c.field || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %s: %q", c.field, err, c.field, c.want)
		}
	}
}
