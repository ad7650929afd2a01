package images

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	"rainforest/internal/shquote"
)

// What the Debian image is called and calls itself.
const (
	// DebianHostname is the image's /etc/hostname (systemd.hostname= on
	// the kernel command line overrides it).
	DebianHostname = "debian"
	// DebianLabel is the ext4 label of the Debian disk; /etc/fstab names
	// the root file system by it, so the disk may be any virtio-blk
	// device (root=LABEL=rfdebian finds it too).
	DebianLabel = "rfdebian"
	// DebianToolsDir is where the image has the guest tools (rf-agent,
	// rfcom).
	DebianToolsDir = "/usr/local/bin"
	// debianAgentUnit is the agent's systemd service.
	debianAgentUnit = "rf-agent.service"
	// debianHostKeysUnit generates the SSH host key at first boot.
	debianHostKeysUnit = "rf-ssh-host-keys.service"
	// debianCmdlineUnit applies what the supervisor puts on the kernel
	// command line (rf.addr=, rf.ssh_key=) before the network and sshd
	// start.
	debianCmdlineUnit = "rf-cmdline.service"
	// debianHostKey is the one SSH host key (ed25519: quick to make, even
	// under nested emulation, unlike RSA).
	debianHostKey = "/etc/ssh/ssh_host_ed25519_key"
)

// SystemFile is a file that BuildDebian puts into the Debian root file
// system after the packages are installed.
type SystemFile struct {
	// Path is the absolute path in the guest.
	Path string
	// Mode is the permission bits, with fs.ModeDir for a directory and
	// fs.ModeSymlink for a symbolic link.
	Mode fs.FileMode
	// Data is a file's content or a link's target.
	Data string
}

// debianConfig is what the generated files depend on.
type debianConfig struct {
	// AuthorizedKeys is root's ~/.ssh/authorized_keys (ParseAuthorizedKeys);
	// empty for none.
	AuthorizedKeys string
}

