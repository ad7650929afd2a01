package images

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeKey returns an authorized_keys line for a made-up key of type typ
// whose blob names blobType.
func fakeKey(typ, blobType, comment string) string {
	blob := binary.BigEndian.AppendUint32(nil, uint32(len(blobType)))
	blob = append(blob, blobType...)
	blob = binary.BigEndian.AppendUint32(blob, 32)
	blob = append(blob, make([]byte, 32)...)
	return strings.TrimSpace(typ + " " + base64.StdEncoding.EncodeToString(blob) + " " + comment)
}

func TestParseAuthorizedKeys(t *testing.T) {
	ed := fakeKey("ssh-ed25519", "ssh-ed25519", "user@host")
	ecdsa := fakeKey("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256", "")
	got, err := ParseAuthorizedKeys([]byte("# my keys\r\n" + ed + "\r\n\r\n" + `from="10.0.0.0/8",command="echo a b" ` + ecdsa))
	if err != nil {
		t.Fatal(err)
	}
	if want := "# my keys\n" + ed + "\n\n" + `from="10.0.0.0/8",command="echo a b" ` + ecdsa + "\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	for name, in := range map[string]string{
		"empty":        "",
		"comment only": "# nothing\n\n",
		"private key":  "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
		"no type":      "AAAAC3NzaC1lZDI1NTE5AAAAIA user\n",
		"not base64":   "ssh-ed25519 !!!! user\n",
		"no key":       "ssh-ed25519\n",
		"wrong blob":   fakeKey("ssh-ed25519", "ssh-rsa", "x"),
		"short blob":   "ssh-ed25519 AAAA\n",
		"second bad":   ed + "\nnonsense\n",
		"too large":    strings.Repeat("#", maxAuthorizedKeys+1),
	} {
		if _, err := ParseAuthorizedKeys([]byte(in)); !errors.Is(err, ErrBadSSHKey) {
			t.Errorf("%s: err = %v, want ErrBadSSHKey", name, err)
		}
	}
}

// TestParseAuthorizedKeysReal parses keys that ssh-keygen made, where it
// is installed.
func TestParseAuthorizedKeysReal(t *testing.T) {
	keygen, err := exec.LookPath("ssh-keygen")
	if err != nil {
		t.Skip("no ssh-keygen")
	}
	dir := t.TempDir()
	var all []byte
	for _, typ := range []string{"ed25519", "ecdsa"} {
		key := filepath.Join(dir, typ)
		if out, err := exec.Command(keygen, "-q", "-t", typ, "-N", "", "-C", "me@host", "-f", key).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v\n%s", err, out)
		}
		pub, err := os.ReadFile(key + ".pub")
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, pub...)
		private, err := os.ReadFile(key)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseAuthorizedKeys(private); !errors.Is(err, ErrBadSSHKey) {
			t.Errorf("%s private key: err = %v", typ, err)
		}
	}
	if got, err := ParseAuthorizedKeys(all); err != nil || got != string(all) {
		t.Errorf("got %q, %v; want %q", got, err, all)
	}
}

func fileMap(files []SystemFile) map[string]SystemFile {
	m := map[string]SystemFile{}
	for _, f := range files {
		m[f.Path] = f
	}
	return m
}

