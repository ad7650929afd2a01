package metrics

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"rainforest/internal/agentproto"
	"rainforest/internal/buildinfo"
	"rainforest/ledger"
	"rainforest/rfm/supervisor"
)

// The supervisor is a Source.
var _ Source = (*supervisor.Supervisor)(nil)

// fakeSource is a supervisor's state, fixed.
type fakeSource struct {
	list     []supervisor.Info
	usage    supervisor.Usage
	stats    map[string]supervisor.AgentStats
	counters supervisor.Counters
}

func (f *fakeSource) List() []supervisor.Info       { return f.list }
func (f *fakeSource) Usage() supervisor.Usage       { return f.usage }
func (f *fakeSource) Counters() supervisor.Counters { return f.counters }
func (f *fakeSource) AgentStats(name string) (supervisor.AgentStats, error) {
	r, ok := f.stats[name]
	if !ok {
		return supervisor.AgentStats{}, fmt.Errorf("%w: %q has sent no report", supervisor.ErrNoAgent, name)
	}
	return r, nil
}

var testNow = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// testSource has three subOSes: web (its agent healthy, with a report),
// db (an agent never heard from) and old (no agent channel, stopping).
func testSource() *fakeSource {
	beat := testNow.Add(-1500 * time.Millisecond)
	return &fakeSource{
		list: []supervisor.Info{
			{Name: "db", State: supervisor.StateStarting, Agent: &supervisor.AgentInfo{State: supervisor.AgentUnknown},
				Allocation: ledger.Allocation{Name: "db", Cores: []int{3}, Node: 0, Memory: 1 << 30, PageSize: 1 << 30, Pages: 1}},
			{Name: "old", State: supervisor.StateStopping,
				Allocation: ledger.Allocation{Name: "old", Cores: []int{4}, Node: 1, Memory: 256 << 20, PageSize: 2 << 20, Pages: 128}},
			{Name: "web", State: supervisor.StateRunning,
				Agent: &supervisor.AgentInfo{State: supervisor.AgentHealthy, Version: "rf-agent \x1b[31mevil\" 1", LastHeartbeat: &beat},
				Allocation: ledger.Allocation{Name: "web", Cores: []int{1, 2}, Node: 0, Memory: 512 << 20, PageSize: 2 << 20, Pages: 256,
					Borrowed: []ledger.Loan{{Cores: []int{2}}}}},
		},
		usage: supervisor.Usage{Housekeeping: []int{0}, FreeCores: []int{5, 6, 7},
			Pools: []supervisor.PoolUsage{
				{Node: 0, PageSize: 2 << 20, Capacity: 1024, Owned: 256, Free: 768},
				{Node: 0, PageSize: 1 << 30, Capacity: 2, Owned: 1, Free: 1},
			}},
		stats: map[string]supervisor.AgentStats{"web": {Name: "web", Time: testNow.Add(-time.Second), Stats: agentproto.Stats{
			Seq: 9, IntervalMS: 2000,
			All: agentproto.CPUUse{User: 25, System: 5, IOWait: 0, Steal: 0, Idle: 70},
			// The guest claims a CPU 7: web has 2 vCPUs, so it is not shown.
			CPUs: []agentproto.CPUUse{
				{CPU: 0, User: 50, System: 10, Idle: 40},
				{CPU: 1, Idle: 100},
				{CPU: 7, User: 100},
			},
			Memory: agentproto.Memory{Total: 500 << 20, Free: 300 << 20, Available: 400 << 20, Buffers: 1 << 20, Cached: 50 << 20},
			Load:   agentproto.Load{Load1: 0.5, Load5: 0.25, Load15: 0.125, Runnable: 2, Tasks: 40},
			PSI: &agentproto.PSI{
				CPU: &agentproto.Pressure{Some: agentproto.PressureLine{Avg10: 12.5, TotalUS: 1500000}},
				IO: &agentproto.Pressure{Some: agentproto.PressureLine{Avg10: 50, TotalUS: 2000000},
					Full: &agentproto.PressureLine{Avg10: 25, TotalUS: 1000000}},
			},
			Processes: 12,
		}}},
		counters: supervisor.Counters{Events: map[string]uint64{"create": 3, "destroy": 1, "agent-healthy": 1}, VMMExits: 2},
	}
}

func testCollector(src Source) *Collector {
	c := NewCollector(src, buildinfo.Info{Version: "v1.2.3", Commit: "0123456789abcdef0123", GoVersion: "go1.26.8"})
	c.now = func() time.Time { return testNow }
	return c
}

