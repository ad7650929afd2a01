package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/spf13/cobra"

	"rainforest/ficm/board"
	"rainforest/ledger"
	"rainforest/ledger/store"
	"rainforest/partitioner"
	"rainforest/rfm/api"
	"rainforest/rfm/supervisor"
)

// cliBackend is the supervisor behind the CLI tests' API server: the
// real api.Handler over canned state. The embedded Backend (nil) stands
// for any method the tests do not reach.
type cliBackend struct {
	api.Backend
	mu    sync.Mutex
	subos map[string]supervisor.Info
}

func newCLIBackend(t *testing.T) *cliBackend {
	beat := time.Unix(1700000000, 0).UTC()
	log := filepath.Join(t.TempDir(), "web.log")
	if err := os.WriteFile(log, []byte("web booted\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	web := supervisor.Info{Name: "web", State: supervisor.StateRunning, PID: 42, Log: log, Peer: 1,
		Allocation: ledger.Allocation{Name: "web", Cores: []int{2, 3}, Node: 0, Memory: 1 << 30, PageSize: 2 << 20, Pages: 512},
		Spec: supervisor.Spec{Name: "web", CPUs: 2, Memory: 1 << 30, Kernel: "/images/vmlinux",
			Disks:    []supervisor.Disk{{ID: "disk1", Path: "/images/disk.img", ReadOnly: true}},
			Segments: []supervisor.SegmentGrant{{Name: "cache", Size: 4096}}},
		SegmentPeers: map[string]int{"cache": 1},
		Agent:        &supervisor.AgentInfo{State: supervisor.AgentHealthy, Version: "rf-agent test, protocol 1.0", LastHeartbeat: &beat},
	}
	// stuck cannot be destroyed: its guest holds on (409).
	stuck := supervisor.Info{Name: "stuck", State: supervisor.StateStopping, Spec: supervisor.Spec{Name: "stuck", Memory: 2 << 20, Kernel: "/k"}}
	return &cliBackend{subos: map[string]supervisor.Info{"web": web, "stuck": stuck}}
}

func notFound(what string) error { return fmt.Errorf("%w: %q", supervisor.ErrNotFound, what) }

func (b *cliBackend) Create(_ context.Context, s supervisor.Spec) (supervisor.Info, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s.Name == "bad" {
		return supervisor.Info{}, &supervisor.ProblemsError{Problems: []ledger.Problem{{Field: "cores", Message: "core 0 is the supervisor's"}}}
	}
	if _, ok := b.subos[s.Name]; ok {
		return supervisor.Info{}, fmt.Errorf("%w: %q", supervisor.ErrExists, s.Name)
	}
	i := supervisor.Info{Name: s.Name, State: supervisor.StateRunning, Spec: s, Created: time.Unix(1700000000, 0).UTC(),
		Allocation: ledger.Allocation{Name: s.Name, Cores: []int{4}, Memory: s.Memory, PageSize: s.PageSize, Pages: s.Memory / s.PageSize}}
	b.subos[s.Name] = i
	return i, nil
}

func (b *cliBackend) Destroy(_ context.Context, name string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if name == "stuck" {
		return fmt.Errorf("%w: the guest of %q does not let go", supervisor.ErrInUse, name)
	}
	if _, ok := b.subos[name]; !ok {
		return notFound(name)
	}
	delete(b.subos, name)
	return nil
}

func (b *cliBackend) List() []supervisor.Info {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []supervisor.Info
	for _, i := range b.subos {
		out = append(out, i)
	}
	slices.SortFunc(out, func(x, y supervisor.Info) int { return strings.Compare(x.Name, y.Name) })
	return out
}

func (b *cliBackend) Get(name string) (supervisor.Info, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	i, ok := b.subos[name]
	if !ok {
		return i, notFound(name)
	}
	return i, nil
}

func (b *cliBackend) Events(since uint64, limit int) ([]store.Event, error) {
	if since > 0 {
		return nil, nil // nothing newer: JSON null, which rfm prints as []
	}
	return []store.Event{{Seq: 1, Time: time.Unix(1700000000, 0).UTC(), Who: "uid 0 pid 1", What: "create", Name: "web", Duration: time.Millisecond}}, nil
}

func (b *cliBackend) Check(supervisor.Spec) []ledger.Problem { return nil }

func (b *cliBackend) Inventory() *partitioner.Inventory { return &partitioner.Inventory{} }

func (b *cliBackend) Message(_ context.Context, name, text string) error {
	_, err := b.Get(name)
	return err
}

func (b *cliBackend) Board() (board.Board, error) {
	return board.Board{Seq: 2, Entries: []board.Entry{{Peer: 1, State: board.StateRunning, CommCores: []int{2}, Name: "web"}}}, nil
}

func (b *cliBackend) AttachDisk(_ context.Context, name string, d supervisor.Disk) (supervisor.Disk, error) {
	if _, err := b.Get(name); err != nil {
		return d, err
	}
	d.ID = "disk2"
	return d, nil
}

func (b *cliBackend) DetachDisk(_ context.Context, name, disk string, _ time.Duration) error {
	if _, err := b.Get(name); err != nil {
		return err
	}
	switch disk {
	case "disk1":
		return nil
	case "busy":
		return fmt.Errorf("%w: %s", supervisor.ErrInUse, disk)
	}
	return fmt.Errorf("%w: %s", supervisor.ErrNoDevice, disk)
}

func (b *cliBackend) ResizeCPUs(_ context.Context, name string, n int) (supervisor.Info, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	info, ok := b.subos[name]
	if !ok {
		return supervisor.Info{}, notFound(name)
	}
	if n > 3 {
		return supervisor.Info{}, fmt.Errorf("%w: %q can have at most 3 cpus (its max_cpus, fixed when it was created)", supervisor.ErrInvalid, name)
	}
	info.Allocation.Cores = []int{2, 3, 4}[:n]
	return info, nil
}

// ResizeMemory: 512 MiB steps up to 2 GiB; asked for 1536 MiB, the guest
// stops at 1 GiB.
func (b *cliBackend) ResizeMemory(_ context.Context, name string, bytes uint64) (supervisor.Info, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	info, ok := b.subos[name]
	switch {
	case !ok:
		return supervisor.Info{}, notFound(name)
	case bytes > 2<<30:
		return supervisor.Info{}, fmt.Errorf("%w: above %q's max_memory 2 GiB (fixed when it was created)", supervisor.ErrInvalid, name)
	case bytes == 1536<<20:
		info.Allocation.Memory = 1 << 30
		return info, &supervisor.PartialError{Name: name, Requested: bytes, Memory: 1 << 30, Plugged: 512 << 20}
	}
	info.Allocation.Memory = bytes
	return info, nil
}

func (b *cliBackend) SetAutoscale(_ context.Context, name string, a *supervisor.AutoscaleSpec) (supervisor.Info, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	info, ok := b.subos[name]
	if !ok {
		return supervisor.Info{}, notFound(name)
	}
	if name != "web" {
		return supervisor.Info{}, &supervisor.ProblemsError{Problems: []ledger.Problem{{Field: "autoscale", Message: "only a latency-critical subOS autoscales; this one is batch"}}}
	}
	info.Spec.Class = ledger.LatencyCritical
	info.Spec.Autoscale = a
	return info, nil
}

func (b *cliBackend) ReportLatency(context.Context, string, time.Duration) error { return nil }

func (b *cliBackend) Lend(_ context.Context, r supervisor.LendRequest) (ledger.Loan, error) {
	if _, err := b.Get(r.From); err != nil {
		return ledger.Loan{}, err
	}
	if r.Memory > 0 {
		return ledger.Loan{ID: 2, Lender: r.From, Borrower: r.To, Kind: ledger.KindLend, Pages: r.Memory >> 21, Memory: r.Memory}, nil
	}
	return ledger.Loan{ID: 1, Lender: r.From, Borrower: r.To, Kind: ledger.KindLend, Cores: []int{3}}, nil
}

func (b *cliBackend) Return(_ context.Context, r supervisor.ReturnRequest) error {
	if r.ID > 1 {
		return fmt.Errorf("%w: %d", ledger.ErrNoLoan, r.ID)
	}
	return nil
}

func (b *cliBackend) Loans() []ledger.Loan {
	return []ledger.Loan{{ID: 1, Lender: "web", Borrower: "db", Kind: ledger.KindLend, Cores: []int{3}}}
}

func (b *cliBackend) Grant(_ context.Context, name string, g supervisor.SegmentGrant) error {
	_, err := b.Get(name)
	return err
}

func (b *cliBackend) Revoke(_ context.Context, name, segment string, _ time.Duration) error {
	if _, err := b.Get(name); err != nil {
		return err
	}
	if segment != "cache" {
		return fmt.Errorf("%w: segment %s", supervisor.ErrNoDevice, segment)
	}
	return nil
}

// serveAPI serves h on a Unix socket in a new directory and returns the
// socket's path.
func serveAPI(t *testing.T, h http.Handler) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "rfm-cli-") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "rfm.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	done := make(chan struct{})
	go func() { // owner: the test; Cleanup waits
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() { srv.Close(); <-done })
	return sock
}

