package acpi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// ErrAML is returned (wrapped) when an AML object cannot be encoded, for
// example a malformed name or an over-long package.
var ErrAML = errors.New("acpi: cannot encode AML")

// AML opcodes and prefixes (ACPI 6.x, section 20.2).
const (
	amlZeroOp          = 0x00
	amlOneOp           = 0x01
	amlNameOp          = 0x08
	amlBytePrefix      = 0x0A
	amlWordPrefix      = 0x0B
	amlDWordPrefix     = 0x0C
	amlStringPrefix    = 0x0D
	amlQWordPrefix     = 0x0E
	amlScopeOp         = 0x10
	amlBufferOp        = 0x11
	amlPackageOp       = 0x12
	amlExtOpPrefix     = 0x5B
	amlDeviceOp        = 0x82 // after amlExtOpPrefix
	amlRootChar        = '\\'
	amlDualNamePrefix  = 0x2E
	amlMultiNamePrefix = 0x2F
)

// maxPkgLength is the largest value a 4-byte PkgLength can hold.
const maxPkgLength = 1<<28 - 1

// amlEncoder builds AML byte strings. The first error it meets is kept in
// err and later calls still return well-formed (if meaningless) bytes, so a
// whole tree can be written before checking for failure once.
type amlEncoder struct {
	err error
}

func (e *amlEncoder) fail(format string, args ...any) {
	if e.err == nil {
		e.err = fmt.Errorf("%w: "+format, append([]any{ErrAML}, args...)...)
	}
}

// encodePkgLength encodes a PkgLength for an object whose body (everything
// after the PkgLength itself) is bodyLen bytes long. The encoded value counts
// the PkgLength bytes too.
func encodePkgLength(bodyLen int) ([]byte, error) {
	if bodyLen < 0 {
		return nil, fmt.Errorf("%w: negative package length %d", ErrAML, bodyLen)
	}
	if bodyLen+1 <= 0x3F {
		return []byte{byte(bodyLen + 1)}, nil
	}
	for n := 2; n <= 4; n++ {
		total := bodyLen + n
		if total < 1<<(4+8*(n-1)) {
			out := make([]byte, n)
			out[0] = byte(n-1)<<6 | byte(total&0x0F)
			for i := 1; i < n; i++ {
				out[i] = byte(total >> (4 + 8*(i-1)))
			}
			return out, nil
		}
	}
	return nil, fmt.Errorf("%w: package length %d exceeds %d", ErrAML, bodyLen, maxPkgLength)
}

// pkg returns op, PkgLength(body), body.
func (e *amlEncoder) pkg(op []byte, body []byte) []byte {
	pl, err := encodePkgLength(len(body))
	if err != nil {
		if e.err == nil {
			e.err = err
		}
		pl = []byte{0}
	}
	out := make([]byte, 0, len(op)+len(pl)+len(body))
	out = append(out, op...)
	out = append(out, pl...)
	return append(out, body...)
}

// nameSeg encodes one 1-4 character name segment, padded with '_'.
func (e *amlEncoder) nameSeg(s string) []byte {
	if len(s) == 0 || len(s) > 4 {
		e.fail("name segment %q must be 1-4 characters", s)
		return []byte("____")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c == '_' || (c >= 'A' && c <= 'Z') || (i > 0 && c >= '0' && c <= '9')
		if !ok {
			e.fail("invalid character %q in name segment %q", c, s)
			return []byte("____")
		}
	}
	return []byte(s + strings.Repeat("_", 4-len(s)))
}

