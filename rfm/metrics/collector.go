// Package metrics exports the supervisor's state in the Prometheus text
// format (GET /metrics on rfm serve --metrics ADDR): the ledger's cores
// and hugepages, the subOSes by state, the audit events and VMM exits
// counted since the supervisor started, and what each subOS's agent last
// reported (health, heartbeat, CPU use, memory, load, pressure).
//
// A Collector reads the supervisor through Source at scrape time: nothing
// polls between scrapes and nothing is cached. It is registered on a
// private registry (NewRegistry), never the process-wide default one.
//
// Label values are subOS names (host-chosen), numbers and words of this
// package and the supervisor's (states, audit event kinds): nothing a
// guest wrote becomes one (not its agent's version string), and a
// report's CPU ids become vcpu labels only below the subOS's vCPU count.
//
// It uses github.com/prometheus/client_golang: the reference Prometheus
// client for Go, kept by the Prometheus project itself, whose registry,
// text encoder and promlint checks the rest of the ecosystem follows.
package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"rainforest/internal/agentproto"
	"rainforest/internal/buildinfo"
	"rainforest/internal/units"
	"rainforest/rfm/supervisor"
)

// Source is what the collector reads: the supervisor satisfies it.
type Source interface {
	// List returns the subOSes with their allocations and agent health.
	List() []supervisor.Info
	// Usage returns the ledger's view of cores and hugepage pools.
	Usage() supervisor.Usage
	// AgentStats returns a subOS's latest agent report (an error when
	// there is none).
	AgentStats(name string) (supervisor.AgentStats, error)
	// Counters returns the running totals since the supervisor started.
	Counters() supervisor.Counters
}

// Namespace prefixes every metric name the collector exports.
const Namespace = "rainforest"

// Collector is a prometheus.Collector of a Source's state.
type Collector struct {
	src   Source
	build buildinfo.Info
	now   func() time.Time // tests set it
	d     descs
}

// descs are the Collector's metric descriptions.
type descs struct {
	buildInfo, subOS, subOSCores, subOSBorrowed, subOSMemory                    *prometheus.Desc
	freeCores, housekeepingCores                                                *prometheus.Desc
	pagesCapacity, pagesOwned, pagesFree                                        *prometheus.Desc
	events, vmmExits                                                            *prometheus.Desc
	agentState, agentBeat, agentBeatAge                                         *prometheus.Desc
	reportTime, cpuInterval, cpu, vcpu                                          *prometheus.Desc
	memTotal, memFree, memAvailable, memBuffers, memCached, swapTotal, swapFree *prometheus.Desc
	load1, load5, load15, runnable, tasks, processes                            *prometheus.Desc
	pressure, stalled                                                           *prometheus.Desc
}

