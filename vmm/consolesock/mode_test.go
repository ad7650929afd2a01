package consolesock

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// The console socket is 0600 whatever the umask, and from birth (Listen
// binds it through peercred.ListenUnix).
func TestListenMode(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "c.sock")
	s, err := Listen(context.Background(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("console socket mode %v, want 0600", fi.Mode())
	}
}
