package tap_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"rainforest/vmm/virtio"
	vnet "rainforest/vmm/virtio/net"
	"rainforest/vmm/virtio/net/tap"
	vt "rainforest/vmm/virtio/virtiotest"
)

// testEtherType is the local experimental EtherType: the tests' frames,
// told apart from whatever else the host sends on a new interface.
const testEtherType = 0x88B5

var (
	guestMAC = vnet.MAC{0x52, 0x54, 0x00, 0x00, 0x00, 0x01}
	hostMAC  = vnet.MAC{0x52, 0x54, 0x00, 0x00, 0x00, 0x02}
)

// needTap skips a test that creates TAP interfaces where it cannot.
func needTap(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a TAP interface through /dev/net/tun (CI runs as root)")
	}
	if _, err := os.Stat(tap.Device); err != nil {
		t.Skipf("no %s: %v", tap.Device, err)
	}
}

// tapName returns a name for a test interface.
func tapName(t *testing.T) string {
	return fmt.Sprintf("rft%d%s", os.Getpid()%100000, t.Name()[len(t.Name())-3:])
}

// openUp opens a TAP backend on a new interface and brings the
// interface up (IPv6 off, so that the host stays quiet on it).
func openUp(t *testing.T) *tap.Tap {
	t.Helper()
	tp, err := tap.Open(tapName(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close() })
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+tp.Name()+"/disable_ipv6", []byte("1"), 0o644)
	setUp(t, tp.Name())
	return tp
}

// setUp sets IFF_UP on interface name.
func setUp(t *testing.T, name string) {
	t.Helper()
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, ifr); err != nil {
		t.Fatal(err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr); err != nil {
		t.Fatal(err)
	}
}

// packetSocket is the host's end of the interface: a raw packet socket
// bound to it.
type packetSocket struct{ fd int }

func newPacketSocket(t *testing.T, name string) *packetSocket {
	t.Helper()
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		t.Fatal(err)
	}
	proto := int(htons(unix.ETH_P_ALL))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		t.Fatal(err)
	}
	return &packetSocket{fd: fd}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// send transmits an Ethernet frame on the interface (towards the TAP's
// reader).
func (p *packetSocket) send(t *testing.T, frame []byte) {
	t.Helper()
	if _, err := unix.Write(p.fd, frame); err != nil {
		t.Fatal(err)
	}
}

