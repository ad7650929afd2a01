package supervisor

import (
	"context"
	"strings"
	"testing"
)

const testKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGbLd1ZQ3h0RrWmYt6xVb2nJvQkq7rS8p1yPn4tUv0aB"

func TestParseSSHKeys(t *testing.T) {
	keys, err := ParseSSHKeys("# mine\n\n" + testKey + " me@host\necdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY=\n")
	if err != nil || len(keys) != 2 || keys[0] != testKey {
		t.Fatalf("keys %q, %v", keys, err)
	}
	for in, says := range map[string]string{
		"":                                       "no public key",
		"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ": "RSA",
		"ssh-ed25519 AAAA$(reboot)":              "not a public key",
		"ssh-ed25519":                            "not a public key",
	} {
		if _, err := ParseSSHKeys(in); err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("ParseSSHKeys(%q) = %v, want %q", in, err, says)
		}
	}
}

// TestSSHKeysCmdline: a spec's keys reach the guest's command line as
// one word each; a bad key is refused at check and create.
func TestSSHKeysCmdline(t *testing.T) {
	act, l := &fakeActuator{}, &fakeLauncher{}
	s := newTestSupervisor(t, t.TempDir(), act, l)
	defer s.Close()
	spec := testSpec(t, "deb", 1)
	spec.SSHKeys = []string{testKey}
	info, err := s.Create(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if want := "rf.ssh_key=" + strings.Replace(testKey, " ", ":", 1); !strings.Contains(l.proc(info.PID).doc.Append, want) {
		t.Errorf("command line %q lacks %q", l.proc(info.PID).doc.Append, want)
	}
	bad := testSpec(t, "bad", 1)
	bad.SSHKeys = []string{"ssh-ed25519 x y"}
	if _, err := s.Create(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "ssh_keys[0]") {
		t.Errorf("create with a bad key: %v", err)
	}
	if len(s.Check(bad)) == 0 {
		t.Error("check passed a bad key")
	}
}

// TestPublicKey: the one key check, for a user's keys and a guest's host
// key (RSA allowed there), comments dropped, guest garbage refused.
func TestPublicKey(t *testing.T) {
	if k, err := PublicKey(testKey + " root@deb\n"); err != nil || k != testKey {
		t.Errorf("PublicKey = %q, %v", k, err)
	}
	if _, err := PublicKey("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ"); err != nil {
		t.Errorf("an RSA host key: %v", err)
	}
	for _, bad := range []string{"", "\x1b]0;pwned\x07", "ssh-ed25519 AAAA", "ssh-dss AAAAB3NzaC1kc3MAAACBAP", "ssh-ed25519 " + strings.Repeat("A", 3000)} {
		if _, err := PublicKey(bad); err == nil {
			t.Errorf("PublicKey(%.30q) accepted", bad)
		}
	}
}
