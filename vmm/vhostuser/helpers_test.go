package vhostuser_test

import (
	"net"
	"os"
	"testing"
)

// socketConn turns a socket descriptor into a connection.
func socketConn(t *testing.T, fd int) *net.UnixConn {
	t.Helper()
	f := os.NewFile(uintptr(fd), "socket")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	return c.(*net.UnixConn)
}
