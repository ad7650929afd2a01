package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"rainforest/bench/internal/qemuguest"
	"rainforest/bench/lifecycle/lxc"
	"rainforest/bench/lifecycle/qemu"
	"rainforest/bench/lifecycle/sample"
	"rainforest/images"
	"rainforest/internal/kvmhost"
	"rainforest/internal/shquote"
	"rainforest/vmm"
)

// nestedSetting names the nested measurement setting of rfm and QEMU.
const nestedSetting = "inside the nested L1 guest (QEMU TCG with emulated AMD-V, 3 vCPUs: core 0 housekeeping, " +
	"guests on cores 1-2); absolute times are not those of real hardware"

// Nested L1 sizing: the systems take turns, one guest at a time: a subOS
// or a QEMU guest of memoryMiB on 2 MiB hugepages plus the memory step
// plugged on hugepages too (default 256 + 512 MiB: 384 pages), with
// pages to spare; and the initramfs (the L2 kernel and initramfs, QEMU
// and its libraries) and QEMU's own memory in L1's RAM.
const (
	nestedCPUs      = 3
	nestedMemoryMiB = 3072
	nestedHugePages = 420
)

// Cores of the guests in the nested L1 guest: the subOS gets the first
// free core after the housekeeping core 0 and, grown, the next; QEMU runs
// on the first (taskset) and its hot-added vCPU is pinned to the second.
const (
	guestCore  = 1
	onlineCore = 2
)

// infoPrefix starts the line the script prints first, about where it runs.
const infoPrefix = "RF-LIFECYCLE-INFO"

// guestFifo is the fifo the QEMU guest's command waits on.
const guestFifo = "/tmp/lc-wait"

// binaries are the static programs built for the session.
type binaries struct{ rfm, measurer string }

// sessionPlan is what runs where rfm runs: the supervisor, and the
// measurer timing rfm subOSes and (qemuCPU set) QEMU guests.
type sessionPlan struct {
	runs          int
	memoryMiB     int
	memoryStepMiB int
	runTimeout    time.Duration
	// qemuCPU is the measured QEMU's -cpu model; empty: QEMU is not
	// measured.
	qemuCPU string
	// pin runs QEMU on guestCore and pins its hot-added vCPU to
	// onlineCore (nested: the cores the subOS gets).
	pin  bool
	echo bool
	// commands are the command lines run, by step (set by serveArgv,
	// measurerArgv and qemuArgv).
	commands map[string]string
}

// sessionPaths are the paths of programs, images and state where rfm runs.
type sessionPaths struct {
	rfm, measurer, kernel, initrd string
	// qemu and qemuData are the measured QEMU and its data directory.
	qemu, qemuData string
	// work holds the supervisor's socket, state, run directory and log,
	// and QEMU's QMP socket.
	work    string
	hkCores string
}

func (p sessionPaths) socket() string   { return filepath.Join(p.work, "rfm.sock") }
func (p sessionPaths) stateDir() string { return filepath.Join(p.work, "state") }
func (p sessionPaths) runDir() string   { return filepath.Join(p.work, "run") }
func (p sessionPaths) serveLog() string { return filepath.Join(p.work, "serve.log") }
func (p sessionPaths) qmp() string      { return filepath.Join(p.work, "qmp.sock") }

func (p *sessionPlan) record(step string, argv []string) []string {
	if p.commands == nil {
		p.commands = map[string]string{}
	}
	p.commands[step] = shquote.Join(argv)
	return argv
}

// serveArgv is the supervisor's command line.
func (p *sessionPlan) serveArgv(paths sessionPaths) []string {
	argv := []string{paths.rfm, "serve", "--socket", paths.socket(), "--state-dir", paths.stateDir(), "--run-dir", paths.runDir()}
	if paths.hkCores != "" {
		argv = append(argv, "--housekeeping", paths.hkCores)
	}
	return p.record("serve", argv)
}

// qemuCmdline is the QEMU guest's kernel command line: what rfm's VMM
// gives a subOS with hotplug memory (vmm.DefaultCmdline,
// vmm.MemoryCmdline), with the guest's command and no agent (it has no
// vsock device to talk on).
func qemuCmdline() string {
	return vmm.MemoryCmdline(vmm.DefaultCmdline(`rf.agent=0 rf.cmd="` + qemu.GuestCommand(qemu.CPUOnlineFile, guestFifo) + `"`))
}

