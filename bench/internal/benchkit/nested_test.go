package benchkit

import (
	"strings"
	"testing"
)

func TestNeedNestedModes(t *testing.T) {
	if need, why := NeedNested(NestedAlways); !need || !strings.Contains(why, "-nested always") {
		t.Errorf("always: %v %q", need, why)
	}
	if need, why := NeedNested(NestedNever); need || !strings.Contains(why, "-nested never") {
		t.Errorf("never: %v %q", need, why)
	}
	if _, why := NeedNested("auto"); why == "" {
		t.Error("auto: no reason")
	}
}
