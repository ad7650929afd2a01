package shquote

import (
	"os/exec"
	"testing"
)

func TestQuote(t *testing.T) {
	for in, want := range map[string]string{"/bin/rfm": "/bin/rfm", "a b": "'a b'", "it's": `'it'\''s'`, "": "''"} {
		if got := Quote(in); got != want {
			t.Errorf("Quote(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestJoinRoundTrip(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	args := []string{"plain", "console=ttyS0 quiet", "it's", "", "a\"b$c`d\\", "-M", "microvm,acpi=on"}
	out, err := exec.Command("sh", "-c", "for a in "+Join(args)+`; do printf '<%s>' "$a"; done`).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := ""
	for _, a := range args {
		want += "<" + a + ">"
	}
	if string(out) != want {
		t.Fatalf("got %s, want %s", out, want)
	}
}
