package vmm

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"rainforest/vmm/config"
	"rainforest/vmm/virtio/blk"
)

// TestCheckDisks: a disk may be a regular file or a block device; a
// directory or a character device is refused before anything else.
func TestCheckDisks(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("not a kernel"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{dir, "/dev/null"} {
		c := LinuxConfig{Kernel: kernel, Disks: []config.Disk{{Path: kernel}, {Path: bad}}}
		if err := c.Check(); !errors.Is(err, blk.ErrFileType) {
			t.Errorf("disk %s: %v", bad, err)
		}
	}
	st, err := os.Stat("/dev/loop0")
	if err != nil || st.Mode()&os.ModeDevice == 0 || st.Mode()&os.ModeCharDevice != 0 {
		t.Skip("no block device /dev/loop0 to check")
	}
	c := LinuxConfig{Kernel: kernel, Disks: []config.Disk{{Path: "/dev/loop0"}}}
	if err := c.Check(); errors.Is(err, blk.ErrFileType) {
		t.Fatalf("block device refused: %v", err)
	}
}
