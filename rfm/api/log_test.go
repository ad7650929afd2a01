package api

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"rainforest/rfm/supervisor"
)

// The log endpoint reads only the end of a log, however big (a sparse
// 1 GiB file here), and serves the guest's bytes unchanged.
func TestLogTail(t *testing.T) {
	c, b := startServer(t)
	path := filepath.Join(t.TempDir(), "a.log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(1 << 30)
	end := []byte("last line \x1b[31m\n")
	f.WriteAt(end, 1<<30)
	f.Close()
	b.mu.Lock()
	b.subos["a"] = supervisor.Info{Name: "a", Log: path}
	b.mu.Unlock()
	ctx := context.Background()
	var out bytes.Buffer
	if err := c.LogTail(ctx, "a", uint64(len(end)), &out); err != nil || !bytes.Equal(out.Bytes(), end) {
		t.Fatalf("tail: %q, %v", out.Bytes(), err)
	}
	out.Reset()
	if err := c.Log(ctx, "a", &out); err != nil || out.Len() != DefaultLogTail || !bytes.HasSuffix(out.Bytes(), end) {
		t.Fatalf("default: %d bytes, %v", out.Len(), err)
	}
	out.Reset()
	if err := c.LogTail(ctx, "a", 1<<40, &out); err != nil || out.Len() != MaxLogTail {
		t.Fatalf("huge tail: %d bytes, %v", out.Len(), err)
	}
	if err := c.Log(ctx, "nope", &out); err == nil {
		t.Error("log of an unknown subOS")
	}
	// A subOS that exited has no log any more: 404, saying so.
	b.mu.Lock()
	b.subos["gone"] = supervisor.Info{Name: "gone", State: supervisor.StateExited}
	b.mu.Unlock()
	for _, follow := range []bool{false, true} {
		err := c.LogTail(ctx, "gone", 10, &out)
		if follow {
			err = c.FollowLog(ctx, "gone", 10, &out)
		}
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `subOS "gone" has exited`) {
			t.Errorf("log of an exited subOS (follow %v): %v", follow, err)
		}
	}
}
