package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	gvisorlog "gvisor.dev/gvisor/pkg/log"

	"rainforest/net/uplink"
)

// uplinkFlags are the settings of one subOS's user-mode network process.
type uplinkFlags struct {
	frameFD, readyFD, mtu   int
	frameSocket, resolvConf string
	subnet, gateway, dns    string
	guest, mac, logLevel    string
	nameservers, publish    []string
	hostLoopback            bool
}

// uplinkCommand is rfm uplink: the rootless user-mode network of one
// subOS as a process of its own, so that the supervisor can place it in
// the subOS's cgroup as it does the VMM (rfm vmm), from the same binary.
func uplinkCommand() *cobra.Command {
	var f uplinkFlags
	cmd := &cobra.Command{
		Use:   "uplink",
		Short: "Run one subOS's rootless user-mode network (started by the supervisor)",
		Long: `Run the rootless user-mode network of one subOS: a NAT on gVisor's netstack
that gives the guest outbound TCP, UDP and ICMP echo through this process's
own sockets, a DHCP server, a DNS forwarder to the host's resolvers and the
published host ports, with no bridge, TAP device or root configuration.

The guest's Ethernet frames arrive on a SOCK_SEQPACKET Unix socket, one
frame a message: an inherited descriptor (--frame-fd, one end of a
socketpair) or a socket path this process listens on for the VMM's
connection (--frame-socket). The process runs until the VMM closes the
socket, or until SIGTERM or SIGINT; it then closes every listener and
connection it holds.

The supervisor starts it; it is documented for debugging. With --ready-fd,
"ready" is written there once the published ports are bound (and the frame
socket path listens). A published port already in use ends it with status 4.`,
		Example: `  rfm uplink --frame-socket /run/rainforest/web.net --publish 8080:80 --publish 127.0.0.1:5353:53/udp
  rfm uplink --frame-fd 3 --subnet 10.0.2.0/24 --host-loopback --log-level info`,
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return f.run(cmd.Context(), cmd.ErrOrStderr())
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&f.frameFD, "frame-fd", -1, "inherited SOCK_SEQPACKET socket carrying the guest's frames")
	fl.StringVar(&f.frameSocket, "frame-socket", "", "listen on this Unix socket path for the VMM's frame connection")
	fl.StringVar(&f.subnet, "subnet", uplink.DefaultSubnet, "the private IPv4 network of the guest and the uplink")
	fl.StringVar(&f.gateway, "gateway", "", "the uplink's address (default the subnet's .2)")
	fl.StringVar(&f.dns, "dns", "", "the DNS forwarder's address (default the subnet's .3)")
	fl.StringVar(&f.guest, "guest", "", "the guest's address, leased by DHCP (default the subnet's .15)")
	fl.StringVar(&f.mac, "mac", "", "the uplink's Ethernet address (default 52:55 and the gateway's address)")
	fl.IntVar(&f.mtu, "mtu", 1500, "the link's MTU")
	fl.StringArrayVar(&f.nameservers, "nameserver", nil, "a resolver to forward DNS queries to, ADDR or ADDR:PORT (default the --resolv-conf file's)")
	fl.StringVar(&f.resolvConf, "resolv-conf", uplink.DefaultResolvConf, "where the host's resolvers are read")
	fl.BoolVar(&f.hostLoopback, "host-loopback", false, "let the guest reach the host's 127.0.0.1 at the gateway's address")
	fl.StringArrayVarP(&f.publish, "publish", "p", nil, "publish a guest port on the host: [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|udp]")
	fl.IntVar(&f.readyFD, "ready-fd", -1, "write \"ready\" to this inherited file descriptor once the ports are bound")
	fl.StringVar(&f.logLevel, "log-level", "warn", "log level: debug, info, warn, error")
	fixedValues(cmd, "log-level", "debug", "info", "warn", "error")
	_ = cmd.MarkFlagFilename("frame-socket")
	_ = cmd.MarkFlagFilename("resolv-conf")
	for _, n := range []string{"frame-fd", "ready-fd", "subnet", "gateway", "dns", "guest", "mac", "mtu", "nameserver", "publish"} {
		_ = cmd.RegisterFlagCompletionFunc(n, cobra.NoFileCompletions)
	}
	return cmd
}

