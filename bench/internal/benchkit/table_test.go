package benchkit

import (
	"strings"
	"testing"
)

func TestShortenError(t *testing.T) {
	short := strings.Repeat("e", MaxTableError)
	if got := ShortenError(short); got != short {
		t.Errorf("shortened an error of %d bytes", len(short))
	}
	got := ShortenError(short + "tail")
	if !strings.HasPrefix(got, short) || strings.Contains(got, "tail") || !strings.HasSuffix(got, "... (full error in the JSON)") {
		t.Errorf("got %q", got)
	}
}
