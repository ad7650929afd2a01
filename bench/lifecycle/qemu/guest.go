package qemu

import "rainforest/images"

// The guest command's console lines (GuestCommand).
const (
	MarkerReady      = "RF-LC-READY"
	MarkerCPUOnline  = "RF-LC-CPU-UP"
	MarkerCPURefused = "RF-LC-CPU-REFUSED"
)

// CPUOnlineFile is the sysfs online file of the guest's hot-added CPU.
const CPUOnlineFile = "/sys/devices/system/cpu/cpu1/online"

// DefaultMarkers are the markers of the default image's init and of
// GuestCommand.
func DefaultMarkers() Markers {
	return Markers{Init: images.InitReachedMarker, Ready: MarkerReady, CPUOnline: MarkerCPUOnline, CPURefused: MarkerCPURefused}
}

// GuestCommand is the QEMU guest's command (the image's rf.cmd): it
// prints MarkerReady, waits for the hot-added CPU's online file
// (onlineFile, normally CPUOnlineFile) to appear, checking every 5 ms
// with the shell's read builtin on the fifo it makes at fifo (no process
// started per check), writes 1 to it and prints MarkerCPUOnline, or
// MarkerCPURefused when the kernel refused. It builds the markers from a
// shell variable, so that the kernel command line holding the command
// never holds them; it has no double quote, so that it fits in
// rf.cmd="...".
func GuestCommand(onlineFile, fifo string) string {
	return `m=RF-LC; mkfifo ` + fifo + `; echo $m-READY; c=` + onlineFile + `; ` +
		`until [ -e $c ]; do read -t 0.005 x <>` + fifo + `; done; ` +
		`if echo 1 >$c; then echo $m-CPU-UP; else echo $m-CPU-REFUSED; fi`
}
