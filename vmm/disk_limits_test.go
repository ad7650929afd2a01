package vmm

import (
	"os"
	"path/filepath"
	"testing"

	"rainforest/internal/tokenbucket"
	"rainforest/vmm/config"
	"rainforest/vmm/virtio/blk"
)

// TestDiskLimitsOnEitherPath: a disk's rate limits hold whether the VMM
// opens its backing or is handed it open (a jailed VMM's disks arrive as
// descriptors; an earlier version dropped the limits on that path).
func TestDiskLimitsOnEitherPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	d := config.Disk{ID: "data", Path: path,
		IOPS:      tokenbucket.Limit{Rate: 100, Burst: 10},
		Bandwidth: tokenbucket.Limit{Rate: 1 << 20}}
	for _, handed := range []bool{false, true} {
		var f *os.File
		if handed {
			var err error
			if f, err = os.OpenFile(path, os.O_RDWR, 0); err != nil {
				t.Fatal(err)
			}
		}
		model, closer, err := diskModel(d, f)
		if err != nil {
			t.Fatalf("handed=%v: %v", handed, err)
		}
		iops, bw := model.(*blk.Device).Limits()
		if iops != d.IOPS || bw != d.Bandwidth {
			t.Errorf("handed=%v: limits iops %+v bandwidth %+v; want %+v %+v", handed, iops, bw, d.IOPS, d.Bandwidth)
		}
		closer.Close()
	}
}
