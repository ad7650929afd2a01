package net

// RxWaiters returns how many goroutines wait in d.WaitRx.
func RxWaiters(d *Device) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.rxWaiters
}
