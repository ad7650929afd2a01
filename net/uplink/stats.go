package uplink

import "sync/atomic"

// Stats are an uplink's counters since New. Drop counters say why a frame,
// a connection or a flow from the guest was refused; each is also where a
// flooding guest shows.
type Stats struct {
	FramesIn  uint64 `json:"frames_in"`  // frames read from the guest
	BytesIn   uint64 `json:"bytes_in"`   // their bytes
	FramesOut uint64 `json:"frames_out"` // frames written to the guest
	BytesOut  uint64 `json:"bytes_out"`  // their bytes

	DropRate       uint64 `json:"drop_rate"`        // frames over Limits.Frames
	DropOversize   uint64 `json:"drop_oversize"`    // frames longer than the MTU allows
	DropMalformed  uint64 `json:"drop_malformed"`   // frames too short or with a bad IPv4 header
	DropNotForUs   uint64 `json:"drop_not_for_us"`  // Ethernet destination neither ours nor broadcast
	DropProtocol   uint64 `json:"drop_protocol"`    // neither IPv4 nor ARP (IPv6 is not routed)
	DropSpoofed    uint64 `json:"drop_spoofed"`     // IPv4 source other than the guest's address (or 0.0.0.0)
	DropTxQueue    uint64 `json:"drop_tx_queue"`    // frames for the guest dropped on a full queue
	DropTxError    uint64 `json:"drop_tx_error"`    // frames for the guest the FrameConn refused
	DropRefused    uint64 `json:"drop_refused"`     // destinations the uplink does not forward to
	DropFlowRate   uint64 `json:"drop_flow_rate"`   // new connections and flows over Limits.NewFlows
	DropTCPLimit   uint64 `json:"drop_tcp_limit"`   // connections over Limits.TCPConns
	DropUDPLimit   uint64 `json:"drop_udp_limit"`   // flows over Limits.UDPFlows
	DropPingLimit  uint64 `json:"drop_ping_limit"`  // echo flows over Limits.PingFlows
	DropPingDenied uint64 `json:"drop_ping_denied"` // echo requests while the host forbids ping sockets
	DropPingOther  uint64 `json:"drop_ping_other"`  // fragmented echo requests, and echo sends the host refused
	DropDNSLimit   uint64 `json:"drop_dns_limit"`   // DNS queries over Limits.DNSQueries
	DropDNSBad     uint64 `json:"drop_dns_bad"`     // DNS messages that are no query
	DropDHCPBad    uint64 `json:"drop_dhcp_bad"`    // DHCP messages that do not parse

	TCPDialFailed uint64 `json:"tcp_dial_failed"` // outbound connections the host refused (the guest got a reset)
	TCPActive     uint64 `json:"tcp_active"`      // forwarded TCP connections open now (outbound and published)
	TCPTotal      uint64 `json:"tcp_total"`       // forwarded TCP connections since New
	UDPActive     uint64 `json:"udp_active"`      // UDP flows open now (outbound and published)
	UDPTotal      uint64 `json:"udp_total"`       // UDP flows since New
	PingActive    uint64 `json:"ping_active"`     // echo flows open now
	PingTotal     uint64 `json:"ping_total"`      // echo flows since New
	DNSQueries    uint64 `json:"dns_queries"`     // queries forwarded
	DNSFailed     uint64 `json:"dns_failed"`      // queries no nameserver answered (the guest got SERVFAIL)
	DHCPAcks      uint64 `json:"dhcp_acks"`       // leases granted
}

// counters are the live Stats.
type counters struct {
	framesIn, bytesIn, framesOut, bytesOut atomic.Uint64

	dropRate, dropOversize, dropMalformed, dropNotForUs, dropProtocol, dropSpoofed      atomic.Uint64
	dropTxQueue, dropTxError, dropRefused, dropFlowRate, dropTCPLimit, dropUDPLimit     atomic.Uint64
	dropPingLimit, dropPingDenied, dropPingOther, dropDNSLimit, dropDNSBad, dropDHCPBad atomic.Uint64

	tcpDialFailed, tcpActive, tcpTotal, udpActive, udpTotal, pingActive, pingTotal atomic.Uint64
	dnsQueries, dnsFailed, dhcpAcks                                                atomic.Uint64
}

func (c *counters) snapshot() Stats {
	return Stats{
		FramesIn: c.framesIn.Load(), BytesIn: c.bytesIn.Load(),
		FramesOut: c.framesOut.Load(), BytesOut: c.bytesOut.Load(),
		DropRate: c.dropRate.Load(), DropOversize: c.dropOversize.Load(), DropMalformed: c.dropMalformed.Load(),
		DropNotForUs: c.dropNotForUs.Load(), DropProtocol: c.dropProtocol.Load(), DropSpoofed: c.dropSpoofed.Load(),
		DropTxQueue: c.dropTxQueue.Load(), DropTxError: c.dropTxError.Load(), DropRefused: c.dropRefused.Load(),
		DropFlowRate: c.dropFlowRate.Load(), DropTCPLimit: c.dropTCPLimit.Load(), DropUDPLimit: c.dropUDPLimit.Load(),
		DropPingLimit: c.dropPingLimit.Load(), DropPingDenied: c.dropPingDenied.Load(), DropPingOther: c.dropPingOther.Load(),
		DropDNSLimit: c.dropDNSLimit.Load(), DropDNSBad: c.dropDNSBad.Load(), DropDHCPBad: c.dropDHCPBad.Load(),
		TCPDialFailed: c.tcpDialFailed.Load(), TCPActive: c.tcpActive.Load(), TCPTotal: c.tcpTotal.Load(),
		UDPActive: c.udpActive.Load(), UDPTotal: c.udpTotal.Load(),
		PingActive: c.pingActive.Load(), PingTotal: c.pingTotal.Load(),
		DNSQueries: c.dnsQueries.Load(), DNSFailed: c.dnsFailed.Load(), DHCPAcks: c.dhcpAcks.Load(),
	}
}

// dec decrements an active-count gauge.
func dec(g *atomic.Uint64) { g.Add(^uint64(0)) }
