package uplink

import (
	"sync"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// link is the netstack's NIC below its Ethernet layer (ethernet.New wraps
// it): frames the stack sends go, copied, into a bounded queue that Run's
// writer drains into the FrameConn; frames from the guest are handed to
// the stack by deliver. A full queue drops the frame and counts it.
type link struct {
	mtu  uint32
	mac  tcpip.LinkAddress
	out  chan []byte
	stat *counters

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher
}

var _ stack.LinkEndpoint = (*link)(nil)

func newLink(mtu uint32, mac tcpip.LinkAddress, queue int, stat *counters) *link {
	return &link{mtu: mtu, mac: mac, out: make(chan []byte, queue), stat: stat}
}

// deliver hands one Ethernet frame from the guest to the stack. It runs
// on Run's reader goroutine, and the stack processes the frame on it.
func (l *link) deliver(frame []byte) {
	l.mu.RLock()
	d := l.dispatcher
	l.mu.RUnlock()
	if d == nil {
		return
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
	d.DeliverNetworkPacket(header.EthernetProtocolAll, pkt)
	pkt.DecRef()
}

// queue puts a frame built outside the stack (an ICMP echo reply) on the
// way to the guest; it owns frame from then on.
func (l *link) queue(frame []byte) {
	select {
	case l.out <- frame:
	default:
		l.stat.dropTxQueue.Add(1)
	}
}

// WritePackets copies each packet (Ethernet header included) into the
// queue.
func (l *link) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		frame := make([]byte, 0, pkt.Size())
		for _, s := range pkt.AsSlices() {
			frame = append(frame, s...)
		}
		l.queue(frame)
		n++
	}
	return n, nil
}

func (l *link) MTU() uint32                      { return l.mtu }
func (l *link) SetMTU(uint32)                    {}
func (l *link) MaxHeaderLength() uint16          { return 0 }
func (l *link) LinkAddress() tcpip.LinkAddress   { return l.mac }
func (l *link) SetLinkAddress(tcpip.LinkAddress) {}
func (l *link) Capabilities() stack.LinkEndpointCapabilities {
	return 0
}
func (l *link) Wait()                                   {}
func (l *link) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareEther }
func (l *link) AddHeader(*stack.PacketBuffer)           {}
func (l *link) ParseHeader(*stack.PacketBuffer) bool    { return true }
func (l *link) Close()                                  {}
func (l *link) SetOnCloseAction(func())                 {}

func (l *link) Attach(d stack.NetworkDispatcher) {
	l.mu.Lock()
	l.dispatcher = d
	l.mu.Unlock()
}

func (l *link) IsAttached() bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.dispatcher != nil
}