// nameString encodes a NameString such as "_HID", "PCI0.COM1" or "\_SB.PCI0".
func (e *amlEncoder) nameString(path string) []byte {
	var out []byte
	if strings.HasPrefix(path, `\`) {
		out = append(out, amlRootChar)
		path = path[1:]
	}
	if path == "" {
		return append(out, amlZeroOp) // NullName
	}
	segs := strings.Split(path, ".")
	switch {
	case len(segs) == 2:
		out = append(out, amlDualNamePrefix)
	case len(segs) > 2:
		if len(segs) > 255 {
			e.fail("name %q has too many segments", path)
			segs = segs[:255]
		}
		out = append(out, amlMultiNamePrefix, byte(len(segs)))
	}
	for _, s := range segs {
		out = append(out, e.nameSeg(s)...)
	}
	return out
}

// integer encodes v in the shortest integer form.
func (e *amlEncoder) integer(v uint64) []byte {
	switch {
	case v == 0:
		return []byte{amlZeroOp}
	case v == 1:
		return []byte{amlOneOp}
	case v <= 0xFF:
		return []byte{amlBytePrefix, byte(v)}
	case v <= 0xFFFF:
		return binary.LittleEndian.AppendUint16([]byte{amlWordPrefix}, uint16(v))
	case v <= 0xFFFFFFFF:
		return binary.LittleEndian.AppendUint32([]byte{amlDWordPrefix}, uint32(v))
	default:
		return binary.LittleEndian.AppendUint64([]byte{amlQWordPrefix}, v)
	}
}

// str encodes an ASCII string constant.
func (e *amlEncoder) str(s string) []byte {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 || s[i] > 0x7F {
			e.fail("string %q must be ASCII without NUL", s)
			return []byte{amlStringPrefix, 0}
		}
	}
	out := append([]byte{amlStringPrefix}, s...)
	return append(out, 0)
}

// eisaID compresses a 7-character PNP id ("PNP0A08") into its 32-bit form.
func eisaID(id string) (uint32, error) {
	if len(id) != 7 {
		return 0, fmt.Errorf("%w: EISA id %q must be 7 characters", ErrAML, id)
	}
	var v uint32
	for i := 0; i < 3; i++ {
		c := id[i]
		if c < 'A' || c > 'Z' {
			return 0, fmt.Errorf("%w: EISA id %q: %q is not an upper-case letter", ErrAML, id, c)
		}
		v = v<<5 | uint32(c-0x40)
	}
	for i := 3; i < 7; i++ {
		var d byte
		switch c := id[i]; {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, fmt.Errorf("%w: EISA id %q: %q is not a hex digit", ErrAML, id, c)
		}
		v = v<<4 | uint32(d)
	}
	// The id is stored big-endian; AML integers are little-endian.
	return v>>24 | (v>>8)&0xFF00 | (v<<8)&0xFF0000 | v<<24, nil
}

// eisaIDValue encodes EisaId("...") as a DWord integer.
func (e *amlEncoder) eisaIDValue(id string) []byte {
	v, err := eisaID(id)
	if err != nil && e.err == nil {
		e.err = err
	}
	return binary.LittleEndian.AppendUint32([]byte{amlDWordPrefix}, v)
}

// name encodes Name(name, value).
func (e *amlEncoder) name(name string, value []byte) []byte {
	out := append([]byte{amlNameOp}, e.nameString(name)...)
	return append(out, value...)
}

// pack encodes Package(){elems...}.
func (e *amlEncoder) pack(elems ...[]byte) []byte {
	if len(elems) > 255 {
		e.fail("package with %d elements", len(elems))
		elems = elems[:255]
	}
	body := []byte{byte(len(elems))}
	for _, el := range elems {
		body = append(body, el...)
	}
	return e.pkg([]byte{amlPackageOp}, body)
}

// buffer encodes Buffer(len(data)){data}.
func (e *amlEncoder) buffer(data []byte) []byte {
	body := append(e.integer(uint64(len(data))), data...)
	return e.pkg([]byte{amlBufferOp}, body)
}

// device encodes Device(name){body...}.
func (e *amlEncoder) device(name string, body ...[]byte) []byte {
	b := e.nameString(name)
	for _, x := range body {
		b = append(b, x...)
	}
	return e.pkg([]byte{amlExtOpPrefix, amlDeviceOp}, b)
}

// scope encodes Scope(name){body...}.
func (e *amlEncoder) scope(name string, body ...[]byte) []byte {
	b := e.nameString(name)
	for _, x := range body {
		b = append(b, x...)
	}
	return e.pkg([]byte{amlScopeOp}, b)
}

// Resource descriptors (ACPI 6.x, section 6.4).

// resourceTemplate encodes ResourceTemplate(){descs...}: a buffer holding the
// descriptors and an End Tag (checksum 0, meaning "not checked").
func (e *amlEncoder) resourceTemplate(descs ...[]byte) []byte {
	var data []byte
	for _, d := range descs {
		data = append(data, d...)
	}
	data = append(data, 0x79, 0x00)
	return e.buffer(data)
}

// resIO encodes IO(Decode16, min, max, align, length).
func resIO(min, max uint16, align, length uint8) []byte {
	out := []byte{0x47, 0x01}
	out = binary.LittleEndian.AppendUint16(out, min)
	out = binary.LittleEndian.AppendUint16(out, max)
	return append(out, align, length)
}

// resIRQNoFlags encodes IRQNoFlags(){irqs...} (edge, active-high, exclusive).
func resIRQNoFlags(irqs ...uint8) []byte {
	var mask uint16
	for _, irq := range irqs {
		if irq < 16 {
			mask |= 1 << irq
		}
	}
	return binary.LittleEndian.AppendUint16([]byte{0x22}, mask)
}

// Address space resource types and flags.
const (
	resTypeMemory = 0
	resTypeIO     = 1
	resTypeBus    = 2
	// General flags: ResourceProducer, PosDecode, MinFixed, MaxFixed.
	resFlagsProducerFixed = 0x0C
	// I/O type-specific flags: EntireRange.
	resIOEntireRange = 0x03
	// Memory type-specific flags: ReadWrite, NonCacheable.
	resMemReadWriteNonCacheable = 0x01
)

// resWordAddress encodes a Word Address Space Descriptor (WordBusNumber,
// WordIO) for [min, max] with no translation and granularity 0.
func resWordAddress(resType, typeFlags byte, min, max uint16) []byte {
	out := []byte{0x88, 13, 0, resType, resFlagsProducerFixed, typeFlags}
	for _, v := range []uint16{0, min, max, 0, max - min + 1} {
		out = binary.LittleEndian.AppendUint16(out, v)
	}
	return out
}

// resWordBusNumber encodes WordBusNumber(ResourceProducer, MinFixed, MaxFixed,
// PosDecode, 0, min, max, 0, max-min+1).
func resWordBusNumber(min, max uint16) []byte {
	return resWordAddress(resTypeBus, 0, min, max)
}

// resWordIO encodes WordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode,
// EntireRange, 0, min, max, 0, max-min+1).
func resWordIO(min, max uint16) []byte {
	return resWordAddress(resTypeIO, resIOEntireRange, min, max)
}

// resDWordMemory encodes DWordMemory(ResourceProducer, PosDecode, MinFixed,
// MaxFixed, NonCacheable, ReadWrite, 0, min, max, 0, max-min+1).
func resDWordMemory(min, max uint32) []byte {
	out := []byte{0x87, 23, 0, resTypeMemory, resFlagsProducerFixed, resMemReadWriteNonCacheable}
	for _, v := range []uint32{0, min, max, 0, max - min + 1} {
		out = binary.LittleEndian.AppendUint32(out, v)
	}
	return out
}

// Opcodes of the executable AML the hotplug methods use (ACPI 6.x, sections
// 20.2.5 and 20.2.6).
const (
	amlMethodOp   = 0x14
	amlLocal0Op   = 0x60 // Local0..Local7: 0x60..0x67
	amlArg0Op     = 0x68 // Arg0..Arg6: 0x68..0x6E
	amlStoreOp    = 0x70
	amlAndOp      = 0x7B
	amlNotifyOp   = 0x86
	amlIfOp       = 0xA0
	amlOpRegionOp = 0x80 // after amlExtOpPrefix
	amlFieldOp    = 0x81 // after amlExtOpPrefix

	maxMethodArgs = 7
	numLocals     = 8
)

// Operation region spaces (ACPI 6.x, 19.6.100).
const regionSystemIO = 0x01

// FieldFlags (ACPI 6.x, 20.2.5.2): AccessType in bits 0-3, LockRule in
// bit 4, UpdateRule in bits 5-6.
const (
	fieldAccessDWord  = 3
	fieldWriteAsZeros = 2 << 5 // NoLock is 0
)

// method encodes Method(name, args, serialized){body...}. args is 0..7;
// the sync level is 0.
func (e *amlEncoder) method(name string, args int, serialized bool, body ...[]byte) []byte {
	if args < 0 || args > maxMethodArgs {
		e.fail("method %s: %d arguments, at most %d", name, args, maxMethodArgs)
		args = 0
	}
	flags := byte(args)
	if serialized {
		flags |= 1 << 3
	}
	b := append(e.nameString(name), flags)
	for _, x := range body {
		b = append(b, x...)
	}
	return e.pkg([]byte{amlMethodOp}, b)
}

// local returns the LocalN object (N = 0..7).
func (e *amlEncoder) local(n int) []byte {
	if n < 0 || n >= numLocals {
		e.fail("no Local%d", n)
		n = 0
	}
	return []byte{amlLocal0Op + byte(n)}
}

// arg returns the ArgN object (N = 0..6).
func (e *amlEncoder) arg(n int) []byte {
	if n < 0 || n >= maxMethodArgs {
		e.fail("no Arg%d", n)
		n = 0
	}
	return []byte{amlArg0Op + byte(n)}
}

// store encodes Store(src, dst): src a TermArg, dst a SuperName (a
// NameString, LocalN or ArgN).
func (e *amlEncoder) store(src, dst []byte) []byte {
	out := append([]byte{amlStoreOp}, src...)
	return append(out, dst...)
}

// and encodes And(a, b, target); a nil target is NullName (the result is
// only returned).
func (e *amlEncoder) and(a, b, target []byte) []byte {
	if target == nil {
		target = []byte{amlZeroOp}
	}
	out := append([]byte{amlAndOp}, a...)
	out = append(out, b...)
	return append(out, target...)
}

// ifThen encodes If(predicate){body...} without an Else.
func (e *amlEncoder) ifThen(predicate []byte, body ...[]byte) []byte {
	b := append([]byte(nil), predicate...)
	for _, x := range body {
		b = append(b, x...)
	}
	return e.pkg([]byte{amlIfOp}, b)
}

// notify encodes Notify(object, value): object a SuperName naming a
// device, value a TermArg.
func (e *amlEncoder) notify(object, value []byte) []byte {
	out := append([]byte{amlNotifyOp}, object...)
	return append(out, value...)
}

// call encodes a MethodInvocation: the method's NameString followed by its
// arguments. The AML parser takes the argument count from the method's
// declaration, so len(args) must match it.
func (e *amlEncoder) call(name string, args ...[]byte) []byte {
	out := e.nameString(name)
	for _, a := range args {
		out = append(out, a...)
	}
	return out
}

// opRegion encodes OperationRegion(name, space, offset, length).
func (e *amlEncoder) opRegion(name string, space byte, offset, length uint64) []byte {
	out := append([]byte{amlExtOpPrefix, amlOpRegionOp}, e.nameString(name)...)
	out = append(out, space)
	out = append(out, e.integer(offset)...)
	return append(out, e.integer(length)...)
}

// fieldUnit is one element of a Field list: a named field of bits bits, or
// with an empty name a reserved gap of bits bits.
type fieldUnit struct {
	name string
	bits int
}

// field encodes Field(region, flags){units...}.
func (e *amlEncoder) field(region string, flags byte, units ...fieldUnit) []byte {
	b := append(e.nameString(region), flags)
	for _, u := range units {
		if u.name == "" {
			b = append(b, amlZeroOp) // ReservedField
		} else {
			b = append(b, e.nameSeg(u.name)...)
		}
		n, err := encodeFieldLength(u.bits)
		if err != nil {
			if e.err == nil {
				e.err = err
			}
			n = []byte{0}
		}
		b = append(b, n...)
	}
	return e.pkg([]byte{amlExtOpPrefix, amlFieldOp}, b)
}

// encodeFieldLength encodes a field element's size in bits. It uses the
// PkgLength encoding but, unlike a package's length, the value is the bit
// count itself: it does not count its own bytes.
func encodeFieldLength(bits int) ([]byte, error) {
	if bits <= 0 || bits > maxPkgLength {
		return nil, fmt.Errorf("%w: field length %d bits", ErrAML, bits)
	}
	if bits <= 0x3F {
		return []byte{byte(bits)}, nil
	}
	for n := 2; n <= 4; n++ {
		if bits < 1<<(4+8*(n-1)) {
			out := make([]byte, n)
			out[0] = byte(n-1)<<6 | byte(bits&0x0F)
			for i := 1; i < n; i++ {
				out[i] = byte(bits >> (4 + 8*(i-1)))
			}
			return out, nil
		}
	}
	return nil, fmt.Errorf("%w: field length %d bits", ErrAML, bits)
}
