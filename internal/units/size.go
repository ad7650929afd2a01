package units

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ErrSize means a size could not be parsed.
var ErrSize = errors.New("invalid size")

// sizeUnits are the unit letters, largest first, for FormatSize.
var sizeUnits = [...]struct {
	letter byte
	shift  uint
}{{'T', 40}, {'G', 30}, {'M', 20}, {'K', 10}}

// ParseSize parses a size in bytes, such as "4096", "512M", "2GiB" or
// "64kB" (see the package documentation for the rules). Zero is allowed.
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	digits, unit := t[:i], t[i:]
	switch {
	case digits == "":
		return 0, fmt.Errorf("%w %q: want a whole number of bytes with an optional unit, like 4096, 512M or 2GiB", ErrSize, s)
	case strings.HasPrefix(unit, ".") || strings.HasPrefix(unit, ","):
		return 0, fmt.Errorf("%w %q: want a whole number; use a smaller unit instead of a fraction", ErrSize, s)
	}
	shift, ok := unitShift(unit)
	if !ok {
		return 0, fmt.Errorf("%w %q: unknown unit %q (use K, M, G or T, optionally followed by B or iB)", ErrSize, s, unit)
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	if err != nil || n > math.MaxUint64>>shift {
		return 0, fmt.Errorf("%w %q: too large (at most %d bytes)", ErrSize, s, uint64(math.MaxUint64))
	}
	return n << shift, nil
}

// ParseNonZeroSize is ParseSize for sizes that must be more than zero.
func ParseNonZeroSize(s string) (uint64, error) {
	n, err := ParseSize(s)
	if err == nil && n == 0 {
		return 0, fmt.Errorf("%w %q: must be more than 0 bytes", ErrSize, s)
	}
	return n, err
}

// unitShift returns the power of two a unit suffix stands for.
func unitShift(unit string) (uint, bool) {
	u := strings.ToUpper(unit)
	if u == "" || u == "B" {
		return 0, true
	}
	switch u[1:] {
	case "", "B", "I", "IB":
	default:
		return 0, false
	}
	for _, su := range sizeUnits {
		if su.letter == u[0] {
			return su.shift, true
		}
	}
	return 0, false
}

// FormatSize writes n with the largest unit that divides it exactly
// ("512M", "2G", "4K"), or as plain bytes ("0", "4097").
func FormatSize(n uint64) string {
	if n != 0 {
		for _, su := range sizeUnits {
			if n&(1<<su.shift-1) == 0 {
				return strconv.FormatUint(n>>su.shift, 10) + string(su.letter)
			}
		}
	}
	return strconv.FormatUint(n, 10)
}
