package procstat

import (
	"reflect"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"rainforest/internal/agentproto"
)

func TestParseShareMounts(t *testing.T) {
	mounts := `rootfs / rootfs rw 0 0
proc /proc proc rw,relatime 0 0
data /mnt/data virtiofs rw,relatime 0 0
/dev/vda /mnt ext2 ro,relatime 0 0
docs /mnt/my\040docs virtiofs rw,relatime 0 0
ro /shares/ro virtiofs rw,relatime 0 0
`
	got, err := ParseShareMounts(strings.NewReader(mounts))
	want := []agentproto.ShareMount{{Tag: "data", Dir: "/mnt/data"}, {Tag: "ro", Dir: "/shares/ro"}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseShareMounts = %+v, %v; want %+v", got, err, want)
	}
	many := strings.Repeat("t /mnt/t virtiofs rw 0 0\n", agentproto.MaxShareMounts+5)
	if got, _ := ParseShareMounts(strings.NewReader(many)); len(got) != agentproto.MaxShareMounts {
		t.Errorf("%d shares, want at most %d", len(got), agentproto.MaxShareMounts)
	}
	// The sampler reports them (and does without a mounts file).
	fsys := hostProc(t)
	fsys["mounts"] = &fstest.MapFile{Data: []byte(mounts)}
	st, err := NewSampler(fsys).Sample(time.Unix(1000, 0))
	if err != nil || !reflect.DeepEqual(st.Shares, want) {
		t.Errorf("Sample: shares %+v, %v", st.Shares, err)
	}
	if _, err := agentproto.Encode(st); err != nil {
		t.Errorf("the report does not encode: %v", err)
	}
}