// debianFiles returns the files BuildDebian writes into the root file
// system, sorted by path: networking, the SSH server's settings, the
// agent's service and root's authorized keys.
func debianFiles(cfg debianConfig) []SystemFile {
	files := []SystemFile{
		{Path: "/etc/hostname", Mode: 0o644, Data: DebianHostname + "\n"},
		{Path: "/etc/hosts", Mode: 0o644, Data: "127.0.0.1\tlocalhost\n127.0.1.1\t" + DebianHostname + "\n" +
			"::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"},
		// The initramfs mounts the root read-only; systemd checks it
		// (fsck) and remounts it read-write by this line.
		{Path: "/etc/fstab", Mode: 0o644, Data: "# <file system>\t<mount point>\t<type>\t<options>\t<dump>\t<pass>\n" +
			"LABEL=" + DebianLabel + "\t/\text4\tdefaults,errors=remount-ro\t0\t1\n"},
		// Kernel names for network interfaces (eth0, eth1, ... in PCI
		// order) rather than predictable names that follow the VMM's
		// slot numbers, so that a static ip= can name its interface.
		{Path: "/etc/systemd/network/99-default.link", Mode: fs.ModeSymlink | 0o777, Data: "/dev/null"},
		// DHCP on every Ethernet interface. systemd-network-generator
		// turns an ip= of the kernel command line into
		// /run/systemd/network/90-<interface>.network, which sorts first
		// and so wins for its interface (the kernel applies ip= itself
		// only with built-in drivers; virtio_net is a module).
		{Path: "/etc/systemd/network/99-rf-dhcp.network", Mode: 0o644, Data: `# RainForest subOS: DHCP on every Ethernet interface (an ip= on the
# kernel command line overrides it for its interface).
[Match]
Name=en* eth*

[Network]
DHCP=yes

[DHCPv4]
ClientIdentifier=mac
`},
		// Nested under emulation a boot can take minutes; a console
		// device that shows up after systemd's default 90 s would get
		// no getty.
		{Path: "/etc/systemd/system.conf.d/rainforest.conf", Mode: 0o644, Data: `# RainForest subOS: slow (nested, emulated) boots still get their devices.
[Manager]
DefaultDeviceTimeoutSec=5min
`},
		{Path: "/etc/ssh/sshd_config.d/rainforest.conf", Mode: 0o644, Data: `# RainForest subOS: root logs in with a key only, nobody with a password.
# The one host key is made at first boot (` + debianHostKeysUnit + `).
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
HostKey ` + debianHostKey + `
`},
		{Path: "/etc/systemd/system/" + debianHostKeysUnit, Mode: 0o644, Data: `[Unit]
Description=SSH host key, made at first boot
Before=ssh.service
ConditionPathExists=!` + debianHostKey + `

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -C "" -f ` + debianHostKey + `

[Install]
WantedBy=ssh.service
`},
		{Path: "/etc/systemd/system/" + debianCmdlineUnit, Mode: 0o644, Data: `[Unit]
Description=RainForest subOS settings from the kernel command line (rf.addr=, rf.ssh_key=, rf.shares=)
DefaultDependencies=no
After=local-fs.target
Before=systemd-networkd.service ssh.service network-pre.target
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=` + DebianToolsDir + `/rf-cmdline

[Install]
WantedBy=sysinit.target
`},
		{Path: DebianToolsDir + "/rf-cmdline", Mode: 0o755, Data: debianCmdlineScript},
		{Path: "/etc/systemd/system/" + debianAgentUnit, Mode: 0o644, Data: `[Unit]
Description=RainForest agent (rfm exec, rfm stats, health) on vsock port 1024
StartLimitIntervalSec=0

[Service]
ExecStart=` + DebianToolsDir + `/rf-agent
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
`},
	}
	if cfg.AuthorizedKeys != "" {
		files = append(files,
			SystemFile{Path: "/root/.ssh", Mode: fs.ModeDir | 0o700},
			SystemFile{Path: "/root/.ssh/authorized_keys", Mode: 0o600, Data: cfg.AuthorizedKeys})
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	return files
}

// debianCmdlineScript applies the supervisor's settings on the kernel
// command line: rf.addr=MAC=ADDR/LEN[,...] (loop network NICs: a static
// address for the NIC of that MAC, as a networkd file that sorts before
// the DHCP one), rf.ssh_key=TYPE:BASE64[,...] (keys root may log in
// with, added to its authorized_keys) and rf.shares=TAG[,...] (virtio-fs
// shares, mounted at /mnt/TAG).
const debianCmdlineScript = `#!/bin/sh
# RainForest subOS: settings the supervisor put on the kernel command line.
# (RF_CMDLINE and RF_ROOT are for tests.)
set -u
root=${RF_ROOT:-}
param() {
	for w in $(cat "${RF_CMDLINE:-/proc/cmdline}"); do
		case "$w" in "$1="*) echo "${w#*=}"; return ;; esac
	done
}
mkdir -p "$root/run/systemd/network"
i=0
for pair in $(param rf.addr | tr , ' '); do
	mac=${pair%%=*}
	addr=${pair#*=}
	printf '[Match]\nMACAddress=%s\n\n[Network]\nAddress=%s\nDHCP=no\n' "$mac" "$addr" >"$root/run/systemd/network/10-rf-addr-$i.network"
	echo "rf-cmdline: $mac gets $addr"
	i=$((i + 1))
done
# rf.shares=TAG[,TAG...] (the supervisor sets it): each virtio-fs share
# is mounted at /mnt/TAG.
for tag in $(param rf.shares | tr , ' '); do
	mkdir -p "$root/mnt/$tag"
	if [ -z "$root" ]; then
		modprobe virtiofs 2>/dev/null
		mount -t virtiofs "$tag" "/mnt/$tag" && echo "rf-cmdline: share $tag at /mnt/$tag" || echo "rf-cmdline: share $tag not mounted"
	fi
done
for key in $(param rf.ssh_key | tr , ' '); do
	line="${key%%:*} ${key#*:}"
	keys=$root/root/.ssh/authorized_keys
	mkdir -p -m 700 "$root/root/.ssh"
	grep -qxF "$line" "$keys" 2>/dev/null || echo "$line" >>"$keys"
	chmod 600 "$keys"
	echo "rf-cmdline: a key for root (${key%%:*})"
done
`

// debianSetupScript is the sh script BuildDebian runs chrooted in the
// root file system after writing debianFiles: module index of the kernel
// release, the services enabled, what must not run, and no SSH host key
// baked in.
func debianSetupScript(release string) string {
	return `set -e
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
depmod -a ` + shquote.Quote(release) + `
systemctl enable systemd-networkd.service systemd-network-generator.service ` + debianAgentUnit + ` ` + debianHostKeysUnit + ` ` + debianCmdlineUnit + `
# First boot must not stop at prompts for a locale, a time zone or a
# root password on the console.
systemctl mask systemd-firstboot.service
# No apt runs behind the guest's back (benchmarks run in it).
systemctl disable apt-daily.timer apt-daily-upgrade.timer
rm -f /etc/ssh/ssh_host_*
`
}

// writeSystemFiles writes files into the root file system at dir;
// existing files and links at those paths are replaced, and nothing is
// written outside dir (os.Root).
func writeSystemFiles(dir string, files []SystemFile) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("images: %w", err)
	}
	defer root.Close()
	for _, f := range files {
		if err := writeSystemFile(root, f); err != nil {
			return fmt.Errorf("images: %s: %w", f.Path, err)
		}
	}
	return nil
}

