package vmmctl

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"

	"rainforest/vmm/config"
)

func pair(t *testing.T) (a, b *net.UnixConn) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c.ctl")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err = Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err = ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func tempFiles(t *testing.T, n int) []*os.File {
	var fs []*os.File
	for i := range n {
		f, err := os.CreateTemp(t.TempDir(), "f")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(string(rune('a' + i))); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		fs = append(fs, f)
	}
	return fs
}

func TestLaunchRoundTrip(t *testing.T) {
	a, b := pair(t)
	regions := []config.Region{{Name: "ficm", Protocol: 1, Peers: 3, OutputSize: 8192, Vectors: 1, Self: 2},
		{Name: "seg", Protocol: 2, Peers: 2, RWSize: 4096, OutputSize: 4096, Vectors: 1, Self: 0, RWReadOnly: true}}
	n, err := FileCount(regions)
	if err != nil || n != 7 {
		t.Fatalf("FileCount = %d, %v", n, err)
	}
	files := tempFiles(t, n)
	if err := Send(a, Message{Op: OpLaunch, Regions: regions}, files); err != nil {
		t.Fatal(err)
	}
	m, got, err := Recv(b)
	if err != nil {
		t.Fatal(err)
	}
	if m.Op != OpLaunch || len(m.Regions) != 2 || m.Regions[1] != regions[1] || len(got) != n {
		t.Fatalf("got %+v with %d files", m, len(got))
	}
	mem, bells, err := SplitFiles(m.Regions, got)
	if err != nil {
		t.Fatal(err)
	}
	if len(mem) != 2 || len(bells[0]) != 3 || len(bells[1]) != 2 {
		t.Fatalf("split %d %v", len(mem), bells)
	}
	// The received descriptors are the same files.
	buf := make([]byte, 1)
	if _, err := bells[1][1].ReadAt(buf, 0); err != nil || buf[0] != 'g' {
		t.Errorf("last file reads %q, %v", buf, err)
	}
	for _, f := range got {
		f.Close()
	}
}

func TestBadInput(t *testing.T) {
	for _, r := range []config.Region{
		{Peers: 2, Vectors: 1},
		{Name: "x", Peers: 0, Vectors: 1},
		{Name: "x", Peers: 2, Vectors: 0},
		{Name: "x", Peers: 2, Vectors: 1, Self: 2},
		{Name: "x", Peers: 200, Vectors: 2},
	} {
		if _, err := FileCount([]config.Region{r}); !errors.Is(err, ErrProtocol) {
			t.Errorf("%+v: %v", r, err)
		}
	}
	a, b := pair(t)
	// Fewer descriptors than the regions need: all closed, clear error.
	regions := []config.Region{{Name: "ficm", Peers: 2, Vectors: 1, Self: 1}}
	if err := Send(a, Message{Op: OpLaunch, Regions: regions}, tempFiles(t, 2)); err != nil {
		t.Fatal(err)
	}
	m, files, err := Recv(b)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := SplitFiles(m.Regions, files); !errors.Is(err, ErrProtocol) {
		t.Errorf("short files: %v", err)
	}
	// Unknown fields are refused.
	if _, err := a.Write([]byte(`{"op": "devices", "verbose": true}`)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Recv(b); !errors.Is(err, ErrProtocol) {
		t.Errorf("unknown field: %v", err)
	}
	// Garbage body.
	if _, err := a.Write([]byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Recv(b); !errors.Is(err, ErrProtocol) {
		t.Errorf("garbage: %v", err)
	}
	// Peer gone.
	a.Close()
	if _, _, err := Recv(b); err == nil {
		t.Error("receive from a closed peer succeeded")
	}
}
