package untrusted

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// Forged text stays visibly quoted guest text on one line.
func TestQuote(t *testing.T) {
	for in, want := range map[string]string{
		"hello":                   `"hello"`,
		"ok\ndestroy by uid 0":    `"ok\ndestroy by uid 0"`,
		"\x1b[2J\x1b]0;title\x07": `"\x1b[2J\x1b]0;title\a"`,
		"bad \xff\xfe utf8":       `"bad \xff\xfe utf8"`,
		`quote " and \ backslash`: `"quote \" and \\ backslash"`,
		"bidi \u202eoverride":     `"bidi \u202eoverride"`,
		"carriage\rreturn":        `"carriage\rreturn"`,
		"ünïcödé stays":           `"ünïcödé stays"`,
	} {
		got := Quote([]byte(in), 200)
		if got != want {
			t.Errorf("Quote(%q) = %s, want %s", in, got, want)
		}
		if strings.ContainsAny(got, "\n\r\x1b") {
			t.Errorf("Quote(%q) has a raw control character", in)
		}
		if back, err := strconv.Unquote(got); err != nil || back != in {
			t.Errorf("Quote(%q) does not unquote back: %q, %v", in, back, err)
		}
	}
}

// A 10 MB line is cut on a rune boundary, marked, and bounded.
func TestQuoteBounds(t *testing.T) {
	huge := bytes.Repeat([]byte("é"), 5<<20) // 10 MB
	got := Quote(huge, 201)
	if len(got) > 4*201+5 || !strings.HasSuffix(got, `"`+Ellipsis) {
		t.Fatalf("%d bytes: %.40s...", len(got), got)
	}
	body, err := strconv.Unquote(strings.TrimSuffix(got, Ellipsis))
	if err != nil || !utf8.ValidString(body) || len(body) != 200 {
		t.Errorf("cut at %d bytes, valid %v, %v", len(body), utf8.ValidString(body), err)
	}
	if got := Quote(bytes.Repeat([]byte{0xff}, 1<<20), 10); got != strings.Repeat(`\xff`, 10)[0:0]+`"`+strings.Repeat(`\xff`, 10)+`"`+Ellipsis {
		t.Errorf("invalid bytes: %s", got)
	}
	if got := Quote([]byte("abc"), -1); got != `""`+Ellipsis {
		t.Errorf("negative max: %s", got)
	}
}

func TestEscapeTerminal(t *testing.T) {
	in := "login: \x1b[31mred\x1b[0m\r\nline\rover \xff \u202e\tend\\\n"
	want := `login: \x1b[31mred\x1b[0m` + "\r\n" + `line\rover \xff \u202e` + "\tend\\\\\n"
	if got := string(EscapeTerminal([]byte(in))); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}

// ReadTail reads only the tail of a huge (sparse) file.
func TestReadTailOfHugeFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big.log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("second to last\nthe end\n"), 1<<30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	counted := &countingFile{}
	counted.f, _ = os.Open(path)
	defer counted.f.Close()
	b, err := ReadTailOf(counted, 16<<10)
	if err != nil || len(b) != 16<<10 || !bytes.HasSuffix(b, []byte("the end\n")) {
		t.Fatalf("%d bytes, %v", len(b), err)
	}
	if counted.read > 16<<10 {
		t.Errorf("read %d bytes for a 16 KiB tail", counted.read)
	}
	lines := LastLines(b, 1)
	if len(lines) != 1 || string(lines[0]) != "the end" {
		t.Errorf("last line %q", lines)
	}
	if l := LastLines(b, 5); len(l) != 2 || !bytes.HasSuffix(l[0], []byte("second to last")) {
		t.Errorf("%d last lines", len(l))
	}
	small := filepath.Join(t.TempDir(), "small")
	os.WriteFile(small, []byte("x\r\n"), 0o600)
	if b, err := ReadTail(small, 1<<20); err != nil || string(b) != "x\r\n" {
		t.Errorf("small file: %q %v", b, err)
	}
	if _, err := ReadTail(filepath.Join(t.TempDir(), "none"), 10); !os.IsNotExist(err) {
		t.Errorf("missing file: %v", err)
	}
}

type countingFile struct {
	f    *os.File
	read int
}

func (c *countingFile) Read(p []byte) (int, error) {
	n, err := c.f.Read(p)
	c.read += n
	return n, err
}

func (c *countingFile) Seek(off int64, whence int) (int64, error) { return c.f.Seek(off, whence) }
