package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// validate runs Validate and Load on img, which must agree.
func validate(t *testing.T, img []byte) error {
	t.Helper()
	_, verr := Validate(bytes.NewReader(img), int64(len(img)))
	_, lerr := Load(newMem(t, 64*mib), Params{Kernel: bytes.NewReader(img), KernelSize: int64(len(img)), RAMSize: 64 * mib})
	if (verr == nil) != (lerr == nil) {
		t.Errorf("Validate says %v, Load says %v", verr, lerr)
	}
	return verr
}

// A bzImage shorter than its setup header says (setup sectors plus
// syssize*16 bytes of protected-mode kernel) is refused, naming both sizes;
// a longer one (a signature appended) is fine.
func TestBzImageTruncated(t *testing.T) {
	img := makeBzImage(defaultBz())
	want := uint64(len(img))
	if got := uint64(3*512) + uint64(binary.LittleEndian.Uint32(img[hdrSysSize:]))*16; got != want {
		t.Fatalf("test image: %d bytes, header says %d", want, got)
	}
	if err := validate(t, img); err != nil {
		t.Fatalf("whole image: %v", err)
	}
	if err := validate(t, append(img[:len(img):len(img)], bytes.Repeat([]byte{0x5A}, 1472)...)); err != nil {
		t.Errorf("image with a signature appended: %v", err)
	}
	for _, n := range []int{len(img) - 1, len(img) - 16, 3*512 + 1} {
		err := validate(t, img[:n])
		msg := fmt.Sprintf("bzImage truncated: %d bytes, header says %d", n, want)
		if !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), msg) {
			t.Errorf("cut to %d bytes: %v; want ErrTruncated saying %q", n, err, msg)
		}
	}

	// A header claiming more kernel than there is.
	lying := bytes.Clone(img)
	binary.LittleEndian.PutUint32(lying[hdrSysSize:], 1<<28)
	if err := validate(t, lying); !errors.Is(err, ErrTruncated) ||
		!strings.Contains(err.Error(), fmt.Sprintf("header says %d", 3*512+uint64(1<<28)*16)) {
		t.Errorf("syssize past the end: %v", err)
	}
	binary.LittleEndian.PutUint32(lying[hdrSysSize:], 0)
	if err := validate(t, lying); !errors.Is(err, ErrMalformed) {
		t.Errorf("syssize 0: %v; want ErrMalformed", err)
	}

	// setup_sects 0 means 4.
	o := defaultBz()
	o.setupSects = 4
	four := makeBzImage(o)
	four[hdrSetupSects] = 0
	if err := validate(t, four); err != nil {
		t.Errorf("setup_sects 0: %v", err)
	}
	n := len(four) - 16
	err := validate(t, four[:n])
	msg := fmt.Sprintf("bzImage truncated: %d bytes, header says %d (2560 of setup", n, len(four))
	if !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), msg) {
		t.Errorf("setup_sects 0, cut: %v; want %q", err, msg)
	}
}

// The real kernel cut anywhere inside what its header declares is refused
// before anything is loaded; cut just after, it still validates.
func TestRealBzImageTruncated(t *testing.T) {
	bz := readKernelFile(t, "bzImage")
	h, err := parseSetupHeader(bytes.NewReader(bz), int64(len(bz)))
	if err != nil {
		t.Fatal(err)
	}
	declared := h.fileSize()
	if declared > uint64(len(bz)) || declared < uint64(len(bz))/2 {
		t.Fatalf("header says %d bytes, file has %d", declared, len(bz))
	}
	t.Logf("real bzImage: %d bytes, header says %d", len(bz), declared)
	if _, err := Validate(bytes.NewReader(bz[:declared]), int64(declared)); err != nil {
		t.Errorf("cut to the declared %d bytes: %v", declared, err)
	}
	for _, n := range []uint64{declared - 1, declared - 4096, declared / 2, h.kernelOffset() + 1} {
		_, err := Validate(bytes.NewReader(bz[:n]), int64(n))
		msg := fmt.Sprintf("bzImage truncated: %d bytes, header says %d", n, declared)
		if !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), msg) {
			t.Errorf("cut to %d bytes: %v; want %q", n, err, msg)
		}
	}
	n := declared - 1
	if _, err := Load(newMem(t, 512*mib), Params{Kernel: bytes.NewReader(bz[:n]), KernelSize: int64(n), RAMSize: 512 * mib}); !errors.Is(err, ErrTruncated) {
		t.Errorf("Load of the real bzImage cut by one byte: %v; want ErrTruncated", err)
	}
}
