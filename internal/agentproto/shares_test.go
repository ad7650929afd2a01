package agentproto

import (
	"errors"
	"strings"
	"testing"
)

// A stats report's shares are bounded: count, tag and mount point, all
// printable ASCII.
func TestStatsShares(t *testing.T) {
	good := `{"shares":[{"tag":"data","dir":"/mnt/data"},{"tag":"docs","dir":"/shares/docs"}]}`
	m, err := Decode(Frame{TypeStats, []byte(good)})
	if err != nil {
		t.Fatal(err)
	}
	if s := m.(*Stats).Shares; len(s) != 2 || s[1] != (ShareMount{Tag: "docs", Dir: "/shares/docs"}) {
		t.Fatalf("shares %+v", s)
	}
	many := `{"shares":[` + strings.TrimSuffix(strings.Repeat(`{"tag":"t","dir":"/m"},`, MaxShareMounts+1), ",") + `]}`
	for name, body := range map[string]string{
		"too many":       many,
		"empty tag":      `{"shares":[{"tag":"","dir":"/m"}]}`,
		"long tag":       `{"shares":[{"tag":"` + strings.Repeat("t", MaxShareTag+1) + `","dir":"/m"}]}`,
		"escape in tag":  `{"shares":[{"tag":"\u001b[2J","dir":"/m"}]}`,
		"relative dir":   `{"shares":[{"tag":"t","dir":"mnt"}]}`,
		"long dir":       `{"shares":[{"tag":"t","dir":"/` + strings.Repeat("d", MaxMountDir) + `"}]}`,
		"bidi in dir":    `{"shares":[{"tag":"t","dir":"/mnt/\u202e"}]}`,
		"newline in dir": `{"shares":[{"tag":"t","dir":"/mnt\n"}]}`,
	} {
		if m, err := Decode(Frame{TypeStats, []byte(body)}); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Decode = %#v, %v; want ErrMalformed", name, m, err)
		}
	}
}
