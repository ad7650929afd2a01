//go:build !linux

package ring

func pinToCPU(int) {}
