package qemuguest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"rainforest/bench/internal/fakeqemu"
	"rainforest/internal/qemubundle"
)

func TestMain(m *testing.M) {
	if fakeqemu.Requested() {
		os.Exit(fakeqemu.Main())
	}
	os.Exit(m.Run())
}

// start starts the fake QEMU with o (its socket in a new directory).
func start(t *testing.T, o fakeqemu.Options, echo *strings.Builder) (*Guest, error) {
	t.Helper()
	o.QMPSocket = filepath.Join(t.TempDir(), "qmp.sock")
	argv, env := fakeqemu.Command(o)
	k, v, _ := strings.Cut(env, "=")
	t.Setenv(k, v)
	cfg := Config{Argv: argv, QMPSocket: o.QMPSocket, Markers: []string{"INIT"}, Prefix: "[q] ", Connect: time.Minute}
	if echo != nil {
		cfg.Echo = echo
	}
	return Start(t.Context(), cfg)
}

func TestStartQuit(t *testing.T) {
	var echo strings.Builder
	g, err := start(t, fakeqemu.Options{Boot: []string{"bios", "x INIT y"}}, &echo)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	at, err := g.Console.Wait(t.Context(), "INIT", time.Time{})
	if err != nil || at.Before(g.Started) || g.Connected.Before(g.Started) {
		t.Fatalf("init at %v (started %v, connected %v): %v", at, g.Started, g.Connected, err)
	}
	t0 := time.Now()
	answered, exited, err := g.Quit(t.Context())
	if err != nil || answered.Before(t0) || exited.Before(t0) {
		t.Fatalf("quit: answered %v exited %v (asked %v): %v", answered, exited, t0, err)
	}
	select {
	case <-g.Exited():
	default:
		t.Error("Quit returned before the process exited")
	}
	g.Close() // after Quit: nothing left to do
	g.Close()
	if !strings.Contains(echo.String(), "[q] x INIT y\n") {
		t.Errorf("echo %q", echo.String())
	}
}

// TestCloseQuits: a guest closed without Quit is asked to quit.
func TestCloseQuits(t *testing.T) {
	var echo strings.Builder
	g, err := start(t, fakeqemu.Options{}, &echo)
	if err != nil {
		t.Fatal(err)
	}
	g.Close()
	<-g.Exited()
	if !strings.Contains(echo.String(), "fakeqemu: quit") {
		t.Errorf("Close did not quit: %q", echo.String())
	}
}

// TestStartExits: a QEMU that exits before QMP answers ends the wait at
// once, with its stderr in the error.
func TestStartExits(t *testing.T) {
	_, err := start(t, fakeqemu.Options{ExitAtOnce: true, Stderr: "qemu: bad option"}, nil)
	if err == nil || !strings.Contains(err.Error(), "exited") || !strings.Contains(err.Error(), "qemu: bad option") {
		t.Errorf("start: %v", err)
	}
	if _, err := Start(context.Background(), Config{}); !errors.Is(err, ErrNoCommand) {
		t.Errorf("no command: %v", err)
	}
}

func TestBIOSFile(t *testing.T) {
	host, err := FindBIOS("qemu-system-x86_64")
	if err != nil {
		if _, ferr := BIOSFile("qemu-system-x86_64"); ferr == nil {
			t.Error("BIOSFile without a BIOS")
		}
		t.Skip("no pc BIOS on this host:", err)
	}
	f, err := BIOSFile("qemu-system-x86_64")
	if err != nil || f.Host != host || f.L1 != qemubundle.GuestDataDir+"/"+PCBIOS {
		t.Errorf("BIOS file %+v, %v", f, err)
	}
}