// qemuArgv is the measured QEMU's command line: the pc machine (ACPI CPU
// hotplug), one vCPU of two, RAM on 2 MiB hugepages, a virtio-mem device
// of the memory step on hugepages (mapped without reservation, so that
// only plugged blocks take pages), the same kernel and initramfs as the
// subOS, serial console on stdout, QMP.
func (p *sessionPlan) qemuArgv(paths sessionPaths) []string {
	mem := strconv.Itoa(p.memoryMiB) + "M"
	var argv []string
	if p.pin {
		argv = []string{"taskset", "-c", strconv.Itoa(guestCore)}
	}
	argv = append(argv, paths.qemu, "-M", "pc,memory-backend=ram", "-enable-kvm", "-cpu", p.qemuCPU, "-smp", "1,maxcpus=2")
	if p.memoryStepMiB > 0 {
		step := strconv.Itoa(p.memoryStepMiB) + "M"
		argv = append(argv, "-m", mem+",maxmem="+strconv.Itoa(p.memoryMiB+p.memoryStepMiB)+"M",
			"-object", "memory-backend-file,id=ram,size="+mem+",mem-path=/dev/hugepages,prealloc=on",
			"-object", "memory-backend-file,id="+qemu.MemoryID+"mem,size="+step+",mem-path=/dev/hugepages,reserve=off",
			"-device", "virtio-mem-pci,id="+qemu.MemoryID+",memdev="+qemu.MemoryID+"mem,requested-size=0")
	} else {
		argv = append(argv, "-m", mem, "-object", "memory-backend-file,id=ram,size="+mem+",mem-path=/dev/hugepages,prealloc=on")
	}
	argv = append(argv, "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-L", paths.qemuData,
		"-name", "lc,debug-threads=on", "-qmp", "unix:"+paths.qmp()+",server=on,wait=off",
		"-kernel", paths.kernel, "-initrd", paths.initrd, "-append", qemuCmdline())
	return p.record("qemu", argv)
}

// measurerArgv is the measurer's command line.
func (p *sessionPlan) measurerArgv(paths sessionPaths) []string {
	argv := []string{paths.measurer, "-socket", paths.socket(), "-n", strconv.Itoa(p.runs),
		"-kernel", paths.kernel, "-initrd", paths.initrd, "-cpus", "1", "-memory-mib", strconv.Itoa(p.memoryMiB),
		"-marker", images.InitReachedMarker, "-timeout", p.runTimeout.String(), "-resize"}
	if p.memoryStepMiB > 0 {
		argv = append(argv, "-memory-step-mib", strconv.Itoa(p.memoryStepMiB))
	}
	if p.qemuCPU == "" {
		return p.record("measure", argv)
	}
	argv = append(argv, "-systems", "rfm,qemu", "-qmp", paths.qmp())
	if p.pin {
		argv = append(argv, "-online-cores", strconv.Itoa(onlineCore))
	}
	if p.echo {
		argv = append(argv, "-echo")
	}
	p.record("measure", argv)
	return append(append(argv, "--"), p.qemuArgv(paths)...)
}

// qemuSteps describes the QMP requests of each measured QEMU operation,
// for the report.
func (p *sessionPlan) qemuSteps() map[string]string {
	m := map[string]string{
		"create":  p.commands["qemu"] + " (until its QMP socket answered, and until " + images.InitReachedMarker + " on its serial console)",
		"destroy": "QMP quit, until QEMU answered and until its process exited",
		"cpu online": "QMP device_add of a vCPU (driver and properties from query-hotpluggable-cpus, asked before the clock), " +
			"its thread pinned (query-cpus-fast, sched_setaffinity), until the guest printed " + qemu.MarkerCPUOnline +
			" after writing 1 to " + qemu.CPUOnlineFile,
		"cpu offline": "QMP device_del " + qemu.CPUID + " until QEMU's DEVICE_DELETED event for it or its APIC " +
			"(QEMU 7.2 sends one for the APIC only); then query-hotpluggable-cpus, outside the clock, checks that its slot is free",
	}
	if !p.pin {
		m["cpu online"] = strings.Replace(m["cpu online"], ", its thread pinned (query-cpus-fast, sched_setaffinity)", "", 1)
	}
	if p.memoryStepMiB > 0 {
		path := "/machine/peripheral/" + qemu.MemoryID
		m["memory online"] = fmt.Sprintf("QMP qom-set %s requested-size %d, until QEMU's MEMORY_DEVICE_SIZE_CHANGE event "+
			"says its size (what the guest plugged) is that, timed by QEMU's stamp of the event (it rate-limits the event, "+
			"not the stamp); then qom-get %s size, outside the clock, checks it", path, uint64(p.memoryStepMiB)<<20, path)
		m["memory offline"] = fmt.Sprintf("QMP qom-set %s requested-size 0, until MEMORY_DEVICE_SIZE_CHANGE says size 0 (likewise)", path)
	}
	return m
}