// openAPIDoc loads the API document the JSON output is checked against,
// with github.com/getkin/kin-openapi: the maintained OpenAPI 3 library for
// Go (the issue names it); it resolves the document's $refs and validates
// values against its schemas.
func openAPIDoc(t *testing.T) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromFile(filepath.Join("..", "..", "rfm", "api", "openapi.json"))
	if err != nil {
		t.Fatalf("load openapi.json: %v", err)
	}
	return doc
}

// schemaRef names a schema of the API document: a response's (method,
// path, status) or a component's (component).
type schemaRef struct {
	method, path string
	status       int
	component    string // the items of an array of this component
}

func (r schemaRef) find(t *testing.T, doc *openapi3.T) *openapi3.Schema {
	t.Helper()
	if r.component != "" {
		s := doc.Components.Schemas[r.component]
		if s == nil {
			t.Fatalf("openapi.json has no schema %s", r.component)
		}
		return &openapi3.Schema{Type: &openapi3.Types{openapi3.TypeArray}, Items: s}
	}
	item := doc.Paths.Find(r.path)
	if item == nil || item.GetOperation(r.method) == nil {
		t.Fatalf("openapi.json has no %s %s", r.method, r.path)
	}
	resp := item.GetOperation(r.method).Responses.Status(r.status)
	if resp == nil || resp.Value == nil || resp.Value.Content.Get("application/json") == nil {
		t.Fatalf("openapi.json has no JSON %d response for %s %s", r.status, r.method, r.path)
	}
	return resp.Value.Content.Get("application/json").Schema.Value
}