const wantText = `
# HELP rainforest_audit_events_total Audit events recorded since the supervisor started, by kind.
# TYPE rainforest_audit_events_total counter
rainforest_audit_events_total{kind="agent-healthy"} 1
rainforest_audit_events_total{kind="create"} 3
rainforest_audit_events_total{kind="destroy"} 1
# HELP rainforest_build_info The supervisor's build: always 1, the build in its labels.
# TYPE rainforest_build_info gauge
rainforest_build_info{commit="0123456789ab",go_version="go1.26.8",version="v1.2.3"} 1
# HELP rainforest_free_cores Online host cores neither a subOS nor the housekeeping set owns.
# TYPE rainforest_free_cores gauge
rainforest_free_cores 3
# HELP rainforest_guest_cpu_interval_seconds The interval the guest's CPU use was measured over (0: since the guest booted).
# TYPE rainforest_guest_cpu_interval_seconds gauge
rainforest_guest_cpu_interval_seconds{subos="web"} 2
# HELP rainforest_guest_cpu_usage_ratio Share of all the guest's CPU time spent in each mode over the interval (0..1).
# TYPE rainforest_guest_cpu_usage_ratio gauge
rainforest_guest_cpu_usage_ratio{mode="idle",subos="web"} 0.7
rainforest_guest_cpu_usage_ratio{mode="iowait",subos="web"} 0
rainforest_guest_cpu_usage_ratio{mode="steal",subos="web"} 0
rainforest_guest_cpu_usage_ratio{mode="system",subos="web"} 0.05
rainforest_guest_cpu_usage_ratio{mode="user",subos="web"} 0.25
# HELP rainforest_guest_load1 The guest's 1-minute load average.
# TYPE rainforest_guest_load1 gauge
rainforest_guest_load1{subos="web"} 0.5
# HELP rainforest_guest_load15 The guest's 15-minute load average.
# TYPE rainforest_guest_load15 gauge
rainforest_guest_load15{subos="web"} 0.125
# HELP rainforest_guest_load5 The guest's 5-minute load average.
# TYPE rainforest_guest_load5 gauge
rainforest_guest_load5{subos="web"} 0.25
# HELP rainforest_guest_memory_available_bytes The guest's MemAvailable.
# TYPE rainforest_guest_memory_available_bytes gauge
rainforest_guest_memory_available_bytes{subos="web"} 4.194304e+08
# HELP rainforest_guest_memory_buffers_bytes The guest's Buffers.
# TYPE rainforest_guest_memory_buffers_bytes gauge
rainforest_guest_memory_buffers_bytes{subos="web"} 1.048576e+06
# HELP rainforest_guest_memory_cached_bytes The guest's Cached.
# TYPE rainforest_guest_memory_cached_bytes gauge
rainforest_guest_memory_cached_bytes{subos="web"} 5.24288e+07
# HELP rainforest_guest_memory_free_bytes The guest's MemFree.
# TYPE rainforest_guest_memory_free_bytes gauge
rainforest_guest_memory_free_bytes{subos="web"} 3.145728e+08
# HELP rainforest_guest_memory_total_bytes The guest's MemTotal.
# TYPE rainforest_guest_memory_total_bytes gauge
rainforest_guest_memory_total_bytes{subos="web"} 5.24288e+08
# HELP rainforest_guest_pressure_avg10_ratio Share of the last 10 seconds some or all guest tasks stalled on a resource (PSI avg10, 0..1).
# TYPE rainforest_guest_pressure_avg10_ratio gauge
rainforest_guest_pressure_avg10_ratio{line="full",resource="io",subos="web"} 0.25
rainforest_guest_pressure_avg10_ratio{line="some",resource="cpu",subos="web"} 0.125
rainforest_guest_pressure_avg10_ratio{line="some",resource="io",subos="web"} 0.5
# HELP rainforest_guest_pressure_stalled_seconds_total Time some or all guest tasks stalled on a resource since the guest booted (PSI total).
# TYPE rainforest_guest_pressure_stalled_seconds_total counter
rainforest_guest_pressure_stalled_seconds_total{line="full",resource="io",subos="web"} 1
rainforest_guest_pressure_stalled_seconds_total{line="some",resource="cpu",subos="web"} 1.5
rainforest_guest_pressure_stalled_seconds_total{line="some",resource="io",subos="web"} 2
# HELP rainforest_guest_processes Processes in the guest.
# TYPE rainforest_guest_processes gauge
rainforest_guest_processes{subos="web"} 12
# HELP rainforest_guest_report_timestamp_seconds When the supervisor received a subOS's latest agent report (Unix time); the guest_ figures are from it.
# TYPE rainforest_guest_report_timestamp_seconds gauge
rainforest_guest_report_timestamp_seconds{subos="web"} 1.767323044e+09
# HELP rainforest_guest_runnable_tasks Tasks runnable in the guest (/proc/loadavg).
# TYPE rainforest_guest_runnable_tasks gauge
rainforest_guest_runnable_tasks{subos="web"} 2
# HELP rainforest_guest_swap_free_bytes The guest's SwapFree.
# TYPE rainforest_guest_swap_free_bytes gauge
rainforest_guest_swap_free_bytes{subos="web"} 0
# HELP rainforest_guest_swap_total_bytes The guest's SwapTotal.
# TYPE rainforest_guest_swap_total_bytes gauge
rainforest_guest_swap_total_bytes{subos="web"} 0
# HELP rainforest_guest_tasks Tasks (threads) in the guest (/proc/loadavg).
# TYPE rainforest_guest_tasks gauge
rainforest_guest_tasks{subos="web"} 40
# HELP rainforest_guest_vcpu_usage_ratio Share of one guest CPU's time spent in each mode over the interval (0..1).
# TYPE rainforest_guest_vcpu_usage_ratio gauge
rainforest_guest_vcpu_usage_ratio{mode="idle",subos="web",vcpu="0"} 0.4
rainforest_guest_vcpu_usage_ratio{mode="idle",subos="web",vcpu="1"} 1
rainforest_guest_vcpu_usage_ratio{mode="iowait",subos="web",vcpu="0"} 0
rainforest_guest_vcpu_usage_ratio{mode="iowait",subos="web",vcpu="1"} 0
rainforest_guest_vcpu_usage_ratio{mode="steal",subos="web",vcpu="0"} 0
rainforest_guest_vcpu_usage_ratio{mode="steal",subos="web",vcpu="1"} 0
rainforest_guest_vcpu_usage_ratio{mode="system",subos="web",vcpu="0"} 0.1
rainforest_guest_vcpu_usage_ratio{mode="system",subos="web",vcpu="1"} 0
rainforest_guest_vcpu_usage_ratio{mode="user",subos="web",vcpu="0"} 0.5
rainforest_guest_vcpu_usage_ratio{mode="user",subos="web",vcpu="1"} 0
# HELP rainforest_housekeeping_cores Host cores kept for the supervisor and the host.
# TYPE rainforest_housekeeping_cores gauge
rainforest_housekeeping_cores 1
# HELP rainforest_hugepages_capacity_pages Hugepages of a pool the ledger may hand out.
# TYPE rainforest_hugepages_capacity_pages gauge
rainforest_hugepages_capacity_pages{node="0",page_size="1G"} 2
rainforest_hugepages_capacity_pages{node="0",page_size="2M"} 1024
# HELP rainforest_hugepages_free_pages Hugepages of a pool free for new subOSes.
# TYPE rainforest_hugepages_free_pages gauge
rainforest_hugepages_free_pages{node="0",page_size="1G"} 1
rainforest_hugepages_free_pages{node="0",page_size="2M"} 768
# HELP rainforest_hugepages_owned_pages Hugepages of a pool allocated to subOSes.
# TYPE rainforest_hugepages_owned_pages gauge
rainforest_hugepages_owned_pages{node="0",page_size="1G"} 1
rainforest_hugepages_owned_pages{node="0",page_size="2M"} 256
# HELP rainforest_subos Number of subOSes in each lifecycle state.
# TYPE rainforest_subos gauge
rainforest_subos{state="running"} 1
rainforest_subos{state="starting"} 1
rainforest_subos{state="stopping"} 1
# HELP rainforest_subos_agent_heartbeat_age_seconds Seconds since the supervisor last heard from a subOS's agent.
# TYPE rainforest_subos_agent_heartbeat_age_seconds gauge
rainforest_subos_agent_heartbeat_age_seconds{subos="web"} 1.5
# HELP rainforest_subos_agent_last_heartbeat_timestamp_seconds When the supervisor last heard from a subOS's agent (Unix time).
# TYPE rainforest_subos_agent_last_heartbeat_timestamp_seconds gauge
rainforest_subos_agent_last_heartbeat_timestamp_seconds{subos="web"} 1.7673230435e+09
# HELP rainforest_subos_agent_state A subOS's agent health: 1 for its state, 0 for the others.
# TYPE rainforest_subos_agent_state gauge
rainforest_subos_agent_state{state="healthy",subos="db"} 0
rainforest_subos_agent_state{state="healthy",subos="web"} 1
rainforest_subos_agent_state{state="unhealthy",subos="db"} 0
rainforest_subos_agent_state{state="unhealthy",subos="web"} 0
rainforest_subos_agent_state{state="unknown",subos="db"} 1
rainforest_subos_agent_state{state="unknown",subos="web"} 0
# HELP rainforest_subos_borrowed_cores Host cores a subOS holds on loan from another.
# TYPE rainforest_subos_borrowed_cores gauge
rainforest_subos_borrowed_cores{subos="db"} 0
rainforest_subos_borrowed_cores{subos="old"} 0
rainforest_subos_borrowed_cores{subos="web"} 1
# HELP rainforest_subos_cores Host cores a subOS holds (one vCPU each), borrowed ones included.
# TYPE rainforest_subos_cores gauge
rainforest_subos_cores{subos="db"} 1
rainforest_subos_cores{subos="old"} 1
rainforest_subos_cores{subos="web"} 2
# HELP rainforest_subos_memory_bytes Guest RAM a subOS holds, in hugepages of its node.
# TYPE rainforest_subos_memory_bytes gauge
rainforest_subos_memory_bytes{node="0",subos="db"} 1.073741824e+09
rainforest_subos_memory_bytes{node="0",subos="web"} 5.36870912e+08
rainforest_subos_memory_bytes{node="1",subos="old"} 2.68435456e+08
# HELP rainforest_vmm_exits_total VMMs that ended on their own (not destroyed) since the supervisor started.
# TYPE rainforest_vmm_exits_total counter
rainforest_vmm_exits_total 2
`

