package actuator

import (
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"rainforest/internal/units"
)

// SteerIRQs rewrites /proc/irq/N/smp_affinity_list of every IRQ so that none
// targets a CPU in avoid: an IRQ keeps its other CPUs, or gets every online
// CPU outside avoid when none would be left. /proc/irq/default_smp_affinity
// (for IRQs set up later) is narrowed the same way. IRQs whose affinity the
// kernel refuses to change (per-CPU and managed interrupts) are skipped. It
// fails with ErrNoCPUsLeft, changing nothing, when avoid covers every online
// CPU. restore puts back every affinity SteerIRQs changed.
func (a *Actuator) SteerIRQs(avoid []int) (restore func() error, err error) {
	online, err := readList(filepath.Join(a.cfg.SysRoot, "devices", "system", "cpu", "online"))
	if err != nil {
		return nil, fmt.Errorf("steer irqs: %w", err)
	}
	allowed := minus(online, avoid)
	if len(allowed) == 0 {
		return nil, fmt.Errorf("steer irqs: %w: online %s, avoid %s", ErrNoCPUsLeft, units.FormatCPUList(online), units.FormatCPUList(avoid))
	}
	irqRoot := filepath.Join(a.cfg.ProcRoot, "irq")
	entries, err := os.ReadDir(irqRoot)
	if err != nil {
		return nil, fmt.Errorf("steer irqs: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	type saved struct{ path, value string }
	var changed []saved
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil || !e.IsDir() {
			continue
		}
		path := filepath.Join(irqRoot, e.Name(), "smp_affinity_list")
		old, err := readString(path)
		if err != nil {
			continue
		}
		cur, err := parseList(old)
		if err != nil {
			continue
		}
		want := minus(cur, avoid)
		if len(want) == 0 {
			want = allowed
		}
		if equalLists(cur, want) {
			continue
		}
		if writeString(path, units.FormatCPUList(want)) != nil {
			continue // per-CPU or managed IRQ: the kernel keeps its affinity
		}
		changed = append(changed, saved{path, old})
	}
	defPath := filepath.Join(irqRoot, "default_smp_affinity")
	if old, err := readString(defPath); err == nil {
		if cur, err := parseMask(old); err == nil {
			want := minus(cur, avoid)
			if len(want) == 0 {
				want = allowed
			}
			if !equalLists(cur, want) && writeString(defPath, formatMask(want)) == nil {
				changed = append(changed, saved{defPath, old})
			}
		}
	}
	restore = func() error {
		var errs []error
		for i := len(changed) - 1; i >= 0; i-- {
			if err := writeString(changed[i].path, changed[i].value); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}
	return restore, nil
}

// parseMask parses a kernel CPU mask in hex ("3", "00000000,00000003").
func parseMask(s string) ([]int, error) {
	hex := strings.ReplaceAll(strings.TrimSpace(s), ",", "")
	n, ok := new(big.Int).SetString(hex, 16)
	if !ok || len(hex) > 4096 {
		return nil, fmt.Errorf("%w: bad cpu mask %q", ErrInvalid, s)
	}
	var out []int
	for i := 0; i < n.BitLen(); i++ {
		if n.Bit(i) == 1 {
			out = append(out, i)
		}
	}
	return out, nil
}

// formatMask formats cpus as a kernel hex mask in comma-separated 32-bit
// words, the format cpumask_parse accepts.
func formatMask(cpus []int) string {
	n := new(big.Int)
	for _, c := range cpus {
		n.SetBit(n, c, 1)
	}
	hex := n.Text(16)
	var words []string
	for len(hex) > 8 {
		words = append([]string{hex[len(hex)-8:]}, words...)
		hex = hex[:len(hex)-8]
	}
	words = append([]string{hex}, words...)
	for i := 1; i < len(words); i++ {
		words[i] = fmt.Sprintf("%08s", words[i])
	}
	return strings.Join(words, ",")
}
