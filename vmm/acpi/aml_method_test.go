package acpi

import (
	"bytes"
	"errors"
	"testing"
)

// The byte strings below were worked out by hand from ACPI 6.x section 20
// and checked against the iasl disassembly of a built DSDT.
func TestAMLMethodPrimitives(t *testing.T) {
	var e amlEncoder
	cases := []struct {
		name      string
		got, want []byte
	}{
		{"Local0", e.local(0), []byte{0x60}},
		{"Local7", e.local(7), []byte{0x67}},
		{"Arg0", e.arg(0), []byte{0x68}},
		{"Arg6", e.arg(6), []byte{0x6E}},
		// Store(0x02, PCEJ)
		{"Store", e.store(e.integer(2), e.nameString("PCEJ")), []byte{0x70, 0x0A, 0x02, 'P', 'C', 'E', 'J'}},
		// And(Arg0, 0x80000000, Zero) and And(Local1, One, Local2)
		{"And", e.and(e.arg(0), e.integer(1<<31), nil), []byte{0x7B, 0x68, 0x0C, 0x00, 0x00, 0x00, 0x80, 0x00}},
		{"AndTarget", e.and(e.local(1), e.integer(1), e.local(2)), []byte{0x7B, 0x61, 0x01, 0x62}},
		// Notify(S01, Arg1)
		{"Notify", e.notify(e.nameString("S01"), e.arg(1)), []byte{0x86, 'S', '0', '1', '_', 0x69}},
		// If(And(Arg0, 0x02)){Notify(S01, Arg1)}: PkgLength 1 + 5 + 6.
		{"If", e.ifThen(e.and(e.arg(0), e.integer(2), nil), e.notify(e.nameString("S01"), e.arg(1))),
			[]byte{0xA0, 0x0C, 0x7B, 0x68, 0x0A, 0x02, 0x00, 0x86, 'S', '0', '1', '_', 0x69}},
		// Method(_EJ0, 1, NotSerialized){Store(0x02, PCEJ)}: PkgLength 1 + 4 + 1 + 7.
		{"Method", e.method("_EJ0", 1, false, e.store(e.integer(2), e.nameString("PCEJ"))),
			[]byte{0x14, 0x0D, '_', 'E', 'J', '0', 0x01, 0x70, 0x0A, 0x02, 'P', 'C', 'E', 'J'}},
		// Method(PCNT, 0, Serialized){}
		{"MethodSerialized", e.method("PCNT", 0, true), []byte{0x14, 0x06, 'P', 'C', 'N', 'T', 0x08}},
		{"MethodArgs7", e.method("M7", 7, false), []byte{0x14, 0x06, 'M', '7', '_', '_', 0x07}},
		// DVNT(Local0, One) and \_SB.PCI0.PCNT()
		{"Call", e.call("DVNT", e.local(0), e.integer(1)), []byte{'D', 'V', 'N', 'T', 0x60, 0x01}},
		{"CallPath", e.call(`\_SB.PCI0.PCNT`), []byte("\\\x2f\x03_SB_PCI0PCNT")},
		// OperationRegion(PCHP, SystemIO, 0x620, 0x0C)
		{"OpRegion", e.opRegion("PCHP", regionSystemIO, 0x620, 12),
			[]byte{0x5B, 0x80, 'P', 'C', 'H', 'P', 0x01, 0x0B, 0x20, 0x06, 0x0A, 0x0C}},
		// Field(PCHP, DWordAcc, NoLock, WriteAsZeros){PCIU, 32, , 32, PCEJ, 64}
		{"Field", e.field("PCHP", fieldAccessDWord|fieldWriteAsZeros,
			fieldUnit{"PCIU", 32}, fieldUnit{"", 32}, fieldUnit{"PCEJ", 64}),
			[]byte{0x5B, 0x81, 0x13, 'P', 'C', 'H', 'P', 0x43,
				'P', 'C', 'I', 'U', 0x20, 0x00, 0x20, 'P', 'C', 'E', 'J', 0x40, 0x04}},
	}
	for _, c := range cases {
		if !bytes.Equal(c.got, c.want) {
			t.Errorf("%s: % x, want % x", c.name, c.got, c.want)
		}
	}
	if e.err != nil {
		t.Fatalf("unexpected error: %v", e.err)
	}
}

func TestAMLMethodPrimitivesReject(t *testing.T) {
	for name, f := range map[string]func(e *amlEncoder){
		"Local8":   func(e *amlEncoder) { e.local(8) },
		"Local-1":  func(e *amlEncoder) { e.local(-1) },
		"Arg7":     func(e *amlEncoder) { e.arg(7) },
		"8 args":   func(e *amlEncoder) { e.method("M", 8, false) },
		"field 0":  func(e *amlEncoder) { e.field("R", 0, fieldUnit{"F", 0}) },
		"bad name": func(e *amlEncoder) { e.field("R", 0, fieldUnit{"TOOLONG", 8}) },
	} {
		var e amlEncoder
		f(&e)
		if !errors.Is(e.err, ErrAML) {
			t.Errorf("%s: err %v", name, e.err)
		}
	}
}

func TestFieldLength(t *testing.T) {
	for _, c := range []struct {
		bits int
		want []byte
	}{
		{1, []byte{0x01}}, {32, []byte{0x20}}, {63, []byte{0x3F}},
		{64, []byte{0x40, 0x04}}, {0x123, []byte{0x43, 0x12}},
		{0xFFF, []byte{0x4F, 0xFF}}, {0x1000, []byte{0x80, 0x00, 0x01}},
	} {
		got, err := encodeFieldLength(c.bits)
		if err != nil || !bytes.Equal(got, c.want) {
			t.Errorf("encodeFieldLength(%#x) = % x, %v; want % x", c.bits, got, err, c.want)
		}
	}
	for _, bad := range []int{0, -1, maxPkgLength + 1} {
		if _, err := encodeFieldLength(bad); !errors.Is(err, ErrAML) {
			t.Errorf("encodeFieldLength(%d): err %v", bad, err)
		}
	}
}
