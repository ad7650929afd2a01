package vmm

import (
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"
)

func TestPCIINTxLinesRouteAndShare(t *testing.T) {
	var calls []string
	lines := newPCIINTxLines(func(gsi uint32, high bool) error {
		calls = append(calls, fmt.Sprintf("%d=%v", gsi, high))
		return nil
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	a, irqA, err := lines.route(1, 1)
	if err != nil || irqA != 17 {
		t.Fatalf("slot 1 INTA: irq %d, %v; want GSI 17", irqA, err)
	}
	b, irqB, err := lines.route(9, 1) // shares GSI 17 with slot 1
	if err != nil || irqB != 17 {
		t.Fatalf("slot 9 INTA: irq %d, %v; want GSI 17", irqB, err)
	}
	c, irqC, err := lines.route(2, 1)
	if err != nil || irqC != 18 {
		t.Fatalf("slot 2 INTA: irq %d, %v; want GSI 18", irqC, err)
	}
	if _, _, err := lines.route(1, 7); err == nil {
		t.Fatal("pin 7 routed")
	}
	a.SetLevel(true)
	a.SetLevel(true) // repeated level: no ioctl
	b.SetLevel(true) // wired OR: already high
	a.SetLevel(false)
	c.SetLevel(true)
	b.SetLevel(false) // last one lowers GSI 17
	c.SetLevel(false)
	b.SetLevel(false)
	want := []string{"17=true", "18=true", "17=false", "18=false"}
	if !slices.Equal(calls, want) {
		t.Fatalf("KVM_IRQ_LINE calls %v, want %v", calls, want)
	}
}