func writeSystemFile(root *os.Root, f SystemFile) error {
	name := strings.TrimPrefix(path.Clean("/"+f.Path), "/")
	if name == "" {
		return errors.New("not a file path")
	}
	if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
		return err
	}
	if f.Mode.IsDir() {
		if err := root.MkdirAll(name, f.Mode.Perm()); err != nil {
			return err
		}
		return root.Chmod(name, f.Mode.Perm())
	}
	if err := root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if f.Mode&fs.ModeSymlink != 0 {
		return root.Symlink(f.Data, name)
	}
	if err := root.WriteFile(name, []byte(f.Data), f.Mode.Perm()); err != nil {
		return err
	}
	return root.Chmod(name, f.Mode.Perm()) // whatever the umask
}

// ErrBadSSHKey means an --ssh-key file is not a public key file: it
// holds no key, a malformed one, or a private key.
var ErrBadSSHKey = errors.New("images: not an SSH public key file")

// maxAuthorizedKeys bounds an authorized keys file.
const maxAuthorizedKeys = 64 << 10

// sshKeyTypes are the public key types OpenSSH accepts in
// authorized_keys (certificates are "<type>-cert-v01@openssh.com").
var sshKeyTypes = map[string]bool{
	"ssh-ed25519": true, "ssh-rsa": true, "ssh-dss": true,
	"ecdsa-sha2-nistp256": true, "ecdsa-sha2-nistp384": true, "ecdsa-sha2-nistp521": true,
	"sk-ssh-ed25519@openssh.com": true, "sk-ecdsa-sha2-nistp256@openssh.com": true,
}

// ParseAuthorizedKeys checks the text of an authorized_keys file (one
// or more public keys as ssh-keygen writes KEY.pub, optionally with
// options before a key; blank lines and # comments are kept) and returns
// it with LF line ends and a final newline. Each key's base64 blob must
// name the key type the line gives. A private key, an empty file and a
// malformed line are ErrBadSSHKey.
func ParseAuthorizedKeys(data []byte) (string, error) {
	if len(data) > maxAuthorizedKeys {
		return "", fmt.Errorf("%w: larger than %d bytes", ErrBadSSHKey, maxAuthorizedKeys)
	}
	if bytes.Contains(data, []byte("PRIVATE KEY")) {
		return "", fmt.Errorf("%w: this is a private key; give the public one (the .pub file)", ErrBadSSHKey)
	}
	var out strings.Builder
	keys := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxAuthorizedKeys)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line != "" && !strings.HasPrefix(line, "#") {
			if err := checkAuthorizedKey(line); err != nil {
				return "", fmt.Errorf("%w: line %d: %v", ErrBadSSHKey, n, err)
			}
			keys++
		}
		out.WriteString(line + "\n")
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadSSHKey, err)
	}
	if keys == 0 {
		return "", fmt.Errorf("%w: no key in it", ErrBadSSHKey)
	}
	return out.String(), nil
}

// checkAuthorizedKey checks one authorized_keys line: [options] type
// base64 [comment].
func checkAuthorizedKey(line string) error {
	fields := strings.Fields(line)
	for i, f := range fields {
		base := strings.TrimSuffix(f, "-cert-v01@openssh.com")
		if !sshKeyTypes[base] {
			continue
		}
		if i+1 >= len(fields) {
			return fmt.Errorf("%s without the key", f)
		}
		blob, err := base64.StdEncoding.DecodeString(fields[i+1])
		if err != nil {
			return fmt.Errorf("%s key is not base64: %v", f, err)
		}
		if len(blob) < 4 {
			return fmt.Errorf("%s key is too short", f)
		}
		n := binary.BigEndian.Uint32(blob)
		if uint64(n) > uint64(len(blob)-4) || string(blob[4:4+n]) != f {
			return fmt.Errorf("the key data is not a %s key", f)
		}
		return nil
	}
	return errors.New("no key type (ssh-ed25519, ssh-rsa, ecdsa-sha2-..., sk-...)")
}