// recv returns the next test frame the interface received (from the
// TAP's writer), skipping others and the socket's own.
func (p *packetSocket) recv(t *testing.T) []byte {
	t.Helper()
	buf := make([]byte, 1<<17)
	for {
		n, from, err := unix.Recvfrom(p.fd, buf, 0)
		if err != nil {
			t.Fatal(err)
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if n >= vnet.EthHeaderLen && binary.BigEndian.Uint16(buf[12:]) == testEtherType {
			return bytes.Clone(buf[:n])
		}
	}
}

// ethernet returns a test frame from src to dst with n bytes of payload.
func ethernet(dst, src vnet.MAC, n int) []byte {
	b := make([]byte, vnet.EthHeaderLen+n)
	copy(b, dst[:])
	copy(b[6:], src[:])
	binary.BigEndian.PutUint16(b[12:], testEtherType)
	for i := range n {
		b[vnet.EthHeaderLen+i] = byte(i*13 + 1)
	}
	return b
}

// port is a net.Port that passes every frame to a channel.
type port struct {
	frames chan []byte
}

func (p *port) Receive(frame []byte) error {
	p.frames <- bytes.Clone(frame)
	return nil
}

func (p *port) WaitRx(ctx context.Context) error { return ctx.Err() }

func TestOpenSetsHeaderSize(t *testing.T) {
	needTap(t)
	tp := openUp(t)
	if n, err := tp.HeaderSize(); err != nil || n != vnet.HeaderLen {
		t.Fatalf("header size %d %v", n, err)
	}
	if tp.Offloads() != vnet.OffloadFeatures {
		t.Fatalf("offloads %#x", tp.Offloads())
	}
	for _, f := range []uint64{0, vnet.OffloadFeatures, vnet.FeatureGuestCsum | vnet.FeatureGuestTSO6} {
		if err := tp.Configure(f); err != nil {
			t.Fatalf("Configure(%#x): %v", f, err)
		}
	}
}

func TestOffloadFlags(t *testing.T) {
	for _, c := range []struct {
		f    uint64
		want int
	}{
		{0, 0},
		{vnet.FeatureCsum | vnet.FeatureHostTSO4, 0}, // the guest's transmit side is not the kernel's concern
		{vnet.FeatureGuestCsum, unix.TUN_F_CSUM},
		{vnet.FeatureGuestTSO4, 0},
		{vnet.FeatureGuestCsum | vnet.FeatureGuestTSO4 | vnet.FeatureGuestECN, unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO_ECN},
		{vnet.FeatureGuestCsum | vnet.FeatureGuestECN, unix.TUN_F_CSUM},
		{vnet.OffloadFeatures, unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6 | unix.TUN_F_TSO_ECN},
	} {
		if got := tap.OffloadFlags(c.f); got != c.want {
			t.Errorf("OffloadFlags(%#x) = %#x, want %#x", c.f, got, c.want)
		}
	}
}

func TestAdopt(t *testing.T) {
	needTap(t)
	open := func(flags uint16) *os.File {
		fd, err := unix.Open(tap.Device, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		ifr, _ := unix.NewIfreq(tapName(t))
		ifr.SetUint16(flags)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			t.Fatal(err)
		}
		return os.NewFile(uintptr(fd), "tun") // blocking, as a received descriptor may be
	}
	f := open(tap.Flags)
	tp, err := tap.Adopt(f)
	if err != nil {
		t.Fatal(err)
	}
	if tp.Name() != tapName(t) {
		t.Fatalf("name %q", tp.Name())
	}
	if n, err := tp.HeaderSize(); err != nil || n != vnet.HeaderLen {
		t.Fatalf("header size %d %v", n, err)
	}
	if err := f.Close(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("the adopted file was not closed: %v", err)
	}
	// The backend's descriptor is in the poller: Run stops on its
	// context with no frame coming.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tp.Run(ctx, &port{frames: make(chan []byte)}) }()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	tp.Close()

	for _, flags := range []uint16{unix.IFF_TAP | unix.IFF_NO_PI, unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR} {
		if _, err := tap.Adopt(open(flags)); !errors.Is(err, tap.ErrNotTap) {
			t.Errorf("Adopt(flags %#x) = %v", flags, err)
		}
	}
	r, w, _ := os.Pipe()
	defer w.Close()
	if _, err := tap.Adopt(r); !errors.Is(err, tap.ErrNotTap) {
		t.Errorf("Adopt(pipe) = %v", err)
	}
}

func TestFramesBothWays(t *testing.T) {
	needTap(t)
	tp := openUp(t)
	ps := newPacketSocket(t, tp.Name())
	p := &port{frames: make(chan []byte, 16)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := tp.Run(ctx, p); err != nil {
			t.Error(err)
		}
	}()
	defer func() { cancel(); wg.Wait() }()

	// Host to guest: a header (no offloads) and the frame.
	want := ethernet(guestMAC, hostMAC, 300)
	ps.send(t, want)
	for {
		got := <-p.frames
		if len(got) < vnet.HeaderLen+vnet.EthHeaderLen || binary.BigEndian.Uint16(got[vnet.HeaderLen+12:]) != testEtherType {
			continue
		}
		if h := vnet.DecodeHeader(got); h.Flags != 0 || h.GSOType != 0 {
			t.Fatalf("header %+v", h)
		}
		if !bytes.Equal(got[vnet.HeaderLen:], want) {
			t.Fatal("frame differs")
		}
		break
	}

	// Guest to host, in pieces as the device gives them.
	frame := ethernet(hostMAC, guestMAC, 1000)
	hdr := make([]byte, vnet.HeaderLen)
	if err := tp.Send([][]byte{hdr, frame[:20], frame[20:500], {}, frame[500:]}); err != nil {
		t.Fatal(err)
	}
	if got := ps.recv(t); !bytes.Equal(got, frame) {
		t.Fatalf("host got %d bytes, want %d", len(got), len(frame))
	}
	// A header the kernel refuses is an error, not a hang.
	bad := vnet.Header{Flags: vnet.HdrNeedsCsum, CsumStart: 2000, CsumOffset: 10}
	bad.Encode(hdr)
	if err := tp.Send([][]byte{hdr, frame}); err == nil {
		t.Error("kernel took a checksum outside the frame")
	}
}

// irqs is a virtio.Interrupts that passes used-buffer notifications to a
// channel.
type irqs struct{ used chan int }

func (i *irqs) UsedBuffer(q int) error { i.used <- q; return nil }
func (i *irqs) ConfigChanged() error   { return nil }
func (i *irqs) NeedsReset()            { panic("the device asked for a reset") }

func TestDeviceOnTap(t *testing.T) {
	needTap(t)
	tp := openUp(t)
	ps := newPacketSocket(t, tp.Name())
	dev, err := vnet.New(tp, vnet.Options{MAC: guestMAC, FilterSourceMAC: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()

	// The driver posts its receive buffers and a frame to send before it
	// starts the device (no event index: every buffer used interrupts).
	const (
		memSize = 1 << 20
		rxBufs  = 200
		bufLen  = 1024
		bufBase = 0x20000
	)
	mem := vt.NewMemory(memSize)
	rx, tx := vt.NewDriver(mem, 256, 0x1000), vt.NewDriver(mem, 256, 0x8000)
	for i := range rxBufs {
		rx.AddChain(vt.Buf{Addr: bufBase + uint64(i)*bufLen, Len: bufLen, Write: true})
	}
	out := ethernet(hostMAC, guestMAC, 1500)
	pkt := append(make([]byte, vnet.HeaderLen), out...)
	txAt := uint64(bufBase + rxBufs*bufLen)
	_ = mem.WriteAt(pkt, txAt)
	tx.AddChain(vt.Buf{Addr: txAt, Len: 40}, vt.Buf{Addr: txAt + 40, Len: uint32(len(pkt) - 40)})
	features := virtio.FeatureVersion1 | vnet.FeatureMAC | vnet.FeatureMrgRxbuf | vnet.OffloadFeatures
	var qs []*virtio.Queue
	for _, d := range []*vt.Driver{rx, tx} {
		q, err := virtio.NewQueue(mem, d.Config(), features)
		if err != nil {
			t.Fatal(err)
		}
		qs = append(qs, q)
	}
	irq := &irqs{used: make(chan int, 2*rxBufs)}
	if err := dev.Activate(virtio.Activation{Mem: mem, Features: features, Queues: qs, IRQ: irq}); err != nil {
		t.Fatal(err)
	}
	dev.Sync()
	if got := ps.recv(t); !bytes.Equal(got, out) {
		t.Fatalf("host got %d bytes, want %d", len(got), len(out))
	}

	in := ethernet(guestMAC, hostMAC, 1400) // over two receive buffers
	ps.send(t, in)
	for {
		if q := <-irq.used; q != vnet.RxQueue {
			continue
		}
		id, n, ok := rx.TakeUsed()
		if !ok {
			t.Fatal("interrupt without a used buffer")
		}
		first := make([]byte, n)
		_ = mem.ReadAt(first, bufBase+uint64(id)*bufLen)
		h := vnet.DecodeHeader(first)
		got := first[vnet.HeaderLen:]
		for range int(h.NumBuffers) - 1 {
			id, n, ok := rx.TakeUsed()
			if !ok {
				t.Fatal("a buffer of the frame missing")
			}
			more := make([]byte, n)
			_ = mem.ReadAt(more, bufBase+uint64(id)*bufLen)
			got = append(got, more...)
		}
		if len(got) < vnet.EthHeaderLen || binary.BigEndian.Uint16(got[12:]) != testEtherType {
			continue // the host's own traffic
		}
		if h.NumBuffers != 2 || !bytes.Equal(got, in) {
			t.Fatalf("guest got %d bytes in %d buffers, want %d in 2", len(got), h.NumBuffers, len(in))
		}
		break
	}
	if s := dev.Stats(); s.TxPackets != 1 || s.RxPackets < 1 || s.TxDropped() != 0 {
		t.Fatalf("stats %+v", s)
	}
}
