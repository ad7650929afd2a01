package virtio

// ReadBuffers copies bytes from the scatter list bufs, starting at byte
// offset off of their concatenation, into p; it returns the count copied.
func ReadBuffers(bufs [][]byte, off uint64, p []byte) int {
	n := 0
	for _, b := range bufs {
		if n == len(p) {
			break
		}
		if off >= uint64(len(b)) {
			off -= uint64(len(b))
			continue
		}
		n += copy(p[n:], b[off:])
		off = 0
	}
	return n
}

// WriteBuffers copies p into the scatter list bufs starting at byte offset
// off of their concatenation; it returns the count copied.
func WriteBuffers(bufs [][]byte, off uint64, p []byte) int {
	n := 0
	for _, b := range bufs {
		if n == len(p) {
			break
		}
		if off >= uint64(len(b)) {
			off -= uint64(len(b))
			continue
		}
		n += copy(b[off:], p[n:])
		off = 0
	}
	return n
}

// SplitBuffers returns the scatter list bufs cut at byte offset off: the
// bytes before off and the bytes from off on (sharing memory with bufs).
func SplitBuffers(bufs [][]byte, off uint64) (head, tail [][]byte) {
	for i, b := range bufs {
		if off >= uint64(len(b)) {
			off -= uint64(len(b))
			head = append(head, b)
			continue
		}
		if off > 0 {
			head = append(head, b[:off])
		}
		tail = append(tail, b[off:])
		tail = append(tail, bufs[i+1:]...)
		return head, tail
	}
	return head, nil
}