// checkJSON validates out against schema, and that it has no key the
// schema does not declare (keys of another spelling, such as PascalCase,
// would otherwise pass).
func checkJSON(t *testing.T, schema *openapi3.Schema, out []byte) {
	t.Helper()
	var v any
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	if err := schema.VisitJSON(v); err != nil {
		t.Errorf("output does not fit the API document's schema: %v\n%s", err, out)
	}
	for _, p := range undeclared(schema, v, "") {
		t.Errorf("output key %s is not in the API document's schema", p)
	}
}

func undeclared(s *openapi3.Schema, v any, at string) []string {
	if s == nil {
		return nil
	}
	var bad []string
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			switch {
			case s.Properties[k] != nil:
				bad = append(bad, undeclared(s.Properties[k].Value, x, at+"."+k)...)
			case s.AdditionalProperties.Schema != nil:
				bad = append(bad, undeclared(s.AdditionalProperties.Schema.Value, x, at+"."+k)...)
			default:
				bad = append(bad, at+"."+k)
			}
		}
	case []any:
		if s.Items != nil {
			for i, x := range v {
				bad = append(bad, undeclared(s.Items.Value, x, fmt.Sprintf("%s[%d]", at, i))...)
			}
		}
	}
	return bad
}

// run is one run of the rfm binary.
type run struct {
	stdout, stderr string
	status         int
}