func TestDebianFiles(t *testing.T) {
	files := debianFiles(debianConfig{})
	for i := 1; i < len(files); i++ {
		if files[i-1].Path >= files[i].Path {
			t.Errorf("not sorted: %s before %s", files[i-1].Path, files[i].Path)
		}
	}
	m := fileMap(files)
	if _, ok := m["/root/.ssh/authorized_keys"]; ok {
		t.Error("authorized_keys without a key")
	}
	for path, wants := range map[string][]string{
		"/etc/hostname": {DebianHostname + "\n"},
		"/etc/fstab":    {"LABEL=" + DebianLabel + "\t/\text4\t", "\t0\t1\n"},
		"/etc/systemd/system.conf.d/rainforest.conf": {"[Manager]\nDefaultDeviceTimeoutSec=5min\n"},
		// DHCP on every Ethernet NIC, sorting after the ip= file of
		// systemd-network-generator (90-<interface>.network).
		"/etc/systemd/network/99-rf-dhcp.network": {"[Match]\nName=en* eth*\n", "[Network]\nDHCP=yes\n"},
		"/etc/ssh/sshd_config.d/rainforest.conf": {"PermitRootLogin prohibit-password\n", "PasswordAuthentication no\n",
			"KbdInteractiveAuthentication no\n", "HostKey " + debianHostKey + "\n"},
		"/etc/systemd/system/rf-agent.service": {"ExecStart=" + DebianToolsDir + "/rf-agent\n", "Restart=always\n",
			"StartLimitIntervalSec=0\n", "WantedBy=multi-user.target\n"},
		"/etc/systemd/system/rf-cmdline.service": {"Before=systemd-networkd.service ssh.service network-pre.target\n",
			"ExecStart=" + DebianToolsDir + "/rf-cmdline\n", "WantedBy=sysinit.target\n"},
		"/etc/systemd/system/rf-ssh-host-keys.service": {"Before=ssh.service\n", "ConditionPathExists=!" + debianHostKey + "\n",
			"ssh-keygen -q -t ed25519 -N \"\" -C \"\" -f " + debianHostKey + "\n", "WantedBy=ssh.service\n"},
	} {
		f, ok := m[path]
		if !ok {
			t.Errorf("no %s", path)
			continue
		}
		if f.Mode != 0o644 {
			t.Errorf("%s: mode %v", path, f.Mode)
		}
		for _, w := range wants {
			if !strings.Contains(f.Data, w) {
				t.Errorf("%s lacks %q:\n%s", path, w, f.Data)
			}
		}
	}
	if l := m["/etc/systemd/network/99-default.link"]; l.Mode&fs.ModeSymlink == 0 || l.Data != "/dev/null" {
		t.Errorf("predictable interface names are not off: %+v", l)
	}
	if "99-rf-dhcp.network" <= "90-eth0.network" {
		t.Error("the DHCP file would win over an ip= file")
	}

	key := fakeKey("ssh-ed25519", "ssh-ed25519", "me") + "\n"
	m = fileMap(debianFiles(debianConfig{AuthorizedKeys: key}))
	if d := m["/root/.ssh"]; !d.Mode.IsDir() || d.Mode.Perm() != 0o700 {
		t.Errorf("/root/.ssh: %+v", d)
	}
	if k := m["/root/.ssh/authorized_keys"]; k.Mode != 0o600 || k.Data != key {
		t.Errorf("authorized_keys: %+v", k)
	}
}

func TestDebianSetupScript(t *testing.T) {
	s := debianSetupScript("6.1.0-57-cloud-amd64")
	for _, w := range []string{"set -e\n", "depmod -a 6.1.0-57-cloud-amd64\n",
		"systemctl enable systemd-networkd.service systemd-network-generator.service rf-agent.service rf-ssh-host-keys.service rf-cmdline.service\n",
		"systemctl mask systemd-firstboot.service\n", "systemctl disable apt-daily.timer apt-daily-upgrade.timer\n",
		"rm -f /etc/ssh/ssh_host_*\n"} {
		if !strings.Contains(s, w) {
			t.Errorf("setup script lacks %q:\n%s", w, s)
		}
	}
	if !strings.Contains(debianSetupScript("6.1 x'y"), `depmod -a '6.1 x'\''y'`) {
		t.Error("the release is not quoted")
	}
}

