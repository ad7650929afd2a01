package vmm

import "testing"

// maxcpus= is appended only when the machine has vCPUs it does not boot.
func TestBootCmdline(t *testing.T) {
	for _, c := range []struct {
		cmdline     string
		boot, vcpus int
		want        string
	}{
		{"console=ttyS0", 2, 2, "console=ttyS0"},
		{"console=ttyS0", 2, 1, "console=ttyS0"},
		{"console=ttyS0 maxcpus=8", 2, 4, "console=ttyS0 maxcpus=8 maxcpus=2"},
		{"", 1, 4, "maxcpus=1"},
	} {
		if got := BootCmdline(c.cmdline, c.boot, c.vcpus); got != c.want {
			t.Errorf("BootCmdline(%q, %d, %d) = %q, want %q", c.cmdline, c.boot, c.vcpus, got, c.want)
		}
	}
}
