package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestUsageErrors runs the built command with bad arguments: each exits
// 2 with one line that names the problem, before building anything.
func TestUsageErrors(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the command")
	}
	bin := filepath.Join(t.TempDir(), "rfimage")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out := t.TempDir()
	private := filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(private, []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--image", "ubuntu"}, `--image "ubuntu": want default or debian`},
		{[]string{"--ssh-key", "k.pub"}, "--ssh-key needs --image debian"},
		{[]string{"--mirror", "http://m/debian"}, "--mirror needs --image debian"},
		{[]string{"--image", "debian", "--size", "big"}, "--size:"},
		{[]string{"extra"}, `unexpected argument "extra"`},
		{[]string{"--image", "debian", "--ssh-key", filepath.Join(out, "missing.pub")}, "--ssh-key: open"},
		{[]string{"--image", "debian", "--ssh-key", private}, "private key"},
		{[]string{"--no-such-flag"}, "flag provided but not defined"},
	} {
		cmd := exec.Command(bin, append([]string{"-out", out}, tc.args...)...)
		stderr, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("%q: err = %v, want exit status 2", tc.args, err)
		}
		if !strings.Contains(string(stderr), tc.want) {
			t.Errorf("%q: stderr %q lacks %q", tc.args, stderr, tc.want)
		}
	}
	if ents, _ := os.ReadDir(out); len(ents) != 0 {
		t.Errorf("usage errors built something: %v", ents)
	}
}
