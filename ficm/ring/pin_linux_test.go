package ring

import (
	"os"

	"golang.org/x/sys/unix"
)

// pinToCPU best-effort pins the calling (locked) OS thread to the cpu-th
// CPU, counting the CPUs the process may use (modulo their number).
func pinToCPU(cpu int) {
	var all unix.CPUSet
	if err := unix.SchedGetaffinity(os.Getpid(), &all); err != nil || all.Count() == 0 {
		return
	}
	cpu %= all.Count()
	for i := 0; ; i++ {
		if !all.IsSet(i) {
			continue
		}
		if cpu == 0 {
			var one unix.CPUSet
			one.Set(i)
			_ = unix.SchedSetaffinity(0, &one)
			return
		}
		cpu--
	}
}