func newDescs() descs {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(Namespace+"_"+name, help, labels, nil)
	}
	return descs{
		buildInfo:         d("build_info", "The supervisor's build: always 1, the build in its labels.", "version", "commit", "go_version"),
		subOS:             d("subos", "Number of subOSes in each lifecycle state.", "state"),
		subOSCores:        d("subos_cores", "Host cores a subOS holds (one vCPU each), borrowed ones included.", "subos"),
		subOSBorrowed:     d("subos_borrowed_cores", "Host cores a subOS holds on loan from another.", "subos"),
		subOSMemory:       d("subos_memory_bytes", "Guest RAM a subOS holds, in hugepages of its node.", "subos", "node"),
		freeCores:         d("free_cores", "Online host cores neither a subOS nor the housekeeping set owns."),
		housekeepingCores: d("housekeeping_cores", "Host cores kept for the supervisor and the host."),
		pagesCapacity:     d("hugepages_capacity_pages", "Hugepages of a pool the ledger may hand out.", "node", "page_size"),
		pagesOwned:        d("hugepages_owned_pages", "Hugepages of a pool allocated to subOSes.", "node", "page_size"),
		pagesFree:         d("hugepages_free_pages", "Hugepages of a pool free for new subOSes.", "node", "page_size"),
		events:            d("audit_events_total", "Audit events recorded since the supervisor started, by kind.", "kind"),
		vmmExits:          d("vmm_exits_total", "VMMs that ended on their own (not destroyed) since the supervisor started."),
		agentState:        d("subos_agent_state", "A subOS's agent health: 1 for its state, 0 for the others.", "subos", "state"),
		agentBeat:         d("subos_agent_last_heartbeat_timestamp_seconds", "When the supervisor last heard from a subOS's agent (Unix time).", "subos"),
		agentBeatAge:      d("subos_agent_heartbeat_age_seconds", "Seconds since the supervisor last heard from a subOS's agent.", "subos"),
		reportTime:        d("guest_report_timestamp_seconds", "When the supervisor received a subOS's latest agent report (Unix time); the guest_ figures are from it.", "subos"),
		cpuInterval:       d("guest_cpu_interval_seconds", "The interval the guest's CPU use was measured over (0: since the guest booted).", "subos"),
		cpu:               d("guest_cpu_usage_ratio", "Share of all the guest's CPU time spent in each mode over the interval (0..1).", "subos", "mode"),
		vcpu:              d("guest_vcpu_usage_ratio", "Share of one guest CPU's time spent in each mode over the interval (0..1).", "subos", "vcpu", "mode"),
		memTotal:          d("guest_memory_total_bytes", "The guest's MemTotal.", "subos"),
		memFree:           d("guest_memory_free_bytes", "The guest's MemFree.", "subos"),
		memAvailable:      d("guest_memory_available_bytes", "The guest's MemAvailable.", "subos"),
		memBuffers:        d("guest_memory_buffers_bytes", "The guest's Buffers.", "subos"),
		memCached:         d("guest_memory_cached_bytes", "The guest's Cached.", "subos"),
		swapTotal:         d("guest_swap_total_bytes", "The guest's SwapTotal.", "subos"),
		swapFree:          d("guest_swap_free_bytes", "The guest's SwapFree.", "subos"),
		load1:             d("guest_load1", "The guest's 1-minute load average.", "subos"),
		load5:             d("guest_load5", "The guest's 5-minute load average.", "subos"),
		load15:            d("guest_load15", "The guest's 15-minute load average.", "subos"),
		runnable:          d("guest_runnable_tasks", "Tasks runnable in the guest (/proc/loadavg).", "subos"),
		tasks:             d("guest_tasks", "Tasks (threads) in the guest (/proc/loadavg).", "subos"),
		processes:         d("guest_processes", "Processes in the guest.", "subos"),
		pressure:          d("guest_pressure_avg10_ratio", "Share of the last 10 seconds some or all guest tasks stalled on a resource (PSI avg10, 0..1).", "subos", "resource", "line"),
		stalled:           d("guest_pressure_stalled_seconds_total", "Time some or all guest tasks stalled on a resource since the guest booted (PSI total).", "subos", "resource", "line"),
	}
}

// NewCollector returns a Collector of src; build is the supervisor's
// build (rainforest_build_info).
func NewCollector(src Source, build buildinfo.Info) *Collector {
	return &Collector{src: src, build: build, now: time.Now, d: newDescs()}
}

// Describe sends every metric description the Collector may use.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	d := c.d
	for _, x := range []*prometheus.Desc{
		d.buildInfo, d.subOS, d.subOSCores, d.subOSBorrowed, d.subOSMemory, d.freeCores, d.housekeepingCores,
		d.pagesCapacity, d.pagesOwned, d.pagesFree, d.events, d.vmmExits, d.agentState, d.agentBeat, d.agentBeatAge,
		d.reportTime, d.cpuInterval, d.cpu, d.vcpu, d.memTotal, d.memFree, d.memAvailable, d.memBuffers, d.memCached,
		d.swapTotal, d.swapFree, d.load1, d.load5, d.load15, d.runnable, d.tasks, d.processes, d.pressure, d.stalled,
	} {
		ch <- x
	}
}

