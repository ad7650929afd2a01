package fs_test

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"rainforest/vmm/vhostuser"
	vut "rainforest/vmm/vhostuser/vhostusertest"
	"rainforest/vmm/virtio"
	"rainforest/vmm/virtio/fs"
)

var fakeBackEnd = vut.Config{
	Features: virtio.FeatureVersion1 | virtio.FeatureEventIdx | vhostuser.FeatureProtocolFeatures | 1<<0,
	Protocol: vhostuser.ProtocolMQ | vhostuser.ProtocolReplyAck,
	Queues:   2,
}

func newFS(t *testing.T, cfg vut.Config, opts fs.Options) (*fs.Device, error) {
	t.Helper()
	b, err := vut.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	d, err := fs.New(t.Context(), vhostuser.New(b.FrontEnd(), vhostuser.Options{}), opts)
	if err == nil {
		t.Cleanup(func() { d.Close() })
	}
	return d, err
}

func TestConfigSpace(t *testing.T) {
	d, err := newFS(t, fakeBackEnd, fs.Options{Tag: "rf-share"})
	if err != nil {
		t.Fatal(err)
	}
	if d.Type() != virtio.TypeFS || d.NumQueues() != 2 || d.QueueMax(1) != fs.DefaultQueueSize {
		t.Fatalf("type %d, %d queues of %d", d.Type(), d.NumQueues(), d.QueueMax(1))
	}
	// The back end's VIRTIO_FS_F_NOTIFICATION is not offered.
	if d.Features() != 0 {
		t.Fatalf("features %#x", d.Features())
	}
	cfg := make([]byte, fs.ConfigSize+8)
	d.ReadConfig(0, cfg)
	if tag := string(cfg[:fs.TagSize]); tag != "rf-share"+strings.Repeat("\x00", fs.TagSize-8) {
		t.Fatalf("tag field %q", tag)
	}
	if n := binary.LittleEndian.Uint32(cfg[fs.TagSize:]); n != 1 {
		t.Fatalf("num_request_queues %d", n)
	}
	for _, b := range cfg[fs.ConfigSize:] {
		if b != 0 {
			t.Fatalf("beyond the config space: % x", cfg[fs.ConfigSize:])
		}
	}
	// Reads at any offset, writes ignored, huge offsets read zeros.
	d.WriteConfig(0, []byte("xx"))
	part := make([]byte, 4)
	d.ReadConfig(3, part)
	if string(part) != "shar" {
		t.Fatalf("config at 3: %q", part)
	}
	d.ReadConfig(^uint64(0)-1, part)
	if binary.LittleEndian.Uint32(part) != 0 {
		t.Fatalf("config at the top of the range: % x", part)
	}
	full := strings.Repeat("t", fs.TagSize)
	d2, err := newFS(t, fakeBackEnd, fs.Options{Tag: full})
	if err != nil {
		t.Fatal(err)
	}
	d2.ReadConfig(0, cfg)
	if string(cfg[:fs.TagSize]) != full {
		t.Fatalf("a 36-byte tag reads %q", cfg[:fs.TagSize])
	}
}

func TestCheckTag(t *testing.T) {
	for _, ok := range []string{"a", "rf-share", "home_dir.1", strings.Repeat("x", 36)} {
		if err := fs.CheckTag(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", strings.Repeat("x", 37), "with space", "nul\x00", "tab\t", "é", "\x7f"} {
		if err := fs.CheckTag(bad); !errors.Is(err, fs.ErrTag) {
			t.Errorf("%q: %v, want ErrTag", bad, err)
		}
	}
}

func TestNewRefuses(t *testing.T) {
	if _, err := newFS(t, fakeBackEnd, fs.Options{Tag: "bad tag"}); !errors.Is(err, fs.ErrTag) {
		t.Fatalf("bad tag: %v", err)
	}
	if _, err := newFS(t, fakeBackEnd, fs.Options{Tag: "t", RequestQueues: 2}); err == nil {
		t.Fatal("3 queues on a back end of 2")
	}
	if _, err := newFS(t, fakeBackEnd, fs.Options{Tag: "t", RequestQueues: fs.MaxRequestQueues + 1}); err == nil {
		t.Fatal("too many request queues")
	}
}
