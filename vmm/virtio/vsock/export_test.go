package vsock

// Guest runs f under the device's lock, with which the device does all
// its queue work: a test's fake driver touches guest memory in f, so
// that the race detector sees its accesses ordered with the device's (a
// real guest races with the device by design).
func (d *Device) Guest(f func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f()
}
