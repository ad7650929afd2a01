package supervisor

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A subOS made from an image boots its own copy (holes kept), and the
// copy goes with it.
func TestImageCopy(t *testing.T) {
	act, l := &fakeActuator{}, &fakeLauncher{}
	dir := t.TempDir()
	s := newTestSupervisor(t, dir, act, l)
	defer s.Close()
	image := filepath.Join(t.TempDir(), "debian.img")
	f, _ := os.Create(image)
	f.WriteAt([]byte("superblock"), 1024)
	f.WriteAt([]byte("tail"), 64<<20)
	f.Close()
	spec := testSpec(t, "deb", 1)
	spec.Image = image
	info, err := s.Create(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	copyPath := s.imageCopyPath("deb")
	doc := l.proc(info.PID).doc
	if len(doc.Disks) != 1 || doc.Disks[0].ID != "root" || doc.Disks[0].ReadOnly || !strings.HasPrefix(doc.Append, "root=/dev/vda") {
		t.Fatalf("disks %+v append %q", doc.Disks, doc.Append)
	}
	b, _ := os.ReadFile(copyPath)
	if len(b) != 64<<20+4 || !bytes.Equal(b[1024:1034], []byte("superblock")) || string(b[64<<20:]) != "tail" {
		t.Errorf("the copy is %d bytes", len(b))
	}
	var st syscall.Stat_t
	if syscall.Stat(copyPath, &st) == nil && st.Blocks*512 > 8<<20 {
		t.Errorf("the copy takes %d bytes: its holes were filled", st.Blocks*512)
	}
	if err := s.Destroy(context.Background(), "deb"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(copyPath); !os.IsNotExist(err) {
		t.Errorf("the copy outlived its subOS: %v", err)
	}
	spec.Image = filepath.Join(t.TempDir(), "nope.img")
	if probs := s.Check(spec); len(probs) == 0 || probs[0].Field != "image" {
		t.Errorf("check of a missing image: %+v", probs)
	}
}
