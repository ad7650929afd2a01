package net_test

import (
	"bytes"
	"errors"
	"testing"

	vnet "rainforest/vmm/virtio/net"
)

func TestHeaderRoundTrip(t *testing.T) {
	h := vnet.Header{Flags: 1, GSOType: 0x84, HdrLen: 0x0102, GSOSize: 0x0304, CsumStart: 0x0506, CsumOffset: 0x0708, NumBuffers: 0x090A}
	b := make([]byte, vnet.HeaderLen)
	h.Encode(b)
	want := []byte{1, 0x84, 2, 1, 4, 3, 6, 5, 8, 7, 0x0A, 9}
	if !bytes.Equal(b, want) {
		t.Fatalf("Encode = %x, want %x", b, want)
	}
	if got := vnet.DecodeHeader(b); got != h {
		t.Fatalf("DecodeHeader = %+v", got)
	}
}

func TestHeaderChecks(t *testing.T) {
	const frameLen = 1000
	csum := vnet.Header{Flags: vnet.HdrNeedsCsum, CsumStart: 34, CsumOffset: 16}
	tso4 := vnet.Header{Flags: vnet.HdrNeedsCsum, GSOType: vnet.GSOTCPv4, HdrLen: 66, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
	tso6ecn := tso4
	tso6ecn.GSOType = vnet.GSOTCPv6 | vnet.GSOECN
	host := vnet.FeatureCsum | vnet.FeatureHostTSO4 | vnet.FeatureHostTSO6 | vnet.FeatureHostECN
	guest := vnet.FeatureGuestCsum | vnet.FeatureGuestTSO4 | vnet.FeatureGuestTSO6 | vnet.FeatureGuestECN
	with := func(h vnet.Header, f func(*vnet.Header)) vnet.Header { f(&h); return h }
	for _, c := range []struct {
		name     string
		h        vnet.Header
		features uint64
		tx, rx   bool // accepted
	}{
		{"plain", vnet.Header{}, 0, true, true},
		{"plain, num_buffers set", vnet.Header{NumBuffers: 9}, 0, true, true},
		{"checksum", csum, host | guest, true, true},
		{"checksum not negotiated", csum, 0, false, false},
		{"checksum, the other side's feature", csum, guest, false, true},
		{"checksum at the very end", with(csum, func(h *vnet.Header) { h.CsumStart = frameLen - 2; h.CsumOffset = 0 }), host | guest, true, true},
		{"checksum past the end", with(csum, func(h *vnet.Header) { h.CsumStart = frameLen - 1; h.CsumOffset = 0 }), host | guest, false, false},
		{"checksum offset overflows", with(csum, func(h *vnet.Header) { h.CsumStart = 0xFFFF; h.CsumOffset = 0xFFFF }), host | guest, false, false},
		{"data valid", vnet.Header{Flags: vnet.HdrDataValid}, host | guest, false, true},
		{"unknown flag", vnet.Header{Flags: 4}, host | guest, false, false},
		{"TSO4", tso4, host | guest, true, true},
		{"TSO4 not negotiated", tso4, host&^vnet.FeatureHostTSO4 | guest&^vnet.FeatureGuestTSO4, false, false},
		{"TSO6 with ECN", tso6ecn, host | guest, true, true},
		{"TSO6 with ECN, no ECN", tso6ecn, host&^vnet.FeatureHostECN | guest&^vnet.FeatureGuestECN, false, false},
		{"TSO without a partial checksum", with(tso4, func(h *vnet.Header) { h.Flags = 0 }), host | guest, false, false},
		{"TSO without a segment size", with(tso4, func(h *vnet.Header) { h.GSOSize = 0 }), host | guest, false, false},
		{"TSO with hdr_len past the frame", with(tso4, func(h *vnet.Header) { h.HdrLen = frameLen + 1 }), host | guest, false, false},
		{"ECN alone", vnet.Header{GSOType: vnet.GSOECN}, host | guest, false, false},
		{"UDP fragmentation", with(tso4, func(h *vnet.Header) { h.GSOType = vnet.GSOUDP }), host | guest, false, false},
		{"unknown GSO type", with(tso4, func(h *vnet.Header) { h.GSOType = 5 }), host | guest, false, false},
	} {
		errTx := c.h.CheckTx(c.features, frameLen)
		errRx := c.h.CheckRx(c.features, frameLen)
		if (errTx == nil) != c.tx || (errRx == nil) != c.rx {
			t.Errorf("%s: CheckTx = %v, CheckRx = %v; want accepted %v, %v", c.name, errTx, errRx, c.tx, c.rx)
		}
		for _, err := range []error{errTx, errRx} {
			if err != nil && !errors.Is(err, vnet.ErrBadHeader) {
				t.Errorf("%s: %v is not ErrBadHeader", c.name, err)
			}
		}
	}
}

func TestCheckFeatures(t *testing.T) {
	for _, c := range []struct {
		f  uint64
		ok bool
	}{
		{0, true},
		{vnet.OffloadFeatures, true},
		{vnet.FeatureCsum | vnet.FeatureHostTSO4, true},
		{vnet.FeatureHostTSO4, false},
		{vnet.FeatureHostTSO6, false},
		{vnet.FeatureCsum | vnet.FeatureHostECN, false},
		{vnet.FeatureGuestCsum | vnet.FeatureGuestTSO6 | vnet.FeatureGuestECN, true},
		{vnet.FeatureGuestTSO4, false},
		{vnet.FeatureGuestCsum | vnet.FeatureGuestECN, false},
	} {
		if err := vnet.CheckFeatures(c.f); (err == nil) != c.ok || err != nil && !errors.Is(err, vnet.ErrFeatures) {
			t.Errorf("CheckFeatures(%#x) = %v", c.f, err)
		}
	}
}
