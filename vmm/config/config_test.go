package config

import (
	"errors"
	"strings"
	"testing"
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

func TestParseDisk(t *testing.T) {
	for in, want := range map[string]Disk{
		"/a.img":          {Path: "/a.img"},
		"/a.img,ro":       {Path: "/a.img", ReadOnly: true},
		"/dev/sdb,direct": {Path: "/dev/sdb", Direct: true},
		"/x,ro,direct":    {Path: "/x", ReadOnly: true, Direct: true},
		"/x,direct,ro,ro": {Path: "/x", ReadOnly: true, Direct: true},
	} {
		got, err := ParseDisk(in)
		if err != nil || got != want {
			t.Errorf("ParseDisk(%q) = %+v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", ",ro", "/a,rw", "/a,"} {
		if _, err := ParseDisk(in); err == nil {
			t.Errorf("ParseDisk(%q) accepted", in)
		}
	}
	if s := (Disk{Path: "/x", ReadOnly: true, Direct: true}).String(); s != "/x,ro,direct" {
		t.Errorf("String = %q", s)
	}
}

// FuzzDecode: any input is refused with ErrInvalid or decodes to a
// document that validates and survives a round trip.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte(`{"version":1,"name":"a","kernel":"k","cores":[0],"memory":2097152,"console":{}}`))
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