func runRFM(t *testing.T, bin string, env []string, args ...string) run {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	r := run{stdout: stdout.String(), stderr: stderr.String()}
	switch {
	case errors.As(err, &ee):
		r.status = ee.ExitCode()
	case err != nil:
		t.Fatalf("rfm %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// checkErrorText fails for the transport and Go detail no message may
// show.
func checkErrorText(t *testing.T, stderr string) {
	t.Helper()
	for _, bad := range []string{"dial unix", "*api.", "Go struct", "goroutine ", "connect: ", "supervisor.", "%!"} {
		if strings.Contains(stderr, bad) {
			t.Errorf("error text shows %q:\n%s", bad, stderr)
		}
	}
}

// Every command against the real API handler over a fake supervisor: its
// exit status, its JSON (checked against the API document) and its error
// text.
func TestCLI(t *testing.T) {
	bin := rfmBinary(t)
	doc := openAPIDoc(t)
	dir := t.TempDir()
	layoutFile := filepath.Join(dir, "bad.yaml")
	os.WriteFile(filepath.Join(dir, "vmlinux"), []byte("k"), 0o644)
	os.WriteFile(layoutFile, []byte("defaults:\n  kernel: vmlinux\nsubos:\n  - name: a\n    cores: [4095]\n    memory: 3M\n"), 0o644)
	manDir := filepath.Join(dir, "man")

	cases := []struct {
		name   string
		args   []string
		status int
		// stdout: what it must contain; schema: the JSON it must fit.
		stdout string
		schema *schemaRef
		// stderr: what it must contain; code: the JSON error's code
		// (-o json).
		stderr, code string
	}{
		{name: "no command", args: nil, status: 0, stdout: "Exit status:"},
		{name: "unknown command", args: []string{"pss"}, status: 2, stderr: `unknown command "pss": did you mean ps?`},
		{name: "unknown flag", args: []string{"ps", "--bogus"}, status: 2, stderr: "unknown flag: --bogus"},
		{name: "unknown output format", args: []string{"ps", "-o", "yaml"}, status: 2, stderr: `unknown output format "yaml": use table or json`},
		{name: "-o where nothing is printed", args: []string{"destroy", "web", "-o", "json"}, status: 2, stderr: "unknown shorthand flag: 'o'"},

		{name: "ps", args: []string{"ps"}, status: 0, stdout: "NAME"},
		{name: "ps json", args: []string{"ps", "-o", "json"}, status: 0, schema: &schemaRef{method: "GET", path: "/v1/subos", status: 200}},
		{name: "ps quiet", args: []string{"ps", "-q"}, status: 0, stdout: "stuck\nweb\n"},
		{name: "ps with an argument", args: []string{"ps", "web"}, status: 2, stderr: "usage: rfm ps"},

		{name: "inspect", args: []string{"inspect", "web"}, status: 0, schema: &schemaRef{method: "GET", path: "/v1/subos/{name}", status: 200}},
		{name: "inspect table", args: []string{"inspect", "web", "-o", "table"}, status: 0, stdout: "web"},
		{name: "inspect unknown", args: []string{"inspect", "nope"}, status: 3, stderr: `"nope"`},
		{name: "inspect unknown json", args: []string{"inspect", "nope", "-o", "json"}, status: 3, stderr: `no such subOS: \"nope\"`, code: "not_found"},
		{name: "inspect without a name", args: []string{"inspect"}, status: 2, stderr: "accepts 1 arg(s), received 0"},

		{name: "create", args: []string{"create", "db", "--cpus", "1", "--memory", "64M", "-o", "json"}, status: 0, schema: &schemaRef{method: "POST", path: "/v1/subos", status: 201}},
		{name: "create table", args: []string{"create", "db", "--memory", "64M"}, status: 0, stdout: "db"},
		{name: "create with nets", args: []string{"create", "db", "--memory", "64M", "--net", "bridge=br0,create,address=10.77.0.1/24", "--net", "tap=rf-x"}, status: 0, stdout: "db"},
		{name: "create with uplink", args: []string{"create", "db", "--memory", "64M", "--net", "user,host-loopback", "--publish", "8080:80"}, status: 0, stdout: "db"},
		{name: "create net vhost off", args: []string{"create", "db", "--memory", "64M", "--net", "bridge=br0,vhost=off"}, status: 0, stdout: "db"},
		{name: "create net bad vhost", args: []string{"create", "db", "--net", "bridge=br0,vhost=maybe"}, status: 2, stderr: "unknown or empty option"},
		{name: "create net ip", args: []string{"create", "db", "--memory", "64M", "--net", "bridge=br0,ip=10.77.0.2/24"}, status: 0, stdout: "db"},
		{name: "create net bad ip", args: []string{"create", "db", "--net", "bridge=br0,ip=10.77.0.2"}, status: 2, stderr: "want an IPv4 address with its prefix length"},
		{name: "create uplink with ip", args: []string{"create", "db", "--net", "user,ip=10.0.2.9/24"}, status: 2, stderr: "ip is for a NIC on a TAP"},
		{name: "create uplink with vhost", args: []string{"create", "db", "--net", "user,vhost=on"}, status: 2, stderr: "vhost is for a NIC on a TAP"},
		{name: "create bad net", args: []string{"create", "db", "--net", "bridge=br0,colour=red"}, status: 2, stderr: "unknown or empty option"},
		{name: "create net without bridge or tap", args: []string{"create", "db", "--net", "mac=02:00:00:00:00:01"}, status: 2, stderr: "give user, bridge=NAME, tap=NAME or loop=NAME"},
		{name: "create taken", args: []string{"create", "web"}, status: 4, stderr: `"web"`},
		{name: "create taken json", args: []string{"create", "web", "-o", "json"}, status: 4, code: "conflict"},
		{name: "create refused", args: []string{"create", "bad", "-o", "json"}, status: 1, stderr: "core 0 is the supervisor's", code: "failed"},
		{name: "create bad memory", args: []string{"create", "db", "--memory", "lots"}, status: 2, stderr: `--memory: invalid size "lots"`},
		{name: "create bad disk", args: []string{"create", "db", "--disk", "x,rw"}, status: 2, stderr: "--disk"},
		{name: "create bad segment", args: []string{"create", "db", "--segment", "s,big"}, status: 2, stderr: `unknown option "big"`},

		{name: "destroy", args: []string{"destroy", "web"}, status: 0, stdout: "destroyed web"},
		{name: "destroy unknown", args: []string{"destroy", "nope"}, status: 3, stderr: `"nope"`},
		{name: "destroy busy", args: []string{"destroy", "stuck"}, status: 4, stderr: "destroy stuck"},
		{name: "destroy all", args: []string{"destroy", "--all"}, status: 1, stdout: "destroyed web", stderr: "1 of 2 subOSes not destroyed"},
		{name: "destroy nothing", args: []string{"destroy"}, status: 2, stderr: "or give --all"},
		{name: "destroy all and names", args: []string{"destroy", "--all", "web"}, status: 2, stderr: "give no names"},

		{name: "logs", args: []string{"logs", "web"}, status: 0, stdout: "web booted"},
		{name: "logs unknown", args: []string{"logs", "nope"}, status: 3, stderr: `"nope"`},
		{name: "logs bad tail", args: []string{"logs", "web", "--tail", "-1"}, status: 2, stderr: "--tail"},

		{name: "events", args: []string{"events"}, status: 0, stdout: "create"},
		{name: "events json", args: []string{"events", "-o", "json"}, status: 0, schema: &schemaRef{method: "GET", path: "/v1/events", status: 200}},
		{name: "events none", args: []string{"events", "--since", "5", "-o", "json"}, status: 0, stdout: "[]\n"},

		{name: "version", args: []string{"version"}, status: 0, stdout: "Server:\n Version:"},
		{name: "version json", args: []string{"version", "-o", "json"}, status: 0, stdout: `"client":`},
		{name: "info", args: []string{"info"}, status: 0, stdout: "Cores:"},
		{name: "info json", args: []string{"info", "-o", "json"}, status: 0, schema: &schemaRef{method: "GET", path: "/v1/inventory", status: 200}},

		{name: "board", args: []string{"board"}, status: 0, stdout: "web"},
		{name: "board json", args: []string{"board", "-o", "json"}, status: 0, schema: &schemaRef{method: "GET", path: "/v1/board", status: 200}},

		{name: "message", args: []string{"message", "web", "hello", "there"}, status: 0},
		{name: "message unknown", args: []string{"message", "nope", "hello"}, status: 3, stderr: `"nope"`},
		{name: "message without text", args: []string{"message", "web"}, status: 2, stderr: "requires at least 2 arg(s)"},

		{name: "attach", args: []string{"attach", "web", "--disk", "/images/data.img", "-o", "json"}, status: 0, schema: &schemaRef{method: "POST", path: "/v1/subos/{name}/disks", status: 201}},
		{name: "attach unknown", args: []string{"attach", "nope", "--disk", "/images/data.img"}, status: 3, stderr: `"nope"`},
		{name: "attach without disk", args: []string{"attach", "web"}, status: 2, stderr: "--disk is required"},
		{name: "detach", args: []string{"detach", "web", "disk1"}, status: 0},
		{name: "detach busy", args: []string{"detach", "web", "busy"}, status: 4, stderr: "busy"},
		{name: "detach unknown disk", args: []string{"detach", "web", "disk9"}, status: 3, stderr: "disk9"},

		{name: "share", args: []string{"share", "web", "--share", "/srv/docs:docs,ro", "-o", "json"}, status: 0, schema: &schemaRef{method: "POST", path: "/v1/subos/{name}/shares", status: 201}},
		{name: "share table", args: []string{"share", "web", "--share", "/srv/docs:docs,ro"}, status: 0, stdout: "/srv/docs  ro"},
		{name: "share unknown", args: []string{"share", "nope", "--share", "/srv:srv"}, status: 3, stderr: `"nope"`},
		{name: "share without share", args: []string{"share", "web"}, status: 2, stderr: "--share is required"},
		{name: "share bad", args: []string{"share", "web", "--share", "/srv"}, status: 2, stderr: "want /host/dir:TAG"},
		{name: "unshare", args: []string{"unshare", "web", "docs"}, status: 0},
		{name: "unshare busy", args: []string{"unshare", "web", "busy"}, status: 4, stderr: "mounted"},
		{name: "create with shares", args: []string{"create", "db", "--memory", "64M", "--share", "/srv/a:a", "--share", "/srv/b:b,ro"}, status: 0, stdout: "db"},
		{name: "create bad share", args: []string{"create", "db", "--share", "/srv/a:a,rw"}, status: 2, stderr: `unknown option "rw"`},

		{name: "grant", args: []string{"grant", "web", "--segment", "cache,size=4K"}, status: 0},
		{name: "grant unknown", args: []string{"grant", "nope", "--segment", "cache"}, status: 3, stderr: `"nope"`},
		{name: "grant without segment", args: []string{"grant", "web"}, status: 2, stderr: "--segment is required"},
		{name: "revoke", args: []string{"revoke", "web", "cache"}, status: 0},
		{name: "revoke unknown segment", args: []string{"revoke", "web", "other"}, status: 3, stderr: "other"},

		{name: "exec", args: []string{"exec", "web", "--", "sh", "-c", "echo hi; exit 3"}, status: 3, stdout: "sh -c echo hi; exit 3\n"},
		{name: "exec zero", args: []string{"exec", "web", "--", "true"}, status: 0, stdout: "true\n"},
		{name: "exec killed", args: []string{"exec", "web", "--", "killed"}, status: 137},
		{name: "exec cannot run", args: []string{"exec", "web", "--", "nosuch"}, status: 127, stderr: `cannot run "nosuch"`},
		{name: "exec no agent", args: []string{"exec", "stuck", "--", "true"}, status: 4, stderr: "no agent"},
		{name: "exec unknown", args: []string{"exec", "nope", "--", "true"}, status: 3, stderr: `"nope"`},
		{name: "exec without command", args: []string{"exec", "web"}, status: 2, stderr: "no command"},
		{name: "exec without command after --", args: []string{"exec", "web", "--"}, status: 2, stderr: "no command"},
		{name: "exec two names", args: []string{"exec", "web", "db", "--", "true"}, status: 2, stderr: "one subOS name"},
		{name: "exec bad env", args: []string{"exec", "-e", "X", "web", "--", "true"}, status: 2, stderr: "NAME=VALUE"},
		{name: "stats", args: []string{"stats", "web"}, status: 0, stdout: "MEMORY"},
		{name: "stats host", args: []string{"stats", "web"}, status: 0, stdout: "vCPUs 12.50s, VMM back ends 0.75s, other back ends 0.25s"},
		{name: "stats json", args: []string{"stats", "web", "-o", "json"}, status: 0, schema: &schemaRef{method: "GET", path: "/v1/subos/{name}/stats", status: 200}},
		{name: "resize", args: []string{"resize", "web", "--cpus", "3"}, status: 0, stdout: "2-4"},
		{name: "resize json", args: []string{"resize", "web", "--cpus", "1", "-o", "json"}, status: 0, schema: &schemaRef{method: "POST", path: "/v1/subos/{name}/resize", status: 200}},
		{name: "resize without --cpus", args: []string{"resize", "web"}, status: 2, stderr: "--cpus or --memory is required"},
		{name: "resize memory", args: []string{"resize", "web", "--memory", "1G"}, status: 0, stdout: "web"},
		{name: "resize cpus and memory json", args: []string{"resize", "web", "--cpus", "2", "--memory", "512M", "-o", "json"}, status: 0, schema: &schemaRef{method: "POST", path: "/v1/subos/{name}/resize", status: 200}},
		{name: "resize memory partial", args: []string{"resize", "web", "--memory", "1536M"}, status: 4, stderr: "asked for 1536M of memory, the guest reached 1G (512M of it hotplugged)"},
		{name: "resize memory beyond max", args: []string{"resize", "web", "--memory", "4G"}, status: 1, stderr: "max_memory"},
		{name: "resize memory bad size", args: []string{"resize", "web", "--memory", "lots"}, status: 2, stderr: "--memory"},
		{name: "resize to 0", args: []string{"resize", "web", "--cpus", "0"}, status: 2, stderr: "at least one core"},
		{name: "resize beyond max", args: []string{"resize", "web", "--cpus", "5"}, status: 1, stderr: "max_cpus"},
		{name: "resize unknown", args: []string{"resize", "nope", "--cpus", "1"}, status: 3, stderr: `"nope"`},
		{name: "autoscale", args: []string{"autoscale", "web", "--lower", "5ms", "--upper", "20ms"}, status: 0, stdout: "web"},
		{name: "autoscale json", args: []string{"autoscale", "web", "--lower", "5ms", "--upper", "20ms", "--window", "10s", "-o", "json"}, status: 0, stdout: `"upper": "20ms"`, schema: &schemaRef{method: "PUT", path: "/v1/subos/{name}/autoscale", status: 200}},
		{name: "autoscale off", args: []string{"autoscale", "web", "--off", "-o", "json"}, status: 0, schema: &schemaRef{method: "DELETE", path: "/v1/subos/{name}/autoscale", status: 200}},
		{name: "autoscale lt >= ut", args: []string{"autoscale", "web", "--lower", "20ms", "--upper", "5ms"}, status: 2, stderr: "must be below --upper"},
		{name: "autoscale without thresholds", args: []string{"autoscale", "web", "--lower", "5ms"}, status: 2, stderr: "--lower and --upper are required"},
		{name: "autoscale off with thresholds", args: []string{"autoscale", "web", "--off", "--upper", "5ms"}, status: 2, stderr: "--off takes no --upper"},
		{name: "autoscale batch", args: []string{"autoscale", "stuck", "--lower", "5ms", "--upper", "20ms"}, status: 1, stderr: "only a latency-critical subOS autoscales"},
		{name: "autoscale unknown", args: []string{"autoscale", "nope", "--lower", "5ms", "--upper", "20ms"}, status: 3, stderr: `"nope"`},
		{name: "lend", args: []string{"lend", "web", "db", "--cpus", "1"}, status: 0, stdout: "LENDER"},
		{name: "lend json", args: []string{"lend", "web", "db", "--cpus", "1", "-o", "json"}, status: 0, schema: &schemaRef{method: "POST", path: "/v1/loans", status: 201}},
		{name: "lend without --cpus", args: []string{"lend", "web", "db"}, status: 2, stderr: "--cpus or --memory is required"},
		{name: "lend memory", args: []string{"lend", "web", "db", "--memory", "256M"}, status: 0, stdout: "256M"},
		{name: "lend memory json", args: []string{"lend", "web", "db", "--memory", "256M", "-o", "json"}, status: 0, schema: &schemaRef{method: "POST", path: "/v1/loans", status: 201}},
		{name: "lend bad memory", args: []string{"lend", "web", "db", "--memory", "0"}, status: 2, stderr: "--memory"},
		{name: "return memory", args: []string{"return", "web", "db", "--memory", "128M"}, status: 0},
		{name: "return", args: []string{"return", "1"}, status: 0},
		{name: "return by names", args: []string{"return", "web", "db", "--cpus", "1"}, status: 0},
		{name: "return no loan id", args: []string{"return", "x"}, status: 2, stderr: "no loan id"},
		{name: "return unknown loan", args: []string{"return", "9"}, status: 3, stderr: "no such loan"},
		{name: "loans", args: []string{"loans"}, status: 0, stdout: "BORROWER"},
		{name: "loans json", args: []string{"loans", "-o", "json"}, status: 0, schema: &schemaRef{method: "GET", path: "/v1/loans", status: 200}},
		{name: "stats no agent", args: []string{"stats", "stuck"}, status: 4, stderr: "no report"},
		{name: "stats unknown", args: []string{"stats", "nope"}, status: 3, stderr: `"nope"`},

		{name: "console unknown", args: []string{"console", "nope"}, status: 3, stderr: `"nope"`},

		{name: "check json", args: []string{"check", layoutFile, "-o", "json"}, status: 1, stdout: `"subos": "a"`, schema: &schemaRef{component: "LayoutProblem"}},
		{name: "check missing file", args: []string{"check", filepath.Join(dir, "none.yaml")}, status: 1, stderr: "none.yaml"},
		{name: "check without file", args: []string{"check"}, status: 2, stderr: "usage: rfm check"},

		{name: "serve with an argument", args: []string{"serve", "now"}, status: 2, stderr: `unknown command "now"`},
		{name: "serve metrics without a port", args: []string{"serve", "--metrics", "9464"}, status: 2, stderr: `--metrics: "9464" is not HOST:PORT`},
		{name: "serve metrics port not a number", args: []string{"serve", "--metrics", "127.0.0.1:http"}, status: 2, stderr: "the port must be a number"},
		{name: "run with two layouts", args: []string{"run", "a.yaml", "b.yaml"}, status: 2, stderr: "accepts at most 1 arg(s)"},
		{name: "vmm bad cores", args: []string{"vmm", "--kernel", "/k", "--cores", "0-x", "--console", "none"}, status: 2, stderr: "--cores: invalid CPU list"},
		{name: "gen-man", args: []string{"gen-man", manDir}, status: 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sock := serveAPI(t, api.Handler(newCLIBackend(t)))
			r := runRFM(t, bin, []string{"RFM_SOCKET=" + sock}, c.args...)
			if r.status != c.status {
				t.Errorf("exit status %d, want %d\nstdout:\n%s\nstderr:\n%s", r.status, c.status, r.stdout, r.stderr)
			}
			if !strings.Contains(r.stdout, c.stdout) {
				t.Errorf("stdout lacks %q:\n%s", c.stdout, r.stdout)
			}
			if !strings.Contains(r.stderr, c.stderr) {
				t.Errorf("stderr lacks %q:\n%s", c.stderr, r.stderr)
			}
			if c.schema != nil {
				checkJSON(t, c.schema.find(t, doc), []byte(r.stdout))
			}
			if c.status == 0 && r.stderr != "" {
				t.Errorf("stderr of a success:\n%s", r.stderr)
			}
			if c.code != "" {
				var e struct{ Error, Code string }
				if err := json.Unmarshal([]byte(r.stderr), &e); err != nil || e.Code != c.code || e.Error == "" {
					t.Errorf("want a JSON error with code %q on stderr, got (%v):\n%s", c.code, err, r.stderr)
				}
			}
			checkErrorText(t, r.stderr)
		})
	}
	if _, err := os.Stat(filepath.Join(manDir, "rfm-create.1")); err != nil {
		t.Errorf("gen-man wrote no page for rfm create: %v", err)
	}
}

// rfm serve takes its --metrics address before the supervisor starts: one
// in use is a failure (exit 1) naming it, and nothing else is done.
func TestServeMetricsAddressTaken(t *testing.T) {
	bin := rfmBinary(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := t.TempDir()
	state, run := filepath.Join(dir, "state"), filepath.Join(dir, "run")
	r := runRFM(t, bin, []string{"RFM_SOCKET=" + filepath.Join(dir, "rfm.sock")}, "serve", "--metrics", taken.Addr().String(),
		"--state-dir", state, "--run-dir", run, "--cgroup-root", dir)
	if r.status != 1 || !strings.Contains(r.stderr, "--metrics") || !strings.Contains(r.stderr, taken.Addr().String()) ||
		!strings.Contains(r.stderr, "address already in use") {
		t.Errorf("exit status %d, want 1 and the address in use named:\n%s", r.status, r.stderr)
	}
	for _, p := range []string{state, run} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s was made: the supervisor started", p)
		}
	}
}

// With no supervisor, or one rfm may not reach, or one of another build,
// rfm says which, without transport detail.
func TestCLIDaemonErrors(t *testing.T) {
	bin := rfmBinary(t)
	dir, err := os.MkdirTemp("", "rfm-cli-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })

	t.Run("no socket", func(t *testing.T) {
		sock := filepath.Join(dir, "none.sock")
		r := runRFM(t, bin, nil, "ps", "--socket", sock)
		want := "rfm: no supervisor is listening on " + sock + ": start it with `rfm serve`\n"
		if r.status != 1 || r.stderr != want {
			t.Errorf("status %d, stderr %q; want 1, %q", r.status, r.stderr, want)
		}
		r = runRFM(t, bin, nil, "ps", "--socket", sock, "-o", "json")
		if r.status != 1 || !strings.Contains(r.stderr, `"code":"not_reachable"`) {
			t.Errorf("json: status %d, stderr %s", r.status, r.stderr)
		}
	})
	t.Run("stale socket", func(t *testing.T) {
		sock := filepath.Join(dir, "stale.sock")
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		ln.SetUnlinkOnClose(false)
		ln.Close() // the file stays, nobody listens: connection refused
		r := runRFM(t, bin, nil, "inspect", "web", "--socket", sock)
		if r.status != 1 || !strings.Contains(r.stderr, "no supervisor is listening on "+sock) {
			t.Errorf("status %d, stderr %q", r.status, r.stderr)
		}
		checkErrorText(t, r.stderr)
	})
	t.Run("permission", func(t *testing.T) {
		sock := serveAPI(t, api.Handler(newCLIBackend(t)))
		if err := os.Chmod(sock, 0); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "ps", "--socket", sock)
		if os.Getuid() == 0 {
			// root connects whatever the mode: run rfm as nobody, from
			// a directory nobody can read.
			exe := filepath.Join(dir, "rfm")
			copyFile(t, bin, exe)
			for _, d := range []string{dir, filepath.Dir(sock)} {
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			cmd = exec.Command(exe, "ps", "--socket", sock)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			cmd.Dir = "/"
		}
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		want := "rfm: permission denied on " + sock + ": run as root or join the rainforest group\n"
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || string(out) != want {
			t.Errorf("%v, output %q; want status 1 and %q", err, out, want)
		}
	})
	t.Run("other version", func(t *testing.T) {
		h := api.Handler(newCLIBackend(t))
		sock := serveAPI(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h.ServeHTTP(otherBuild{w}, r)
		}))
		// What works still works.
		if r := runRFM(t, bin, nil, "ps", "-q", "--socket", sock); r.status != 0 || r.stdout != "stuck\nweb\n" {
			t.Errorf("ps: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
		}
		// A failure names both builds, when this rfm knows its commit
		// (built in a git checkout); one that does not cannot tell, and
		// reports the failure as it is.
		r := runRFM(t, bin, nil, "inspect", "nope", "--socket", sock, "-o", "json")
		v := runRFM(t, bin, nil, "version", "--socket", sock, "-o", "json")
		var rep struct {
			Client struct {
				Commit string `json:"commit"`
			} `json:"client"`
		}
		if err := json.Unmarshal([]byte(v.stdout), &rep); err != nil || rep.Client.Commit == "" {
			t.Fatalf("version: %v\n%s", err, v.stdout)
		}
		if rep.Client.Commit == "devel" {
			if r.status != 3 || !strings.Contains(r.stderr, `"code":"not_found"`) {
				t.Errorf("an rfm without a commit: status %d, stderr %s", r.status, r.stderr)
			}
		} else if r.status != 1 || !strings.Contains(r.stderr, "the supervisor runs rainforest v9.9.9+0123456789ab but this rfm is ") ||
			!strings.Contains(r.stderr, `"code":"version_mismatch"`) {
			t.Errorf("status %d, stderr %s", r.status, r.stderr)
		}
	})
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// The shell completes subOS names from the supervisor, the disks and
// segments of the one named, and flag values; with no supervisor, nothing
// and no error.
func TestCLICompletion(t *testing.T) {
	bin := rfmBinary(t)
	sock := serveAPI(t, api.Handler(newCLIBackend(t)))
	none := filepath.Join(t.TempDir(), "none.sock")
	cases := []struct {
		socket string
		args   []string
		want   []string
	}{
		{sock, []string{"inspect", ""}, []string{"stuck", "web"}},
		{sock, []string{"inspect", "w"}, []string{"web"}},
		{sock, []string{"destroy", "web", ""}, []string{"stuck"}},
		{sock, []string{"detach", "web", ""}, []string{"disk1"}},
		{sock, []string{"revoke", "web", ""}, []string{"cache"}},
		{sock, []string{"ps", "-o", ""}, []string{"table", "json"}},
		{sock, []string{"create", "x", "--page-size", ""}, []string{"2M", "1G"}},
		{sock, []string{"vmm", "--page-size", ""}, []string{"2M", "1G", "4k"}},
		{none, []string{"inspect", ""}, nil},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			r := runRFM(t, bin, []string{"RFM_SOCKET=" + c.socket}, append([]string{"__completeNoDesc"}, c.args...)...)
			var got []string
			for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
				if l != "" && !strings.HasPrefix(l, ":") {
					got = append(got, l)
				}
			}
			if r.status != 0 || !slices.Equal(got, c.want) {
				t.Errorf("status %d, completions %q, want %q\nstderr:\n%s", r.status, got, c.want, r.stderr)
			}
		})
	}
}

