package share

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"rainforest/vmm/virtio/fs"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Spec
		err  string
	}{
		{in: "/srv/data:data", want: Spec{Path: "/srv/data", Tag: "data"}},
		{in: "/srv/data:data,ro", want: Spec{Path: "/srv/data", Tag: "data", ReadOnly: true}},
		{in: "/:all,ro,root", want: Spec{Path: "/", Tag: "all", ReadOnly: true, AllowRoot: true}},
		{in: "rel/dir:x", want: Spec{Path: "rel/dir", Tag: "x"}},
		{in: "/a:b:c", want: Spec{Path: "/a:b", Tag: "c"}},
		{in: "/srv/data", err: "want /host/dir:TAG"},
		{in: ":tag", err: "want /host/dir:TAG"},
		{in: "/srv/data:", err: "no tag"},
		{in: "/srv/data:,ro", err: "no tag"},
		{in: "/srv/data:d,rw", err: `unknown option "rw"`},
	} {
		got, err := Parse(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) || !errors.Is(err, ErrSyntax) {
				t.Errorf("Parse(%q) = %+v, %v; want an error saying %q", c.in, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
		if err == nil && c.in[0] == '/' && got.String() != c.in {
			t.Errorf("Parse(%q).String() = %q", c.in, got.String())
		}
	}
}

func TestCheckTag(t *testing.T) {
	for _, ok := range []string{"data", "a", "my-share_1.x", strings.Repeat("t", fs.TagSize)} {
		if err := CheckTag(ok); err != nil {
			t.Errorf("CheckTag(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "..", ".", "a/b", "a b", "a,b", "é", strings.Repeat("t", fs.TagSize+1)} {
		if err := CheckTag(bad); !errors.Is(err, fs.ErrTag) {
			t.Errorf("CheckTag(%q) = %v, want an fs.ErrTag error", bad, err)
		}
	}
}

func TestProblems(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "root-link")
	if err := os.Symlink("/", link); err != nil {
		t.Fatal(err)
	}
	if probs := Problems("shares", []Spec{{Path: dir, Tag: "a"}, {Path: "/", Tag: "b", AllowRoot: true, ReadOnly: true}}); len(probs) != 0 {
		t.Fatalf("good shares: %v", probs)
	}
	probs := Problems("shares", []Spec{
		{Path: filepath.Join(dir, "missing"), Tag: "a"},
		{Path: file, Tag: "b"},
		{Path: "relative", Tag: "c"},
		{Path: "/", Tag: "d"},
		{Path: link, Tag: "e"},
		{Path: dir, Tag: "a"},
		{Path: dir, Tag: strings.Repeat("x", fs.TagSize+1)},
		{Path: dir, Tag: "f", ID: "x"},
		{Path: dir, Tag: "g", ID: "x"},
		{Path: "", Tag: "h", ID: "bad id"},
	})
	want := map[string]string{
		"shares[0].path": "no such file",
		"shares[1].path": "not a directory",
		"shares[2].path": "not an absolute path",
		"shares[3].path": "allow_root",
		"shares[4].path": "allow_root",
		"shares[5].tag":  "also shares[0]'s",
		"shares[6].tag":  "1 to 36 bytes",
		"shares[8].id":   "also shares[7]'s",
		"shares[9].path": "required",
		"shares[9].id":   "1 to 32",
		"shares":         "10 shares, at most 8",
	}
	got := map[string]string{}
	for _, p := range probs {
		got[p.Field] = p.Message
	}
	for f, msg := range want {
		if !strings.Contains(got[f], msg) {
			t.Errorf("%s: %q, want it to say %q", f, got[f], msg)
		}
	}
	if len(got) != len(want) {
		t.Errorf("problems %v, want only %v", got, want)
	}
	var many []Spec
	for range 9 {
		many = append(many, Spec{Path: dir, Tag: "t"})
	}
	if p := Problems("shares", many); len(p) == 0 || p[0].Field != "shares" {
		t.Errorf("9 shares: %v", p)
	}
}

func TestWithIDs(t *testing.T) {
	got := WithIDs([]Spec{{Tag: "a"}, {Tag: "b", ID: "share0"}, {Tag: "c"}})
	var ids []string
	for _, s := range got {
		ids = append(ids, s.ID)
	}
	if !reflect.DeepEqual(ids, []string{"share1", "share0", "share2"}) {
		t.Fatalf("ids %v", ids)
	}
}

func TestContains(t *testing.T) {
	for _, c := range []struct {
		dir, path string
		want      bool
	}{
		{"/", "/var", true}, {"/var", "/var", true}, {"/var", "/var/lib/rf", true}, {"/var", "/variable", false}, {"/var/lib", "/var", false},
	} {
		if got := Contains(c.dir, c.path); got != c.want {
			t.Errorf("Contains(%q, %q) = %v", c.dir, c.path, got)
		}
	}
}

func TestRootIsRootfs(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		table string
		want  bool
	}{
		{"rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\n", true},
		{"rootfs / rootfs rw 0 0\n/dev/vda1 / ext4 rw 0 0\n", false},
		{"/dev/vda1 / ext4 rw 0 0\n", false},
	} {
		p := filepath.Join(dir, "mounts")
		if err := os.WriteFile(p, []byte(c.table), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := rootIsRootfs(p); got != c.want {
			t.Errorf("%q: %v", c.table, got)
		}
	}
}

func TestArgs(t *testing.T) {
	c := Binary{Path: "/usr/lib/qemu/virtiofsd"}
	if got := strings.Join(c.Args(4, "/srv", true, SandboxChroot), " "); got != "-f --fd=4 -o source=/srv -o sandbox=chroot -o cache=auto --thread-pool-size=0" {
		t.Errorf("C virtiofsd: %s", got)
	}
	r := Binary{Path: "/usr/libexec/virtiofsd", Rust: true, ReadOnlyFlag: true}
	if got := strings.Join(r.Args(4, "/srv", true, SandboxNamespace), " "); got != "--fd=4 --shared-dir=/srv --sandbox=namespace --cache=auto --thread-pool-size=0 --readonly" {
		t.Errorf("Rust virtiofsd: %s", got)
	}
	if got := strings.Join(c.SocketArgs("/run/v.sock", "/srv", false, SandboxChroot), " "); got != "-f --socket-path=/run/v.sock -o source=/srv -o sandbox=chroot -o cache=auto --thread-pool-size=0" {
		t.Errorf("C virtiofsd on a socket: %s", got)
	}
	if got := strings.Join(r.SocketArgs("/run/v.sock", "/srv", false, SandboxChroot), " "); got != "--socket-path=/run/v.sock --shared-dir=/srv --sandbox=chroot --cache=auto --thread-pool-size=0" {
		t.Errorf("Rust virtiofsd on a socket: %s", got)
	}
}

func TestSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	ln, conn, err := Socket(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	defer conn.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("the socket's file stays: %v", err)
	}
	// What virtiofsd does with its --fd: accept the one connection.
	nfd, _, err := unix.Accept(int(ln.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	peer := os.NewFile(uintptr(nfd), "peer")
	defer peer.Close()
	if _, err := conn.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 2)
	if _, err := peer.Read(b); err != nil || string(b) != "hi" {
		t.Fatalf("read %q, %v", b, err)
	}
	if _, _, err := Socket(filepath.Join(t.TempDir(), strings.Repeat("x", 120))); err == nil {
		t.Error("a socket path too long for sun_path was taken")
	}
}

func TestReadOnlyView(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("bind mounts need root")
	}
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "view")
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ReadOnlyView(src, dst); err != nil {
		t.Skipf("no bind mounts here: %v", err)
	}
	defer RemoveView(dst)
	if b, err := os.ReadFile(filepath.Join(dst, "f")); err != nil || string(b) != "x" {
		t.Fatalf("read through the view: %q, %v", b, err)
	}
	err := os.WriteFile(filepath.Join(dst, "g"), nil, 0o644)
	if !errors.Is(err, unix.EROFS) {
		t.Fatalf("write through the view: %v, want EROFS", err)
	}
	if err := os.WriteFile(filepath.Join(src, "g"), nil, 0o644); err != nil {
		t.Fatalf("the source itself stays writable: %v", err)
	}
	if err := RemoveView(dst); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Fatalf("view directory stays: %v", err)
	}
	if err := RemoveView(dst); err != nil {
		t.Fatalf("removing a view twice: %v", err)
	}
	if _, err := os.Stat(filepath.Join(src, "f")); err != nil {
		t.Fatalf("the source lost its file: %v", err)
	}
}