// Collect reads the Source and sends the metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		send(ch, desc, prometheus.GaugeValue, v, labels...)
	}
	counter := func(desc *prometheus.Desc, v float64, labels ...string) {
		send(ch, desc, prometheus.CounterValue, v, labels...)
	}
	gauge(d.buildInfo, 1, c.build.Version, c.build.ShortCommit(), c.build.GoVersion)

	u := c.src.Usage()
	gauge(d.freeCores, float64(len(u.FreeCores)))
	gauge(d.housekeepingCores, float64(len(u.Housekeeping)))
	for _, p := range u.Pools {
		node, ps := strconv.Itoa(p.Node), units.FormatSize(p.PageSize)
		gauge(d.pagesCapacity, float64(p.Capacity), node, ps)
		gauge(d.pagesOwned, float64(p.Owned), node, ps)
		gauge(d.pagesFree, float64(p.Free), node, ps)
	}

	cn := c.src.Counters()
	for kind, n := range cn.Events {
		counter(d.events, float64(n), kind)
	}
	counter(d.vmmExits, float64(cn.VMMExits))

	list := c.src.List()
	// Every state is shown, with 0 for none.
	byState := map[supervisor.State]int{supervisor.StateStarting: 0, supervisor.StateRunning: 0, supervisor.StateStopping: 0}
	for _, in := range list {
		byState[in.State]++
	}
	for st, n := range byState {
		gauge(d.subOS, float64(n), string(st))
	}
	now := c.now()
	for _, in := range list {
		a := in.Allocation
		gauge(d.subOSCores, float64(len(a.Cores)), in.Name)
		gauge(d.subOSBorrowed, float64(len(a.Cores)-len(a.OwnedCores())), in.Name)
		gauge(d.subOSMemory, float64(a.Memory), in.Name, strconv.Itoa(a.Node))
		if in.Agent == nil {
			continue // no agent channel
		}
		for _, st := range []supervisor.AgentState{supervisor.AgentUnknown, supervisor.AgentHealthy, supervisor.AgentUnhealthy} {
			gauge(d.agentState, boolValue(in.Agent.State == st), in.Name, string(st))
		}
		if hb := in.Agent.LastHeartbeat; hb != nil {
			gauge(d.agentBeat, unixSeconds(*hb), in.Name)
			gauge(d.agentBeatAge, max(now.Sub(*hb).Seconds(), 0), in.Name)
		}
		r, err := c.src.AgentStats(in.Name)
		if err != nil {
			continue // no report yet, or the subOS went since List
		}
		c.collectReport(ch, in.Name, len(a.Cores), r)
	}
}

// collectReport sends the figures of one agent report. Only the report's
// numbers are exported: its CPU ids become vcpu labels only below the
// subOS's vCPU count (the host's number, not the guest's word).
func (c *Collector) collectReport(ch chan<- prometheus.Metric, name string, vcpus int, r supervisor.AgentStats) {
	d := c.d
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		send(ch, desc, prometheus.GaugeValue, v, append([]string{name}, labels...)...)
	}
	gauge(d.reportTime, unixSeconds(r.Time))
	gauge(d.cpuInterval, float64(r.IntervalMS)/1e3)
	cpuModes(r.All, func(mode string, v float64) { gauge(d.cpu, v, mode) })
	for _, u := range r.CPUs {
		if int(u.CPU) >= vcpus {
			continue
		}
		id := strconv.FormatUint(uint64(u.CPU), 10)
		cpuModes(u, func(mode string, v float64) { gauge(d.vcpu, v, id, mode) })
	}
	m := r.Memory
	gauge(d.memTotal, float64(m.Total))
	gauge(d.memFree, float64(m.Free))
	gauge(d.memAvailable, float64(m.Available))
	gauge(d.memBuffers, float64(m.Buffers))
	gauge(d.memCached, float64(m.Cached))
	gauge(d.swapTotal, float64(m.SwapTotal))
	gauge(d.swapFree, float64(m.SwapFree))
	gauge(d.load1, r.Load.Load1)
	gauge(d.load5, r.Load.Load5)
	gauge(d.load15, r.Load.Load15)
	gauge(d.runnable, float64(r.Load.Runnable))
	gauge(d.tasks, float64(r.Load.Tasks))
	gauge(d.processes, float64(r.Processes))
	if r.PSI == nil {
		return
	}
	for _, res := range []struct {
		name string
		p    *agentproto.Pressure
	}{{"cpu", r.PSI.CPU}, {"memory", r.PSI.Memory}, {"io", r.PSI.IO}} {
		if res.p == nil {
			continue
		}
		line := func(kind string, l agentproto.PressureLine) {
			gauge(d.pressure, l.Avg10/100, res.name, kind)
			send(ch, d.stalled, prometheus.CounterValue, float64(l.TotalUS)/1e6, name, res.name, kind)
		}
		line("some", res.p.Some)
		if res.p.Full != nil {
			line("full", *res.p.Full)
		}
	}
}

// send sends one metric; one that cannot be made (a label value that is
// not UTF-8) is sent as an invalid metric, which fails that series of the
// scrape rather than the supervisor (Collect must not panic).
func send(ch chan<- prometheus.Metric, desc *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
	m, err := prometheus.NewConstMetric(desc, t, v, labels...)
	if err != nil {
		m = prometheus.NewInvalidMetric(desc, err)
	}
	ch <- m
}

// cpuModes calls f with each mode of u as a fraction (u is in percent).
func cpuModes(u agentproto.CPUUse, f func(mode string, v float64)) {
	f("user", u.User/100)
	f("system", u.System/100)
	f("iowait", u.IOWait/100)
	f("steal", u.Steal/100)
	f("idle", u.Idle/100)
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }
