package main

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"rainforest/rfm/supervisor"
)

func TestSSHTarget(t *testing.T) {
	noGuest := func(argv ...string) ([]byte, error) { return nil, errors.New("no agent") }
	published := supervisor.Info{Name: "deb", Spec: supervisor.Spec{Nets: []supervisor.NIC{{User: true, Publish: []string{"8080:80", "2222:22"}}}}}
	if h, p, err := sshTarget(published, "", noGuest); err != nil || h != "127.0.0.1" || p != 2222 {
		t.Errorf("published 22: %s:%d, %v", h, p, err)
	}
	if h, p, err := sshTarget(published, "10.1.2.3:2200", noGuest); err != nil || h != "10.1.2.3" || p != 2200 {
		t.Errorf("--address: %s:%d, %v", h, p, err)
	}
	bridged := supervisor.Info{Name: "deb", Spec: supervisor.Spec{Nets: []supervisor.NIC{
		{User: true}, {Bridge: "br0", MAC: "02:AA:00:00:00:01"}}}}
	// The guest's report is untrusted: lines that are not "MAC ADDR/LEN"
	// of a bridge NIC are skipped.
	guest := func(argv ...string) ([]byte, error) {
		return []byte("00:00:00:00:00:00 127.0.0.1/8\n02:aa:00:00:00:00 10.0.2.15/24\n\x1b[2J junk\n02:aa:00:00:00:01 10.77.0.2/24\n"), nil
	}
	if h, p, err := sshTarget(bridged, "", guest); err != nil || h != "10.77.0.2" || p != 22 {
		t.Errorf("bridge: %s:%d, %v", h, p, err)
	}
	if _, _, err := sshTarget(bridged, "", noGuest); err == nil || !strings.Contains(err.Error(), "--address") {
		t.Errorf("bridge without an agent: %v", err)
	}
	none := supervisor.Info{Name: "deb", Spec: supervisor.Spec{Nets: []supervisor.NIC{{User: true}}}}
	if _, _, err := sshTarget(none, "", noGuest); err == nil || !strings.Contains(err.Error(), "--publish 2222:22") {
		t.Errorf("no way in: %v", err)
	}
}

func TestPinHostKeyAndArgs(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGbLd1ZQ3h0RrWmYt6xVb2nJvQkq7rS8p1yPn4tUv0aB"
	known, err := pinHostKey("deb", "127.0.0.1", 2222, func(argv ...string) ([]byte, error) {
		return []byte(key + " root@deb\n"), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(known); string(b) != "[127.0.0.1]:2222 "+key+"\n" {
		t.Errorf("known_hosts %q", b)
	}
	argv := sshArgs("root", "127.0.0.1", 2222, "/k", known, []string{"-L", "8080:localhost:80", "-N", "uname", "-a"})
	want := []string{"ssh", "-p", "2222", "-o", "UserKnownHostsFile=" + known, "-o", "StrictHostKeyChecking=yes", "-i", "/k",
		"-L", "8080:localhost:80", "-N", "root@127.0.0.1", "uname", "-a"}
	if !slices.Equal(argv, want) {
		t.Errorf("ssh argv\n%q, want\n%q", argv, want)
	}
	// A guest that answers garbage gets no pinned key: ssh asks.
	known, err = pinHostKey("deb", "127.0.0.1", 2222, func(argv ...string) ([]byte, error) { return []byte("\x1b]0;pwned\x07"), nil })
	if err == nil {
		t.Error("a garbage host key was pinned")
	}
	if argv := sshArgs("root", "h", 22, "", known, nil); !slices.Contains(argv, "StrictHostKeyChecking=accept-new") {
		t.Errorf("without a pinned key: %q", argv)
	}
}
