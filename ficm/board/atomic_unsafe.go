package board

import (
	"fmt"
	"sync/atomic"
	"unsafe"
)

// pageWords is the board page seen as 64-bit words.
type pageWords = [PageSize / 8]atomic.Uint64

// wordsOf returns page's first PageSize bytes as atomically accessed 64-bit
// words. page must be at least PageSize bytes and 8-byte aligned.
func wordsOf(page []byte) (*pageWords, error) {
	if len(page) < PageSize {
		return nil, fmt.Errorf("%w: page of %d bytes, need %d", ErrInvalid, len(page), PageSize)
	}
	p := unsafe.Pointer(unsafe.SliceData(page))
	if uintptr(p)%8 != 0 {
		return nil, fmt.Errorf("%w: page at %#x is not 8-byte aligned", ErrInvalid, uintptr(p))
	}
	return (*pageWords)(p), nil
}
