package vmmctl

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"rainforest/vmm/config"
)

// shareHandler is handler with shares: it reads the first byte of each
// share's socket (here a file) and refuses a tag it has.
type shareHandler struct {
	handler
	first map[string]string
}

func (h *shareHandler) AttachShare(_ context.Context, s config.Share, sock *os.File) (Device, error) {
	defer sock.Close()
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.first[s.Tag]; ok {
		return Device{}, errors.Join(ErrExists, errors.New("tag "+s.Tag))
	}
	b := make([]byte, 1)
	sock.ReadAt(b, 0)
	h.first[s.Tag] = string(b)
	return Device{ID: s.ID, Kind: "share", Name: s.Tag, Slot: 7}, nil
}

// serveHandler serves h on a new control socket until the test ends.
func serveHandler(t *testing.T, h Handler) VMM {
	path := filepath.Join(t.TempDir(), "vm.ctl")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { // owner: the test; ends at cleanup
		defer close(served)
		Serve(ctx, ln, uint32(os.Geteuid()), h, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	t.Cleanup(func() { cancel(); <-served })
	return VMM{Path: path, PID: os.Getpid()}
}

func TestAttachShare(t *testing.T) {
	bg := context.Background()
	files := tempFiles(t, 2)
	// A VMM whose handler has no shares refuses the request.
	plain := serveHandler(t, &handler{})
	if _, err := AttachShare(bg, plain, config.Share{ID: "share0", Tag: "data"}, files[0]); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "does not attach shares") {
		t.Errorf("attach_share to a VMM without shares: %v", err)
	}
	h := &shareHandler{first: map[string]string{}}
	vm := serveHandler(t, h)
	d, err := AttachShare(bg, vm, config.Share{ID: "share0", Tag: "data"}, files[1])
	if err != nil || d.Kind != "share" || d.Name != "data" || d.Slot != 7 {
		t.Fatalf("AttachShare = %+v, %v", d, err)
	}
	h.mu.Lock()
	got := h.first["data"]
	h.mu.Unlock()
	if got != "b" {
		t.Errorf("the handler read %q from the share's descriptor, want the file sent", got)
	}
	if _, err := AttachShare(bg, vm, config.Share{ID: "share1", Tag: "data"}, files[0]); !errors.Is(err, ErrExists) {
		t.Errorf("a second share of tag data: %v", err)
	}
	if _, _, err := Call(bg, vm, Message{Op: OpAttachShare, Share: &config.Share{ID: "s", Tag: "t"}}, nil); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "back end's socket") {
		t.Errorf("attach_share without a descriptor: %v", err)
	}
	if _, _, err := Call(bg, vm, Message{Op: OpAttachShare}, files[:1]); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "without a share") {
		t.Errorf("attach_share without a share: %v", err)
	}
}
