package supervisor

import (
	"fmt"
	"regexp"
	"strings"

	"rainforest/ledger"
)

// SSH keys. A subOS's SSHKeys are public keys root may log in with: the
// supervisor puts them on the guest's command line (rf.ssh_key=TYPE:BLOB,
// ...), and the Debian image adds them to root's authorized_keys before
// sshd starts. Only the key type and blob travel (no comment, no options),
// so a key is one word of the command line.

// MaxSSHKeys bounds a subOS's SSH keys (the command line is 4 KiB).
const MaxSSHKeys = 4

// publicKeyPattern is an OpenSSH public key: a type and its base64 blob.
var publicKeyPattern = regexp.MustCompile(`^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]{16,}={0,3}$`)

// maxPublicKey bounds a public key line (an 8192-bit RSA key is about
// 1.4 KB).
const maxPublicKey = 2048

// PublicKey reads one OpenSSH public key from line (as a .pub file or
// known_hosts entry holds it, options aside): "TYPE BASE64", its comment
// dropped. It is the one check of keys, from a user or from a guest
// (rfm ssh pins a guest's host key with it).
func PublicKey(line string) (string, error) {
	f := strings.Fields(line)
	if len(line) > maxPublicKey || len(f) < 2 || !publicKeyPattern.MatchString(f[0]+" "+f[1]) {
		return "", fmt.Errorf("%w: %.40q is not a public key (TYPE BASE64, type ssh-ed25519, ecdsa-sha2-* or ssh-rsa)", ErrInvalid, line)
	}
	return f[0] + " " + f[1], nil
}

// ParseSSHKeys reads public keys, one per line, as an authorized_keys or
// .pub file holds them (blank lines and # comments skipped, each key's
// comment dropped): "TYPE BLOB" each. RSA keys are refused (too long for
// the kernel command line: use ed25519 or ECDSA).
func ParseSSHKeys(text string) ([]string, error) {
	var keys []string
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, err := PublicKey(line)
		if err == nil {
			err = checkSSHKey(key)
		}
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n+1, err)
		}
		keys = append(keys, key)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: no public key (want a line such as ssh-ed25519 AAAA... from a .pub file)", ErrInvalid)
	}
	return keys, nil
}

// checkSSHKey checks one key of a spec.
func checkSSHKey(key string) error {
	if strings.HasPrefix(key, "ssh-rsa ") {
		return fmt.Errorf("%w: an RSA key is too long for the guest's command line: use an ed25519 or ECDSA key (ssh-keygen -t ed25519)", ErrInvalid)
	}
	if k, err := PublicKey(key); err != nil || k != key {
		return fmt.Errorf("%w: %.40q is not a public key (TYPE BASE64, type ssh-ed25519 or ecdsa-sha2-*)", ErrInvalid, key)
	}
	return nil
}

// sshKeyProblems lists what is wrong with spec's keys.
func sshKeyProblems(spec Spec) []ledger.Problem {
	var probs []ledger.Problem
	if len(spec.SSHKeys) > MaxSSHKeys {
		return []ledger.Problem{{Field: "ssh_keys", Message: fmt.Sprintf("%d keys, at most %d", len(spec.SSHKeys), MaxSSHKeys)}}
	}
	for i, k := range spec.SSHKeys {
		if err := checkSSHKey(k); err != nil {
			probs = append(probs, ledger.Problem{Field: fmt.Sprintf("ssh_keys[%d]", i), Message: err.Error()})
		}
	}
	return probs
}

// sshKeysCmdline is what the guest's command line gets for spec's keys.
func sshKeysCmdline(spec Spec) string {
	var words []string
	for _, k := range spec.SSHKeys {
		words = append(words, strings.Replace(k, " ", ":", 1))
	}
	if len(words) == 0 {
		return ""
	}
	return "rf.ssh_key=" + strings.Join(words, ",")
}
