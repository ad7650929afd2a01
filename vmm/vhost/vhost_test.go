package vhost

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// ioc is the kernel's _IOC encoding (x86-64): direction, size, type,
// number.
func ioc(dir, size, nr uint64) uint64 { return dir<<30 | size<<16 | 0xAF<<8 | nr }

const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
)

func TestRequestNumbers(t *testing.T) {
	want := map[string]uint64{
		"VHOST_GET_FEATURES":    ioc(iocRead, 8, 0x00),
		"VHOST_SET_FEATURES":    ioc(iocWrite, 8, 0x00),
		"VHOST_SET_OWNER":       ioc(iocNone, 0, 0x01),
		"VHOST_SET_MEM_TABLE":   ioc(iocWrite, 8, 0x03),
		"VHOST_SET_VRING_NUM":   ioc(iocWrite, 8, 0x10),
		"VHOST_SET_VRING_ADDR":  ioc(iocWrite, 40, 0x11),
		"VHOST_SET_VRING_BASE":  ioc(iocWrite, 8, 0x12),
		"VHOST_GET_VRING_BASE":  ioc(iocRead|iocWrite, 8, 0x12),
		"VHOST_SET_VRING_KICK":  ioc(iocWrite, 8, 0x20),
		"VHOST_SET_VRING_CALL":  ioc(iocWrite, 8, 0x21),
		"VHOST_SET_VRING_ERR":   ioc(iocWrite, 8, 0x22),
		"VHOST_NET_SET_BACKEND": ioc(iocWrite, 8, 0x30),
	}
	if len(want) != len(IoctlRequests) {
		t.Errorf("%d requests, want %d", len(IoctlRequests), len(want))
	}
	for name, w := range want {
		if got := IoctlRequests[name]; got != w {
			t.Errorf("%s = %#x, want %#x", name, got, w)
		}
	}
}

// Without the device (this host, most CI hosts) Open says so.
func TestOpenWithoutDevice(t *testing.T) {
	if _, err := os.Stat(NetDevice); err == nil {
		t.Skip(NetDevice + " exists")
	}
	if _, err := Open(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Open: %v, want ErrUnavailable", err)
	}
}

// The ioctls on something that is not vhost-net fail and name
// themselves.
func TestIoctlErrorsNameTheRequest(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	n, err := Adopt(f)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if _, err := n.Features(); err == nil || !strings.Contains(err.Error(), "VHOST_GET_FEATURES") {
		t.Errorf("Features on /dev/null: %v", err)
	}
	if err := n.SetBackend(0, Unbind); err == nil || !strings.Contains(err.Error(), "VHOST_NET_SET_BACKEND") {
		t.Errorf("SetBackend on /dev/null: %v", err)
	}
}