// Every command's help shows examples, and rfm vmm's internal flags are
// hidden.
func TestCommandsHaveExamples(t *testing.T) {
	root := rootCommand(&globalFlags{})
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Example == "" && c.Runnable() {
			t.Errorf("%s has no examples", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	vmm, _, err := root.Find([]string{"vmm"})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"control-fd", "ready-fd", "wait-fd", "cpus"} {
		if f := vmm.Flags().Lookup(n); f == nil || !f.Hidden {
			t.Errorf("rfm vmm --%s is not hidden", n)
		}
	}
}

// otherBuild is a response naming a supervisor build of another commit.
type otherBuild struct{ http.ResponseWriter }

func (o otherBuild) WriteHeader(code int) {
	o.Header().Set(api.VersionHeader, "v9.9.9+0123456789ab")
	o.ResponseWriter.WriteHeader(code)
}

func (o otherBuild) Write(b []byte) (int, error) {
	o.Header().Set(api.VersionHeader, "v9.9.9+0123456789ab")
	return o.ResponseWriter.Write(b)
}

func TestParseNICIP(t *testing.T) {
	n, err := parseNIC("bridge=br0,ip=10.77.0.2/24")
	if err != nil || n.Bridge != "br0" || n.IP != "10.77.0.2/24" {
		t.Errorf("parseNIC with ip: %+v, %v", n, err)
	}
	for _, bad := range []string{"bridge=br0,ip=", "bridge=br0,ip=fd00::2/64", "loop=l,ip=10.99.0.2/24"} {
		if _, err := parseNIC(bad); err == nil {
			t.Errorf("parseNIC(%q) accepted", bad)
		}
	}
}