// The collector exports the source's state as it is at scrape time: the
// ledger's figures, the counters, agent health and the latest report.
func TestCollect(t *testing.T) {
	if err := testutil.CollectAndCompare(testCollector(testSource()), strings.NewReader(wantText)); err != nil {
		t.Error(err)
	}
}

// Every name passes promlint (units in names, counters in _total, help
// text), and the collector describes every metric it sends (a pedantic
// registry checks).
func TestLint(t *testing.T) {
	c := testCollector(testSource())
	probs, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range probs {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Gather(); err != nil {
		t.Error(err)
	}
}

// An empty supervisor still shows every lifecycle state (0), the free
// cores and the build; no subOS, no per-subOS series.
func TestCollectEmpty(t *testing.T) {
	c := testCollector(&fakeSource{usage: supervisor.Usage{FreeCores: []int{1}}})
	want := `
# HELP rainforest_subos Number of subOSes in each lifecycle state.
# TYPE rainforest_subos gauge
rainforest_subos{state="running"} 0
rainforest_subos{state="starting"} 0
rainforest_subos{state="stopping"} 0
# HELP rainforest_free_cores Online host cores neither a subOS nor the housekeeping set owns.
# TYPE rainforest_free_cores gauge
rainforest_free_cores 1
# HELP rainforest_vmm_exits_total VMMs that ended on their own (not destroyed) since the supervisor started.
# TYPE rainforest_vmm_exits_total counter
rainforest_vmm_exits_total 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "rainforest_subos", "rainforest_free_cores", "rainforest_vmm_exits_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(c, "rainforest_subos_cores", "rainforest_subos_agent_state", "rainforest_audit_events_total"); n != 0 {
		t.Errorf("%d per-subOS or event series with nothing to show", n)
	}
}

// The collector reads the source at each scrape: nothing is cached.
func TestCollectReadsNow(t *testing.T) {
	src := testSource()
	c := testCollector(src)
	want := func(free, exits int) string {
		return fmt.Sprintf(`
# HELP rainforest_free_cores Online host cores neither a subOS nor the housekeeping set owns.
# TYPE rainforest_free_cores gauge
rainforest_free_cores %d
# HELP rainforest_vmm_exits_total VMMs that ended on their own (not destroyed) since the supervisor started.
# TYPE rainforest_vmm_exits_total counter
rainforest_vmm_exits_total %d
`, free, exits)
	}
	if err := testutil.CollectAndCompare(c, strings.NewReader(want(3, 2)), "rainforest_free_cores", "rainforest_vmm_exits_total"); err != nil {
		t.Error(err)
	}
	src.usage.FreeCores = []int{5}
	src.counters.VMMExits = 7
	if err := testutil.CollectAndCompare(c, strings.NewReader(want(1, 7)), "rainforest_free_cores", "rainforest_vmm_exits_total"); err != nil {
		t.Error(err)
	}
}

// A label value that cannot be exported (not UTF-8) fails its own series
// of the scrape, never the supervisor: Collect does not panic, and the
// other families are still gathered.
func TestCollectBadLabelValue(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(testSource(), buildinfo.Info{Version: "v\xff", Commit: "c", GoVersion: "go"}))
	mfs, err := reg.Gather()
	if err == nil || !strings.Contains(err.Error(), "rainforest_build_info") {
		t.Errorf("gather error %v, want one naming rainforest_build_info", err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	if !slices.Contains(names, "rainforest_free_cores") || slices.Contains(names, "rainforest_build_info") {
		t.Errorf("gathered %v", names)
	}
}
