package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"rainforest/internal/agentproto"
	"rainforest/internal/shquote"
	"rainforest/net/uplink"
	"rainforest/rfm/supervisor"
)

// sshHostKeyPath is the guest's SSH host key (the Debian image makes it
// at first boot).
const sshHostKeyPath = "/etc/ssh/ssh_host_ed25519_key.pub"

// guestOutputLimit bounds what rfm ssh reads of a guest command's output.
const guestOutputLimit = 64 << 10

func sshCommand(g *globalFlags) *cobra.Command {
	var user, identity, address string
	var printOnly bool
	cmd := &cobra.Command{
		Use:   "ssh NAME [-- SSH-OPTION... [COMMAND]]",
		Short: "Log in to a subOS with ssh (through its published port 22, or its bridge address)",
		Long: `Run ssh to a subOS (the Debian image runs sshd; root logs in with a key
given at create time, rfm create --ssh-key FILE, or baked into the image,
make image-debian SSH_KEY=FILE).

The address: the host end of a published port 22 (rfm create --net user
--publish 2222:22) when the subOS has one, otherwise the guest's address
on a bridge NIC, read through the agent. --address HOST[:PORT] names it
instead.

The host key: read from the guest through the agent (a channel of the
supervisor's, not the network) and pinned in a known_hosts file of its
own, so ssh checks it strictly and no key is ever accepted blindly.
Without an agent ssh asks, as it does for any new host.

Everything after -- goes to ssh: its options, then a command to run.
rfm ssh exits with ssh's status.`,
		Example: `  rfm create deb --cpus 1 --memory 1G --image debian --ssh-key ~/.ssh/id_ed25519.pub --publish 2222:22
  rfm ssh deb
  rfm ssh deb -- uname -a
  rfm ssh deb -- -L 8080:localhost:80 -N
  rfm ssh --print deb                                  # show the ssh command`,
		Args: func(cmd *cobra.Command, args []string) error {
			at := cmd.ArgsLenAtDash()
			if len(args) == 0 || at == 0 {
				return usageErrorf("ssh needs a subOS name: rfm ssh NAME [-- SSH-OPTION... [COMMAND]]")
			}
			if at > 1 || at == -1 && len(args) > 1 {
				return usageErrorf("ssh takes one subOS name, then -- and ssh's arguments, got %q", args)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			name, extra := args[0], args[1:]
			ctx := cmd.Context()
			c := g.client()
			info, err := c.Get(ctx, name)
			if err != nil {
				return err
			}
			run := func(argv ...string) ([]byte, error) { return guestOutput(ctx, g, name, argv) }
			host, port, err := sshTarget(info, address, run)
			if err != nil {
				return err
			}
			known, err := pinHostKey(name, host, port, run)
			if err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "rfm: %v; ssh will ask about the host key\n", err)
			}
			argv := sshArgs(user, host, port, identity, known, extra)
			if printOnly {
				fmt.Fprintln(cmd.OutOrStdout(), shquote.Join(argv))
				return nil
			}
			path, err := exec.LookPath("ssh")
			if err != nil {
				return fmt.Errorf("rfm ssh runs the OpenSSH client, and there is no ssh here (apt-get install openssh-client): %w", err)
			}
			ssh := exec.CommandContext(ctx, path, argv[1:]...)
			ssh.Stdin, ssh.Stdout, ssh.Stderr = cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr()
			if err := ssh.Run(); err != nil {
				var ee *exec.ExitError
				if errors.As(err, &ee) && ee.ExitCode() > 0 {
					return exitError{code: ee.ExitCode()}
				}
				return fmt.Errorf("ssh: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&user, "user", "l", "root", "the user to log in as")
	cmd.Flags().StringVarP(&identity, "identity", "i", "", "the private key file ssh uses (ssh -i)")
	cmd.Flags().StringVar(&address, "address", "", "HOST[:PORT] to connect to instead of the one rfm finds")
	cmd.Flags().BoolVar(&printOnly, "print", false, "print the ssh command instead of running it")
	return cmd
}

// guestOutput runs argv in subOS name through its agent and returns its
// standard output (at most guestOutputLimit bytes); a non-zero exit is an
// error.
func guestOutput(ctx context.Context, g *globalFlags, name string, argv []string) ([]byte, error) {
	ex, err := g.client().Exec(ctx, name, agentproto.Exec{Argv: argv})
	if err != nil {
		return nil, err
	}
	defer ex.Close()
	stop := context.AfterFunc(ctx, func() { ex.Close() })
	defer stop()
	var out, errOut bytes.Buffer
	err = receive(ex, name, argv[0], &limitedBuffer{b: &out, n: guestOutputLimit}, &limitedBuffer{b: &errOut, n: 4096})
	if err != nil {
		return nil, fmt.Errorf("%s in %s: %w", argv[0], name, err)
	}
	return out.Bytes(), nil
}

// limitedBuffer keeps the first n bytes written to it and drops the rest.
type limitedBuffer struct {
	b *bytes.Buffer
	n int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.n - l.b.Len(); room > 0 {
		l.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// sshTarget finds where to reach subOS info's sshd: address (HOST[:PORT])
// when given; the host end of a published TCP port 22; else the guest's
// IPv4 address on a NIC in a bridge or on a TAP, asked of the guest with
// run.
func sshTarget(info supervisor.Info, address string, run func(argv ...string) ([]byte, error)) (string, int, error) {
	if address != "" {
		host, port, err := net.SplitHostPort(address)
		if err != nil {
			return address, 22, nil
		}
		p, err := strconv.Atoi(port)
		if err != nil || p < 1 || p > 65535 {
			return "", 0, usageErrorf("--address %q: bad port", address)
		}
		return host, p, nil
	}
	var macs []string
	for _, n := range info.Spec.Nets {
		if n.Bridge != "" || n.TAP != "" {
			macs = append(macs, strings.ToLower(n.MAC))
		}
		if !n.User {
			continue
		}
		for _, s := range n.Publish {
			p, err := uplink.ParsePublish(s)
			if err != nil || p.Proto != uplink.TCP || p.GuestPort != 22 || p.HostPort == 0 {
				continue
			}
			host := "127.0.0.1"
			if p.HostAddr.IsValid() && !p.HostAddr.IsUnspecified() {
				host = p.HostAddr.String()
			}
			return host, int(p.HostPort), nil
		}
	}
	if len(macs) == 0 {
		return "", 0, fmt.Errorf("%w: subOS %s has no published port 22 and no NIC in a bridge: create it with --publish 2222:22 (or --net bridge=...), or give --address", supervisor.ErrInvalid, info.Name)
	}
	out, err := run("sh", "-c", `for d in /sys/class/net/*; do echo "$(cat "$d/address") $(ip -4 -o addr show dev "${d##*/}" 2>/dev/null | awk '{print $4}' | head -n 1)"; done`)
	if err != nil {
		return "", 0, fmt.Errorf("subOS %s: cannot read its bridge address through its agent (%w); give --address", info.Name, err)
	}
	if addr, ok := addressOfMAC(string(out), macs); ok {
		return addr, 22, nil
	}
	return "", 0, fmt.Errorf("subOS %s: its bridge NIC (%s) has no IPv4 address yet; give --address", info.Name, strings.Join(macs, ", "))
}

// addressOfMAC picks, from lines "MAC ADDR/LEN" (a guest's report,
// untrusted), the address of the first line whose MAC is one of macs.
func addressOfMAC(report string, macs []string) (string, bool) {
	for line := range strings.Lines(report) {
		f := strings.Fields(line)
		if len(f) != 2 || !slices.Contains(macs, strings.ToLower(f[0])) {
			continue
		}
		if p, err := netip.ParsePrefix(f[1]); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() {
			return p.Addr().String(), true
		}
	}
	return "", false
}

// pinHostKey reads the guest's host key with run and writes it, for
// host:port, to a known_hosts file of subOS name's own, whose path it
// returns; on failure it returns that path emptied, for ssh to fill.
func pinHostKey(name, host string, port int, run func(argv ...string) ([]byte, error)) (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	dir = filepath.Join(dir, "rfm", "ssh")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	path := filepath.Join(dir, name+".known_hosts")
	out, err := run("cat", sshHostKeyPath)
	var line string
	if err == nil {
		line, err = supervisor.PublicKey(strings.TrimSpace(string(out)))
	}
	if err != nil {
		os.Remove(path)
		return path, fmt.Errorf("cannot read subOS %s's host key through its agent (%v)", name, err)
	}
	hostPat := host
	if port != 22 {
		hostPat = "[" + host + "]:" + strconv.Itoa(port)
	}
	return path, os.WriteFile(path, []byte(hostPat+" "+line+"\n"), 0o600)
}

// sshArgs is the ssh command line (argv[0] "ssh"): the known_hosts file
// known, checked strictly when it holds the key (accept-new otherwise),
// then extra (ssh's options and the command).
func sshArgs(user, host string, port int, identity, known string, extra []string) []string {
	argv := []string{"ssh", "-p", strconv.Itoa(port)}
	if known != "" {
		check := "accept-new"
		if st, err := os.Stat(known); err == nil && st.Size() > 0 {
			check = "yes"
		}
		argv = append(argv, "-o", "UserKnownHostsFile="+known, "-o", "StrictHostKeyChecking="+check)
	}
	if identity != "" {
		argv = append(argv, "-i", identity)
	}
	// Options (words before the first that is not one) go before the
	// destination, the command after it.
	i := 0
	for i < len(extra) && strings.HasPrefix(extra[i], "-") {
		i++
		if i < len(extra) && sshOptionTakesValue(extra[i-1]) {
			i++
		}
	}
	argv = append(argv, extra[:i]...)
	argv = append(argv, user+"@"+host)
	return append(argv, extra[i:]...)
}

// sshOptionTakesValue says whether ssh option opt (one word, e.g. "-L")
// takes the next word as its value.
func sshOptionTakesValue(opt string) bool {
	return len(opt) == 2 && strings.ContainsRune("BbcDEeFIiJLlmOoPpQRSWw", rune(opt[1]))
}
