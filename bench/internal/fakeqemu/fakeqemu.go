// Package fakeqemu is a stand-in QEMU process for the tests of packages
// that run QEMU guests (bench/internal/qemuguest, bench/lifecycle/qemu):
// a test binary re-executes itself as the fake (Command, and Main from
// TestMain), which serves QMP on the socket of its -qmp argument, prints
// console lines on stdout as a guest would, and answers the commands the
// benchmarks send: qmp_capabilities, quit, query-hotpluggable-cpus,
// query-cpus-fast (its own process standing for each vCPU thread),
// device_add and device_del (a vCPU), qom-set and qom-get (a virtio-mem
// device's requested-size and size, with MEMORY_DEVICE_SIZE_CHANGE
// events); it prints each command it gets as a
// console line, "fakeqemu: NAME".
package fakeqemu

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// envVar, set to 1, makes Requested true in the re-executed test binary.
const envVar = "RF_FAKEQEMU"

// Options are the fake's behavior.
type Options struct {
	// QMPSocket is where it serves QMP.
	QMPSocket string
	// Boot are console lines printed once QMP listens.
	Boot []string
	// CPUOnline is printed once a vCPU was added (empty: nothing).
	CPUOnline string
	// MemoryEvents is how many MEMORY_DEVICE_SIZE_CHANGE events follow a
	// qom-set of requested-size, the last at the size requested (0: none,
	// the size does not change).
	MemoryEvents int
	// ExitAtOnce makes the fake print Stderr and exit 1 before it
	// listens.
	ExitAtOnce bool
	Stderr     string
}

// Requested reports whether this process was started as the fake.
func Requested() bool { return os.Getenv(envVar) == "1" }

// Command returns the command line (the running test binary) and the
// environment entry that start the fake with o.
func Command(o Options) (argv []string, env string) {
	argv = []string{os.Args[0], "-test.run=^$", "-qmp", "unix:" + o.QMPSocket + ",server=on,wait=off",
		"-fake-boot", strings.Join(o.Boot, "\n"), "-fake-cpu-online", o.CPUOnline,
		"-fake-memory-events", strconv.Itoa(o.MemoryEvents), "-fake-exit", strconv.FormatBool(o.ExitAtOnce), "-fake-stderr", o.Stderr}
	return argv, envVar + "=1"
}

// parse reads Options back from the fake's arguments.
func parse(args []string) Options {
	var o Options
	for i := 0; i+1 < len(args); i++ {
		v := args[i+1]
		switch args[i] {
		case "-qmp":
			path, _, _ := strings.Cut(strings.TrimPrefix(v, "unix:"), ",")
			o.QMPSocket = path
		case "-fake-boot":
			if v != "" {
				o.Boot = strings.Split(v, "\n")
			}
		case "-fake-cpu-online":
			o.CPUOnline = v
		case "-fake-memory-events":
			o.MemoryEvents, _ = strconv.Atoi(v)
		case "-fake-exit":
			o.ExitAtOnce = v == "true"
		case "-fake-stderr":
			o.Stderr = v
		default:
			continue
		}
		i++
	}
	return o
}

// Main runs the fake with the process's arguments and returns its exit
// status.
func Main() int {
	o := parse(os.Args[1:])
	if o.ExitAtOnce {
		fmt.Fprintln(os.Stderr, o.Stderr)
		return 1
	}
	ln, err := net.Listen("unix", o.QMPSocket)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer ln.Close()
	f := &fake{o: o}
	for _, l := range o.Boot {
		f.say(l)
	}
	conn, err := ln.Accept()
	if err != nil {
		return 1
	}
	defer conn.Close()
	f.serve(conn)
	return 0
}

// fake is the state of the fake QEMU.
type fake struct {
	o        Options
	conn     net.Conn
	cpuAdded bool
	// requested and size are the virtio-mem device's.
	requested, size uint64
}

// say prints a console line.
func (f *fake) say(line string) { fmt.Printf("%s\r\n", line) }

func (f *fake) send(v any) {
	b, _ := json.Marshal(v)
	f.conn.Write(append(b, '\r', '\n'))
}

func (f *fake) event(name string, data any) {
	now := time.Now()
	f.send(map[string]any{"event": name, "data": data,
		"timestamp": map[string]int64{"seconds": now.Unix(), "microseconds": int64(now.Nanosecond() / 1000)}})
}