// TestWriteSystemFiles writes over files and links of an existing tree,
// and never through a link out of it.
func TestWriteSystemFiles(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	victim := filepath.Join(outside, "victim")
	if err := os.WriteFile(victim, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(root, "etc", "hostname")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "old.link"), []byte("a file"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := writeSystemFiles(root, []SystemFile{
		{Path: "/etc/hostname", Mode: 0o644, Data: "debian\n"},
		{Path: "/etc/old.link", Mode: fs.ModeSymlink | 0o777, Data: "/dev/null"},
		{Path: "/root/.ssh", Mode: fs.ModeDir | 0o700},
		{Path: "/root/.ssh/authorized_keys", Mode: 0o600, Data: "key\n"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(victim); string(data) != "keep" {
		t.Errorf("written through a link out of the tree: %q", data)
	}
	if data, _ := os.ReadFile(filepath.Join(root, "etc", "hostname")); string(data) != "debian\n" {
		t.Errorf("hostname %q", data)
	}
	if target, err := os.Readlink(filepath.Join(root, "etc", "old.link")); err != nil || target != "/dev/null" {
		t.Errorf("link %q %v", target, err)
	}
	for p, mode := range map[string]fs.FileMode{"root/.ssh": fs.ModeDir | 0o700, "root/.ssh/authorized_keys": 0o600, "etc/hostname": 0o644} {
		st, err := os.Lstat(filepath.Join(root, p))
		if err != nil || st.Mode() != mode {
			t.Errorf("%s: mode %v %v, want %v", p, st.Mode(), err, mode)
		}
	}
	// A directory on the way that is a link out of the tree is refused.
	if err := os.Symlink(outside, filepath.Join(root, "out")); err != nil {
		t.Fatal(err)
	}
	if err := writeSystemFiles(root, []SystemFile{{Path: "/out/x", Mode: 0o644, Data: "x"}}); err == nil {
		t.Error("wrote through a directory link out of the tree")
	}
	if _, err := os.Stat(filepath.Join(outside, "x")); err == nil {
		t.Error("a file appeared outside the tree")
	}
}

// TestDebianCmdlineScript runs the script on a command line of its own:
// loop NIC addresses become networkd files by MAC, keys go into root's
// authorized_keys once however often it runs.
func TestDebianCmdlineScript(t *testing.T) {
	dir := t.TempDir()
	script, cmdline := filepath.Join(dir, "rf-cmdline"), filepath.Join(dir, "cmdline")
	if err := os.WriteFile(script, []byte(debianCmdlineScript), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(cmdline, []byte("console=hvc0 rf.addr=02:aa:bb:cc:00:00=10.99.0.2/24,02:aa:bb:cc:00:01=10.98.0.3/24 rf.ssh_key=ssh-ed25519:AAAAC3Nz rf.shares=data,docs quiet\n"), 0o644)
	root := filepath.Join(dir, "root")
	for range 2 {
		cmd := exec.Command("sh", script)
		cmd.Env = append(os.Environ(), "RF_CMDLINE="+cmdline, "RF_ROOT="+root)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	for f, want := range map[string]string{
		"run/systemd/network/10-rf-addr-0.network": "[Match]\nMACAddress=02:aa:bb:cc:00:00\n\n[Network]\nAddress=10.99.0.2/24\nDHCP=no\n",
		"run/systemd/network/10-rf-addr-1.network": "[Match]\nMACAddress=02:aa:bb:cc:00:01\n\n[Network]\nAddress=10.98.0.3/24\nDHCP=no\n",
		"root/.ssh/authorized_keys":                "ssh-ed25519 AAAAC3Nz\n",
	} {
		if b, err := os.ReadFile(filepath.Join(root, f)); err != nil || string(b) != want {
			t.Errorf("%s = %q (%v), want %q", f, b, err, want)
		}
	}
	for _, d := range []string{"mnt/data", "mnt/docs"} {
		if st, err := os.Stat(filepath.Join(root, d)); err != nil || !st.IsDir() {
			t.Errorf("no mount point %s: %v", d, err)
		}
	}
}
