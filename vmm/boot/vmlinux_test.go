package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// lz4Payload compresses data as the kernel build does: an LZ4 legacy frame
// followed by the uncompressed size as a little-endian uint32.
func lz4Payload(t testing.TB, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	w := lz4.NewWriter(&b)
	if err := w.Apply(lz4.LegacyOption(true)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.AppendUint32(b.Bytes(), uint32(len(data)))
}

func TestExtractVmlinuxSynthetic(t *testing.T) {
	vmlinux := pvhKernel()
	o := defaultBz()
	o.payload = lz4Payload(t, vmlinux)
	bz := makeBzImage(o)
	got, err := ExtractVmlinux(bz)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, vmlinux) {
		t.Fatalf("extracted %d bytes, differ from the %d-byte original", len(got), len(vmlinux))
	}
	res, err := Load(newMem(t, 32*mib), Params{Kernel: bytes.NewReader(got), KernelSize: int64(len(got)), RAMSize: 32 * mib})
	if err != nil || res.Format != FormatPVH {
		t.Fatalf("loading extracted vmlinux: %v", err)
	}

	bad := func(name string, payload []byte, want error) {
		t.Helper()
		o := defaultBz()
		o.payload = payload
		if _, err := ExtractVmlinux(makeBzImage(o)); !errors.Is(err, want) {
			t.Errorf("%s: err = %v, want %v", name, err, want)
		}
	}
	bad("gzip", []byte{0x1F, 0x8B, 8, 0, 1, 2, 3, 4}, ErrUnsupportedCompression)
	bad("not ELF", lz4Payload(t, bytes.Repeat([]byte("not an elf"), 100)), ErrMalformed)
	p := lz4Payload(t, vmlinux)
	binary.LittleEndian.PutUint32(p[len(p)-4:], uint32(len(vmlinux)+1))
	bad("size mismatch", p, ErrMalformed)
	p = lz4Payload(t, vmlinux)
	bad("cut frame", append(p[:len(p)/2:len(p)/2], p[len(p)-4:]...), ErrMalformed)
	if _, err := ExtractVmlinux([]byte("garbage")); err == nil {
		t.Error("garbage: no error")
	}
	// payload_length beyond the end of the file.
	o = defaultBz()
	o.payload = lz4Payload(t, vmlinux)
	bz = makeBzImage(o)
	if _, err := ExtractVmlinux(bz[:len(bz)-10]); !errors.Is(err, ErrTruncated) {
		t.Errorf("cut bzImage: %v", err)
	}
}

// kernelDir is where CI puts the real Debian kernel images: $RF_KERNEL_DIR,
// or build/images at the module root.
func kernelDir() string {
	if d := os.Getenv("RF_KERNEL_DIR"); d != "" {
		return d
	}
	return filepath.Join("..", "..", "build", "images")
}

func readKernelFile(t *testing.T, name string) []byte {
	t.Helper()
	path := filepath.Join(kernelDir(), name)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("real kernel %s not present (set RF_KERNEL_DIR or build the images first)", path)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRealKernel(t *testing.T) {
	bz := readKernelFile(t, "bzImage")
	const ram = 512 * mib
	initrd := bytes.Repeat([]byte{0x07}, 3*mib+123)

	t.Run("bzImage", func(t *testing.T) {
		mem := newMem(t, ram)
		res, err := Load(mem, Params{Kernel: bytes.NewReader(bz), KernelSize: int64(len(bz)),
			Initrd: bytes.NewReader(initrd), InitrdSize: int64(len(initrd)),
			Cmdline: "console=ttyS0 quiet", RAMSize: ram, RSDPAddr: RSDPAddr})
		if err != nil {
			t.Fatal(err)
		}
		if res.Format != FormatBzImage || res.Entry != res.KernelStart+0x200 || res.CPU.RSI != ZeroPageAddr {
			t.Errorf("result %+v", res)
		}
		setupSects := uint64(bz[0x1F1])
		kOff := (setupSects + 1) * 512
		if !bytes.Equal(mustBytes(t, mem, res.KernelStart, 4096), bz[kOff:kOff+4096]) {
			t.Error("protected-mode kernel not at its load address")
		}
		if res.InitrdAddr < res.KernelEnd || res.InitrdAddr+res.InitrdSize > ram {
			t.Errorf("initrd [%#x,+%#x) overlaps kernel [%#x,%#x) or leaves RAM", res.InitrdAddr, res.InitrdSize, res.KernelStart, res.KernelEnd)
		}
		zp := mustBytes(t, mem, ZeroPageAddr, 0x1000)
		if string(zp[0x202:0x206]) != "HdrS" || zp[0x210] != 0xFF || zp[0x1E8] != 4 {
			t.Error("zero page incomplete")
		}
		t.Logf("bzImage protocol %#x: loaded at %#x, needs up to %#x, entry %#x, initrd at %#x",
			binary.LittleEndian.Uint16(bz[0x206:]), res.KernelStart, res.KernelEnd, res.Entry, res.InitrdAddr)
	})

	vmlinux, err := ExtractVmlinux(bz)
	if err != nil {
		t.Fatalf("ExtractVmlinux: %v", err)
	}
	t.Logf("extracted %d-byte vmlinux", len(vmlinux))
	loadPVHKernel := func(t *testing.T, k []byte) {
		mem := newMem(t, ram)
		res, err := Load(mem, Params{Kernel: bytes.NewReader(k), KernelSize: int64(len(k)),
			Initrd: bytes.NewReader(initrd), InitrdSize: int64(len(initrd)),
			Cmdline: "console=ttyS0", RAMSize: ram, RSDPAddr: RSDPAddr})
		if err != nil {
			t.Fatal(err)
		}
		if res.Format != FormatPVH || res.Entry < res.KernelStart || res.Entry >= res.KernelEnd {
			t.Errorf("PVH entry %#x outside kernel [%#x,%#x)", res.Entry, res.KernelStart, res.KernelEnd)
		}
		if m, _ := mem.Uint32(StartInfoAddr); m != StartInfoMagic {
			t.Errorf("start_info magic %#x", m)
		}
		t.Logf("PVH kernel [%#x,%#x), entry %#x, initrd at %#x", res.KernelStart, res.KernelEnd, res.Entry, res.InitrdAddr)
	}
	t.Run("ExtractVmlinux", func(t *testing.T) { loadPVHKernel(t, vmlinux) })
	t.Run("vmlinux", func(t *testing.T) {
		k := readKernelFile(t, "vmlinux")
		if !bytes.Equal(k, vmlinux) {
			t.Errorf("vmlinux file (%d bytes) differs from ExtractVmlinux(bzImage) (%d bytes)", len(k), len(vmlinux))
		}
		loadPVHKernel(t, k)
	})
}
