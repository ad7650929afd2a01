package benchkit

import (
	"os/exec"
	"testing"
)

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{"/bin/rfm": "/bin/rfm", "a b": "'a b'", "it's": `'it'\''s'`, "": "''"} {
		if got := ShellQuote(in); got != want {
			t.Errorf("ShellQuote(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestShellJoinRoundTrip(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	args := []string{"plain", "console=ttyS0 quiet", "it's", "", "a\"b$c`d\\", "-M", "microvm,acpi=on"}
	out, err := exec.Command("sh", "-c", "for a in "+ShellJoin(args)+`; do printf '<%s>' "$a"; done`).Output()
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
