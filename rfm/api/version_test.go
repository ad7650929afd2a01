package api

import (
	"context"
	"net/http"
	"testing"

	"rainforest/internal/buildinfo"
	"rainforest/rfm/supervisor"
)

// GET /v1/version answers the server's build; every response names it in
// X-Rainforest-Version, errors included.
func TestVersion(t *testing.T) {
	c, _ := startServer(t)
	v, err := c.Version(context.Background())
	want := buildinfo.Read()
	if err != nil || v.Info != want || v.APIVersion != APIVersion {
		t.Errorf("Version = %+v, %v; want %+v", v, err, want)
	}
	path, _ := serveBackend(t, &fakeBackend{subos: map[string]supervisor.Info{}}, DefaultLimits())
	conn := dial(t, path)
	for _, p := range []string{"/v1/version", "/v1/subos/none", "/no/such/route"} {
		code, _, hdr := conn.get(p)
		if got := hdr.Get(VersionHeader); got != want.String() {
			t.Errorf("GET %s (%d): %s %q, want %q", p, code, VersionHeader, got, want.String())
		}
	}
	if code, _, hdr := conn.get("/v1/subos"); code != http.StatusOK || hdr.Get(VersionHeader) == "" {
		t.Errorf("list: %d %v", code, hdr)
	}
}

// GET /v1/inventory: the machine, and the ledger's usage from a backend
// that reports it.
func TestInventoryReport(t *testing.T) {
	c, _ := startServer(t)
	inv, err := c.InventoryReport(context.Background())
	if err != nil || len(inv.CPUs) != 2 || inv.Usage == nil || len(inv.Usage.FreeCores) != 2 || inv.Usage.Pools[0].Owned != 16 {
		t.Fatalf("InventoryReport = %+v, %v", inv, err)
	}
	if plain, err := c.Inventory(context.Background()); err != nil || len(plain.Devices) != 1 {
		t.Errorf("Inventory = %+v, %v", plain, err)
	}
}
