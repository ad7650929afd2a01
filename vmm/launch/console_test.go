package launch

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"rainforest/vmm/config"
	"rainforest/vmm/consolesock"
	"rainforest/vmm/serial"
)

type noIRQ struct{}

func (noIRQ) SetLevel(bool) {}

// The guest's UART output path, built as the VMM builds it (the console
// writer from the document, then the console socket), never waits for a
// reader: with stdout a pipe nobody reads and a console client that never
// reads, a guest transmitting 1 MiB byte by byte runs to the end. (Before,
// the first full pipe stalled the vCPU under the UART's lock.)
func TestGuestOutputNeverStalls(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	doc := &config.Document{Version: config.Version, Name: "web", Kernel: "/k", Cores: []int{0}, Memory: 64 << 20,
		PageSize: "4k", Console: config.Console{LogRate: 1 << 30}}
	cfg, done, err := linuxConfig(doc, Options{Stdout: w}, Logger(doc, io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	path := filepath.Join(t.TempDir(), "c.sock")
	sock, err := consolesock.Listen(context.Background(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for sock.Clients() != 1 {
		yieldTest()
	}
	u := serial.New(io.MultiWriter(cfg.Console, sock), noIRQ{}, 0)
	for i := range 1 << 20 {
		u.Write(serial.RegTHR, []byte{byte('a' + i%26)})
	}
	if st := sock.Stats(); st.Dropped != 1 {
		t.Errorf("console client not dropped: %+v", st)
	}
}

func yieldTest() { runtime.Gosched() }