// config builds the uplink's configuration from the flags.
func (f *uplinkFlags) config() (uplink.Config, error) {
	var c uplink.Config
	var err error
	if c.Subnet, err = netip.ParsePrefix(f.subnet); err != nil {
		return c, usageErrorf("--subnet %q: %v", f.subnet, err)
	}
	for _, a := range []struct {
		flag, v string
		to      *netip.Addr
	}{{"gateway", f.gateway, &c.Gateway}, {"dns", f.dns, &c.DNS}, {"guest", f.guest, &c.Guest}} {
		if a.v == "" {
			continue
		}
		if *a.to, err = netip.ParseAddr(a.v); err != nil {
			return c, usageErrorf("--%s %q: %v", a.flag, a.v, err)
		}
	}
	if f.mac != "" {
		if c.MAC, err = net.ParseMAC(f.mac); err != nil {
			return c, usageErrorf("--mac %q: %v", f.mac, err)
		}
	}
	c.MTU = f.mtu
	for _, s := range f.nameservers {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return c, usageErrorf("--nameserver %q: want ADDR or ADDR:PORT", s)
			}
			ap = netip.AddrPortFrom(a, 53)
		}
		c.Nameservers = append(c.Nameservers, ap)
	}
	c.ResolvConf = f.resolvConf
	c.HostLoopback = f.hostLoopback
	for _, s := range f.publish {
		p, err := uplink.ParsePublish(s)
		if err != nil {
			return c, usageErrorf("--publish: %v", err)
		}
		c.Publish = append(c.Publish, p)
	}
	return c, nil
}

// run serves the guest until the frame socket closes or ctx ends.
func (f *uplinkFlags) run(ctx context.Context, stderr io.Writer) error {
	if (f.frameFD >= 0) == (f.frameSocket != "") {
		return usageErrorf("give the frame socket once: --frame-fd or --frame-socket")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return usageErrorf("--log-level %q: want debug, info, warn or error", f.logLevel)
	}
	cfg, err := f.config()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	netstackLog(log, level)
	cfg.Logger = log
	var ready *os.File
	if f.readyFD >= 0 {
		if ready = os.NewFile(uintptr(f.readyFD), "ready"); ready == nil {
			return usageErrorf("--ready-fd %d: not a file descriptor", f.readyFD)
		}
		defer ready.Close()
	}
	var frames *os.File
	if f.frameFD >= 0 {
		if frames = os.NewFile(uintptr(f.frameFD), "frames"); frames == nil {
			return usageErrorf("--frame-fd %d: not a file descriptor", f.frameFD)
		}
		defer frames.Close()
	}

	u, err := uplink.New(cfg)
	if errors.Is(err, uplink.ErrConfig) {
		return usageError{err: err}
	}
	if errors.Is(err, uplink.ErrPortInUse) {
		return exitError{code: exitConflict, err: err}
	}
	if err != nil {
		return err
	}
	defer u.Close()
	var conn uplink.FrameConn
	var listener *uplink.SeqpacketListener
	if frames != nil {
		if conn, err = uplink.NewSeqpacketConn(frames); err != nil {
			return usageError{err: fmt.Errorf("--frame-fd: %w", err)}
		}
		frames.Close()
	} else {
		if listener, err = uplink.ListenSeqpacket(f.frameSocket); err != nil {
			return err
		}
		defer listener.Close()
	}
	if ready != nil {
		fmt.Fprintln(ready, "ready")
		ready.Close()
	}
	if listener != nil {
		sc, err := listener.Accept(ctx)
		listener.Close()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		conn = sc
	}
	err = u.Run(ctx, conn)
	s := u.Stats()
	log.Info("uplink stopped", "frames_in", s.FramesIn, "frames_out", s.FramesOut, "tcp_total", s.TCPTotal,
		"udp_total", s.UDPTotal, "dns_queries", s.DNSQueries, "drops", dropTotal(s))
	return err
}

// dropTotal sums the drop counters.
func dropTotal(s uplink.Stats) uint64 {
	return s.DropRate + s.DropOversize + s.DropMalformed + s.DropNotForUs + s.DropProtocol + s.DropSpoofed +
		s.DropTxQueue + s.DropTxError + s.DropRefused + s.DropFlowRate + s.DropTCPLimit + s.DropUDPLimit +
		s.DropPingLimit + s.DropPingDenied + s.DropPingOther + s.DropDNSLimit + s.DropDNSBad + s.DropDHCPBad
}

// netstackLog sends gVisor's own log (the netstack's warnings, such as a
// martian packet from the guest) to log, as this process's only logger.
// gVisor keeps its logger in a package variable; this process has one
// netstack, so setting it here is harmless.
func netstackLog(log *slog.Logger, level slog.Level) {
	gv := gvisorlog.Warning
	switch {
	case level <= slog.LevelDebug:
		gv = gvisorlog.Debug
	case level <= slog.LevelInfo:
		gv = gvisorlog.Info
	}
	gvisorlog.SetTarget(netstackEmitter{log: log})
	gvisorlog.SetLevel(gv)
}

// netstackEmitter is a gVisor log Emitter writing to a slog.Logger.
type netstackEmitter struct{ log *slog.Logger }

func (e netstackEmitter) Emit(_ int, level gvisorlog.Level, _ time.Time, format string, v ...any) {
	l := slog.LevelWarn
	switch level {
	case gvisorlog.Info:
		l = slog.LevelInfo
	case gvisorlog.Debug:
		l = slog.LevelDebug
	}
	e.log.Log(context.Background(), l, strings.TrimSpace(fmt.Sprintf(format, v...)), "component", "netstack")
}
