package boot

import (
	"bytes"
	"testing"

	"rainforest/vmm/guestmem"
)

// FuzzLoadKernel feeds arbitrary kernel and initrd bytes through format
// detection, both loaders and ExtractVmlinux on fake guest memory. Any
// outcome but a panic is fine; a success must respect guest RAM.
func FuzzLoadKernel(f *testing.F) {
	f.Add(pvhKernel(), []byte("initrd"), "console=ttyS0")
	f.Add(makeBzImage(defaultBz()), []byte{}, "")
	o := defaultBz()
	o.payload = lz4Payload(f, pvhKernel())
	f.Add(makeBzImage(o), []byte{1, 2, 3}, "quiet")
	f.Add([]byte("\x7fELF\x02\x01\x01"), []byte{}, "")
	f.Add(bytes.Repeat([]byte{0xFF}, 0x300), []byte{}, "")
	const ram = 2 << 20
	f.Fuzz(func(t *testing.T, kernel, initrd []byte, cmdline string) {
		mem, err := guestmem.New(guestmem.Region{GPA: 0, Data: make([]byte, ram)})
		if err != nil {
			t.Fatal(err)
		}
		p := Params{Kernel: bytes.NewReader(kernel), KernelSize: int64(len(kernel)), Cmdline: cmdline, RAMSize: ram}
		if len(initrd) > 0 {
			p.Initrd, p.InitrdSize = bytes.NewReader(initrd), int64(len(initrd))
		}
		res, err := Load(mem, p)
		if err == nil {
			if res.KernelEnd > ram || res.InitrdAddr+res.InitrdSize > ram {
				t.Fatalf("loaded outside RAM: %+v", res)
			}
			if res.InitrdSize != 0 && res.InitrdAddr < res.KernelEnd && res.InitrdAddr+res.InitrdSize > res.KernelStart {
				t.Fatalf("initrd overlaps kernel: %+v", res)
			}
		}
		if _, err := DetectFormat(bytes.NewReader(kernel), int64(len(kernel))); err == nil {
			ExtractVmlinux(kernel) //nolint:errcheck // only must not panic
		}
	})
}