// serve answers one QMP connection until quit or its end.
func (f *fake) serve(conn net.Conn) {
	f.conn = conn
	f.send(map[string]any{"QMP": map[string]any{"version": map[string]any{"qemu": map[string]int{"major": 7, "minor": 2, "micro": 0}}, "capabilities": []string{}}})
	sc := bufio.NewScanner(conn)
	for sc.Scan() {
		var req struct {
			Execute   string         `json:"execute"`
			Arguments map[string]any `json:"arguments"`
		}
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			return
		}
		fmt.Printf("fakeqemu: %s\r\n", req.Execute)
		ret, errDesc := f.answer(req.Execute, req.Arguments)
		if errDesc != "" {
			f.send(map[string]any{"error": map[string]string{"class": "GenericError", "desc": errDesc}})
			continue
		}
		f.send(map[string]any{"return": ret})
		if req.Execute == "quit" {
			return
		}
		f.after(req.Execute, req.Arguments)
	}
}

// answer is the return value of a command, or why it failed.
func (f *fake) answer(cmd string, args map[string]any) (any, string) {
	switch cmd {
	case "qmp_capabilities", "quit":
		return map[string]any{}, ""
	case "query-hotpluggable-cpus":
		cpus := []map[string]any{
			{"type": "qemu64-x86_64-cpu", "vcpus-count": 1, "props": map[string]int{"socket-id": 0, "core-id": 1, "thread-id": 0}},
			{"type": "qemu64-x86_64-cpu", "vcpus-count": 1, "props": map[string]int{"socket-id": 0, "core-id": 0, "thread-id": 0},
				"qom-path": "/machine/unattached/device[0]"},
		}
		if f.cpuAdded {
			cpus[0]["qom-path"] = "/machine/peripheral/cpu1"
		}
		return cpus, ""
	case "query-cpus-fast":
		cpus := []map[string]any{{"cpu-index": 0, "qom-path": "/machine/unattached/device[0]", "thread-id": os.Getpid()}}
		if f.cpuAdded {
			cpus = append(cpus, map[string]any{"cpu-index": 1, "qom-path": "/machine/peripheral/cpu1", "thread-id": os.Getpid()})
		}
		return cpus, ""
	case "device_add":
		if args["driver"] != "qemu64-x86_64-cpu" || args["core-id"] != float64(1) || args["id"] == nil {
			return nil, fmt.Sprintf("bad device_add %v", args)
		}
		f.cpuAdded = true
		return map[string]any{}, ""
	case "device_del":
		if !f.cpuAdded {
			return nil, fmt.Sprintf("no device %v", args["id"])
		}
		return map[string]any{}, ""
	case "qom-set":
		v, ok := args["value"].(float64)
		if args["property"] != "requested-size" || !ok {
			return nil, fmt.Sprintf("bad qom-set %v", args)
		}
		f.requested = uint64(v)
		return map[string]any{}, ""
	case "qom-get":
		if args["property"] != "size" {
			return nil, fmt.Sprintf("bad qom-get %v", args)
		}
		return f.size, ""
	}
	return nil, "The command " + cmd + " has not been found"
}

// after is what happens once a command was answered.
func (f *fake) after(cmd string, args map[string]any) {
	switch cmd {
	case "device_add":
		if f.o.CPUOnline != "" {
			f.say(f.o.CPUOnline)
		}
	case "device_del":
		// QEMU (7.2) says only that the vCPU's APIC went.
		f.cpuAdded = false
		f.event("DEVICE_DELETED", map[string]any{"path": "/machine/peripheral/" + fmt.Sprint(args["id"]) + "/lapic"})
	case "qom-set":
		// The guest plugs or unplugs in steps; QEMU says so for each.
		from, n := f.size, uint64(f.o.MemoryEvents)
		for i := uint64(1); i <= n; i++ {
			f.size = from + (f.requested-from)*i/n
			if f.requested < from {
				f.size = from - (from-f.requested)*i/n
			}
			f.event("MEMORY_DEVICE_SIZE_CHANGE", map[string]any{"id": "vmem0", "size": f.size, "qom-path": "/machine/peripheral/vmem0"})
		}
	}
}
