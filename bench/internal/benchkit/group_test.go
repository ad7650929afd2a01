package benchkit

import (
	"slices"
	"testing"
)

type testSample struct {
	name string
	run  int
	err  string
}

func groupTestSamples(samples []testSample, names ...string) []SampleGroup[testSample] {
	return GroupSamples(samples, func(s testSample) string { return s.name }, func(s testSample) bool { return s.err == "" }, names...)
}

func TestGroupSamples(t *testing.T) {
	samples := []testSample{{"lxc", 1, ""}, {"rfm", 1, ""}, {"qemu", 1, ""}, {"rfm", 2, "failed"}, {"rfm", 3, ""}}
	got := groupTestSamples(samples, "rfm", "absent")
	var names []string
	for _, g := range got {
		names = append(names, g.Name)
	}
	if !slices.Equal(names, []string{"rfm", "absent", "lxc", "qemu"}) {
		t.Fatalf("order %v", names)
	}
	rfm := got[0]
	if rfm.Failed != 1 || !slices.Equal(rfm.OK, []testSample{{"rfm", 1, ""}, {"rfm", 3, ""}}) {
		t.Errorf("rfm %+v", rfm)
	}
	if got[1].Failed != 0 || len(got[1].OK) != 0 {
		t.Errorf("absent %+v", got[1])
	}
	if len(got[2].OK) != 1 || len(got[3].OK) != 1 {
		t.Errorf("unlisted %+v", got[2:])
	}
	if len(groupTestSamples(nil)) != 0 {
		t.Error("groups without samples or names")
	}
}