// script renders the L1 script: start rfm serve, run the measurer, stop
// the supervisor, and show its log when something failed.
func (p *sessionPlan) script(paths sessionPaths) string {
	var b strings.Builder
	b.WriteString("grep -q ' /sys/fs/cgroup ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup\n")
	b.WriteString("echo \"" + infoPrefix + " kernel=$(uname -r) cpus=$(nproc) hugepages_free=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages)\"\n")
	if p.qemuCPU != "" {
		b.WriteString("\"" + paths.qemu + "\" --version | head -n 1\n")
	}
	fmt.Fprintf(&b, "mkdir -p %s\n", shquote.Quote(paths.work))
	fmt.Fprintf(&b, "%s >%s 2>&1 &\n", shquote.Join(p.serveArgv(paths)), shquote.Quote(paths.serveLog()))
	b.WriteString("serve=$!\n")
	fmt.Fprintf(&b, "%s\n", shquote.Join(p.measurerArgv(paths)))
	b.WriteString("st=$?\n")
	b.WriteString("kill $serve; wait $serve\n")
	fmt.Fprintf(&b, "if [ $st -ne 0 ]; then echo '== supervisor log'; tail -n 40 %s; echo '== subOS logs'; tail -n 20 %s/*.log; fi\n",
		shquote.Quote(paths.serveLog()), shquote.Quote(paths.runDir()))
	b.WriteString("exit $st\n")
	return b.String()
}

// runSession runs the rfm and QEMU half on h, nested or directly (where
// the supervisor's files go under work), passing each line to collect as
// it arrives.
func runSession(ctx context.Context, o options, p *sessionPlan, h *kvmhost.Host, img *images.Image, bins binaries, work string, collect func(string)) error {
	rfm := kvmhost.File{Host: bins.rfm, L1: "/bin/rfm"}
	measurer := kvmhost.File{Host: bins.measurer, L1: "/bin/rflifecycle"}
	l2 := kvmhost.File{Host: filepath.Dir(img.Kernel), L1: "/l2", Names: []string{filepath.Base(img.Kernel), filepath.Base(img.Initramfs)}}
	files := []kvmhost.File{rfm, measurer, l2}
	paths := sessionPaths{rfm: h.Path(rfm), measurer: h.Path(measurer),
		kernel: filepath.Join(h.Path(l2), filepath.Base(img.Kernel)), initrd: filepath.Join(h.Path(l2), filepath.Base(img.Initramfs)), work: work}
	if h.Nested {
		// L1 is the whole machine: core 0 stays with the supervisor.
		paths.work, paths.hkCores = "/tmp/rf-bench", "0"
	}
	script := kvmhost.Script{Files: files, CPUs: nestedCPUs, MemoryMiB: nestedMemoryMiB, HugePages: nestedHugePages, Lines: collect}
	if p.qemuCPU != "" {
		bin, data, err := h.QEMUPaths(o.qemu)
		if err != nil {
			return err
		}
		paths.qemu, paths.qemuData, script.QEMU = bin, data, o.qemu
		if h.Nested {
			bios, err := qemuguest.BIOSFile(o.qemu)
			if err != nil {
				return err
			}
			script.Files = append(script.Files, bios)
		}
	}
	script.Timeout = o.timeout
	if script.Timeout <= 0 {
		perCycle := 2 * time.Minute
		if p.qemuCPU != "" {
			perCycle *= 2
		}
		script.Timeout = 5*time.Minute + time.Duration(p.runs)*perCycle
	}
	script.Text = p.script(paths)
	res, err := h.Run(ctx, script)
	if err != nil {
		return err
	}
	if res.ExitStatus != 0 {
		return fmt.Errorf("the measuring script exited with %d; output tail:\n%s", res.ExitStatus, tail(res.Output, 4000))
	}
	return nil
}

// runLXC measures the LXC cycles on this host. It returns the samples and
// the commands, or why LXC could not be measured.
func runLXC(ctx context.Context, o options, work string, log io.Writer) ([]sample.Sample, map[string]string, error) {
	if err := lxc.Available(); err != nil {
		return nil, nil, err
	}
	cfg := lxc.Config{NamePrefix: "rf-bench-lc-" + strconv.Itoa(os.Getpid()) + "-", ConfigFile: filepath.Join(work, "lxc.conf")}
	cfg.ResizeFrom, cfg.ResizeTo = lxc.ResizeCPUs()
	if o.memoryStepMiB > 0 {
		cfg.Memory = lxc.MemoryLimits("/sys", uint64(o.memoryMiB)<<20, uint64(o.memoryStepMiB)<<20)
	}
	if err := lxc.WriteConfig(cfg.ConfigFile); err != nil {
		return nil, nil, err
	}
	cmds := lxc.Commands(cfg, cfg.NamePrefix+"N")
	var samples []sample.Sample
	for i := 1; i <= o.Runs; i++ {
		s := lxc.Cycle(ctx, cfg, i)
		samples = append(samples, s)
		progress(log, s, len(samples), o.Runs)
		if ctx.Err() != nil {
			break
		}
	}
	return samples, cmds, nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
