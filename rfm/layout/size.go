package layout

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ErrSize means a size could not be parsed.
var ErrSize = errors.New("invalid size")

var sizeUnits = []struct {
	suffix string
	shift  uint
}{
	{"T", 40}, {"G", 30}, {"M", 20}, {"K", 10},
}

// ParseSize parses a size in bytes: digits with an optional binary unit
// K, M, G or T (any case), optionally followed by "i" or "iB" (512M, 2G,
// 1GiB, 4k). Decimal-looking units (MB, GB) are refused as ambiguous.
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	digits, unit := t[:i], t[i:]
	if digits == "" {
		return 0, fmt.Errorf("%w: %q: want a number of bytes with an optional unit (512M, 2G, 1GiB)", ErrSize, s)
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %q is too large", ErrSize, s)
	}
	if unit == "" {
		return n, nil
	}
	u := strings.ToUpper(unit)
	letter, rest := u[:1], u[1:]
	var shift uint
	found := false
	for _, su := range sizeUnits {
		if su.suffix == letter {
			shift, found = su.shift, true
		}
	}
	switch {
	case !found:
		return 0, fmt.Errorf("%w: %q: unknown unit %q (use K, M, G or T)", ErrSize, s, unit)
	case rest == "B":
		return 0, fmt.Errorf("%w: %q is ambiguous: write %s%s or %s%siB (units are powers of 1024)", ErrSize, s, digits, letter, digits, letter)
	case rest != "" && rest != "I" && rest != "IB":
		return 0, fmt.Errorf("%w: %q: unknown unit %q (use K, M, G or T)", ErrSize, s, unit)
	}
	if n > math.MaxUint64>>shift {
		return 0, fmt.Errorf("%w: %q is too large", ErrSize, s)
	}
	return n << shift, nil
}

// FormatSize writes n with the largest binary unit that divides it exactly
// (512M, 2G, 4K), or as plain bytes.
func FormatSize(n uint64) string {
	if n == 0 {
		return "0"
	}
	for _, su := range sizeUnits {
		if n&(1<<su.shift-1) == 0 {
			return strconv.FormatUint(n>>su.shift, 10) + su.suffix
		}
	}
	return strconv.FormatUint(n, 10)
}
