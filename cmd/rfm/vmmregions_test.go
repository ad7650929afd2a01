package main

import (
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"rainforest/rfm/region"
	"rainforest/rfm/vmmctl"
	"rainforest/vmm/shmem/abi"
)

// The attach message's files become device configs: the region mapped,
// this peer's eventfds as its vectors, every other peer's as doorbell
// targets.
func TestBuildRegions(t *testing.T) {
	l, err := region.FICMLayout(4)
	if err != nil {
		t.Fatal(err)
	}
	r, err := region.Create(region.Spec{Name: "ficm", Protocol: abi.ProtocolFICM, Layout: l, Vectors: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	files := func() []*os.File {
		var fs []*os.File
		for _, f := range append([]*os.File{r.MemFile()}, r.Bells()...) {
			fd, err := vmmctl.FD(f)
			if err != nil {
				t.Fatal(err)
			}
			d, err := dupFile(fd)
			if err != nil {
				t.Fatal(err)
			}
			fs = append(fs, d)
		}
		return fs
	}
	regions := []vmmctl.Region{{Name: "ficm", Protocol: abi.ProtocolFICM, Peers: 4, OutputSize: l.OutputSize, Vectors: 2, Self: 2}}
	rm, cfgs, err := buildRegions(regions, files())
	if err != nil {
		t.Fatal(err)
	}
	defer rm.close()
	c := cfgs[0]
	if c.ID != 2 || len(c.Incoming) != 2 || len(c.Peers) != 3 || c.Identity.Name != "ficm" || uint64(len(c.Region)) != l.Size() {
		t.Fatalf("config %+v", c)
	}
	for _, p := range c.Peers {
		if p.Peer == 2 || len(p.Vectors) != 2 {
			t.Errorf("peer %+v", p)
		}
	}
	// The mapping is the region's memory.
	copy(r.Memory()[l.Size()-4:], "same")
	if string(c.Region[l.Size()-4:]) != "same" {
		t.Error("mapping does not share the region's memory")
	}
	// A short memfd, a wrong descriptor count and a bad layout are refused.
	bad := regions[0]
	bad.OutputSize = l.OutputSize * 64 // beyond even a 2 MiB hugetlb memfd
	if _, _, err := buildRegions([]vmmctl.Region{bad}, files()); err == nil || !strings.Contains(err.Error(), "layout needs") {
		t.Errorf("short memory: %v", err)
	}
	if _, _, err := buildRegions(regions, files()[:3]); err == nil {
		t.Error("missing descriptors accepted")
	}
	bad = regions[0]
	bad.OutputSize = 100
	if _, _, err := buildRegions([]vmmctl.Region{bad}, files()); err == nil {
		t.Error("bad layout accepted")
	}
}

// dupFile duplicates a descriptor into a new *os.File.
func dupFile(fd int) (*os.File, error) {
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(d), "dup"), nil
}
