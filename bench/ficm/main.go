// Command ficm benchmarks FICM's transport (make bench): one-way latency
// and throughput of 64-byte messages, side by side in one run, for
//
//   - the floor: a cache-line ping-pong between two host threads pinned to
//     two cores;
//   - host baselines between two pinned processes (this binary re-executed
//     as a child): pipe, Unix socket, TCP loopback and a shared-memory ring
//     with futex wake-up;
//   - two test-guest VMs sharing one memfd: polling (a 64-byte ping-pong
//     and a ring stream at CPL 3) and interrupt mode (an ioeventfd doorbell
//     in the sender wired to an irqfd in the receiver).
//
// The VM rows need /dev/kvm (root) and are skipped with a reason otherwise.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// options are the command-line settings.
type options struct {
	trips    int
	stream   int
	duration time.Duration
	window   time.Duration
	rounds   int
	jsonPath string
}

// report is the JSON result.
type report struct {
	Time          time.Time `json:"time"`
	Cores         [2]int    `json:"cores"`
	KVMEmulatesK0 bool      `json:"kvm_emulates_cpl0"`
	LoadAverage   string    `json:"load_average_at_start"`
	Options       struct {
		Trips    int    `json:"round_trips"`
		Stream   int    `json:"stream_messages"`
		Duration string `json:"duration"`
		Window   string `json:"window"`
		Rounds   int    `json:"rounds"`
	} `json:"options"`
	Rows  []Row  `json:"rows"`
	Goals []Goal `json:"goals"`
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == childArg {
		if err := childMain(os.Args[1:]); err != nil {
			fmt.Fprintf(os.Stderr, "ficm child: %v\n", err)
			os.Exit(1)
		}
		return
	}
	var o options
	flag.IntVar(&o.trips, "n", 20000, "round trips per process baseline")
	flag.IntVar(&o.stream, "stream", 200000, "messages streamed one way per process baseline")
	flag.DurationVar(&o.duration, "duration", time.Second, "measuring time per spinning mechanism (floor, VMs) and round")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds of the floor and VM polling, alternating")
	flag.DurationVar(&o.window, "window", 10*time.Millisecond, "sampling window for spinning mechanisms")
	flag.StringVar(&o.jsonPath, "json", "build/bench/ficm.json", "write results as JSON here (empty: don't)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintf(os.Stderr, "ficm: %v\n", err)
		os.Exit(1)
	}
}

// benchCores returns the first two cores this process may run on.
func benchCores() ([2]int, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return [2]int{}, fmt.Errorf("affinity: %w", err)
	}
	var cores []int
	for c := 0; c < 1024 && len(cores) < 2; c++ {
		if set.IsSet(c) {
			cores = append(cores, c)
		}
	}
	if len(cores) < 2 {
		return [2]int{}, fmt.Errorf("needs two cores, may use %v", cores)
	}
	return [2]int{cores[0], cores[1]}, nil
}

func run(ctx context.Context, o options) error {
	if o.trips < 1 || o.stream < 1 || o.rounds < 1 || o.duration <= 0 || o.window <= 0 || o.window > o.duration {
		return fmt.Errorf("bad settings: -n %d -stream %d -rounds %d -duration %v -window %v", o.trips, o.stream, o.rounds, o.duration, o.window)
	}
	cores, err := benchCores()
	if err != nil {
		return err
	}
	// Two goroutines locked to spinning threads hold two Ps; spare Ps let
	// the sampler and the runtime run without waiting for preemption.
	runtime.GOMAXPROCS(runtime.NumCPU() + 2)
	emulated := kvmEmulatesKernel()
	load := loadAverage()
	sampler := windowSampler{duration: o.duration, window: o.window}
	var rows []Row
	progress := func(name string) { fmt.Fprintf(os.Stderr, "ficm: measuring %s\n", name) }

	// The floor and the VM polling path alternate over rounds, so that
	// other load on the host falls on both alike.
	kvmErr := kvmUsable()
	var floors, polls []Row
	for i := 0; i < o.rounds; i++ {
		progress(fmt.Sprintf("floor (round %d/%d)", i+1, o.rounds))
		floor, err := runFloor(ctx, cores, sampler)
		if err != nil {
			return err
		}
		floors = append(floors, floor)
		if kvmErr != nil {
			continue
		}
		progress(fmt.Sprintf("VM polling (round %d/%d)", i+1, o.rounds))
		poll, err := runVMPolling(ctx, cores, sampler)
		if err != nil {
			return err
		}
		polls = append(polls, poll)
	}
	poll := Row{Mechanism: "VM-VM polling (shared memfd, CPL 3)", Polling: true}
	irq := Row{Mechanism: "VM-VM interrupt (ioeventfd->irqfd)", IRQ: true}
	if kvmErr != nil {
		poll.Skipped, irq.Skipped = kvmErr.Error(), kvmErr.Error()
	} else {
		poll = MergeRounds(polls)
		progress("VM interrupt")
		if irq, err = runVMInterrupt(ctx, cores, sampler, emulated); err != nil {
			return err
		}
	}
	rows = append(rows, MergeRounds(floors), poll, irq)

	warmup := min(o.trips/10+1, 2000)
	for _, b := range []struct{ mech, name string }{
		{mechPipe, "processes: pipe"},
		{mechUnix, "processes: Unix socket"},
		{mechTCP, "processes: TCP 127.0.0.1"},
		{mechSHM, "processes: shm ring + futex"},
	} {
		progress(b.name)
		plan := procPlan{mech: b.mech, warmup: warmup, trips: o.trips, stream: o.stream, core: cores[1]}
		r, err := runProcessBaseline(ctx, plan, cores[0])
		if err != nil {
			return fmt.Errorf("%s: %w", b.name, err)
		}
		row := Row{Mechanism: b.name, RTT: Summarize(r.rtt), OneWay: Summarize(r.oneWay), Throughput: r.throughput}
		switch b.mech {
		case mechPipe:
			row.Note = fmt.Sprintf("processes pinned to cores %d,%d; RTT per message; one-way from CLOCK_REALTIME stamps (both directions); msgs/s = %d messages one way, then one ack", cores[0], cores[1], o.stream)
		case mechSHM:
			row.Note = "64-slot ring per direction; the receiver sleeps in FUTEX_WAIT when its ring is empty, the sender wakes it"
		}
		rows = append(rows, row)
	}

	goals := EvaluateGoals(rows, emulated)
	fmt.Printf("FICM 64-byte messages, cores %d and %d, %s, load average at start %s\n\n", cores[0], cores[1], time.Now().UTC().Format(time.RFC3339), load)
	if err := WriteTable(os.Stdout, rows, goals); err != nil {
		return err
	}
	if o.jsonPath == "" {
		return nil
	}
	rep := report{Time: time.Now().UTC(), Cores: cores, KVMEmulatesK0: emulated, LoadAverage: load, Rows: rows, Goals: goals}
	rep.Options.Trips, rep.Options.Stream = o.trips, o.stream
	rep.Options.Duration, rep.Options.Window, rep.Options.Rounds = o.duration.String(), o.window.String(), o.rounds
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(o.jsonPath), 0o755); err != nil {
		return fmt.Errorf("results directory: %w", err)
	}
	if err := os.WriteFile(o.jsonPath, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	fmt.Printf("\nresults: %s\n", o.jsonPath)
	return nil
}

// loadAverage is the host's 1/5/15-minute load average: other work on the
// two measured cores shows up in the spinning rows' p99.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
