package procstat

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"time"

	"rainforest/internal/agentproto"
)

// Sampler makes stats reports from a /proc, each one's CPU use measured
// since the previous one (the first: since boot).
type Sampler struct {
	fsys     fs.FS
	prev     map[int]CPUTimes
	prevTime time.Time
	seq      uint64
}

// NewSampler returns a Sampler over fsys (a /proc).
func NewSampler(fsys fs.FS) *Sampler {
	return &Sampler{fsys: fsys}
}

// Sample reads fsys and returns a report; now is the time of the reading.
// /proc/pressure is optional (kernels without CONFIG_PSI).
func (s *Sampler) Sample(now time.Time) (*agentproto.Stats, error) {
	st := &agentproto.Stats{}
	f, err := s.fsys.Open("stat")
	if err != nil {
		return nil, fmt.Errorf("procstat: %w", err)
	}
	times, err := ParseStat(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	if len(times) > agentproto.MaxCPUs+1 {
		times = times[:agentproto.MaxCPUs+1]
	}
	cur := make(map[int]CPUTimes, len(times))
	for _, t := range times {
		cur[t.CPU] = t
		u := Use(s.prev[t.CPU], t)
		if t.CPU == -1 {
			st.All = u
			continue
		}
		if n := len(st.CPUs); n > 0 && st.CPUs[n-1].CPU >= u.CPU || t.CPU >= agentproto.MaxCPUID {
			return nil, fmt.Errorf("%w: /proc/stat cpus out of order", ErrFormat)
		}
		st.CPUs = append(st.CPUs, u)
	}
	if !s.prevTime.IsZero() {
		st.IntervalMS = uint64(now.Sub(s.prevTime).Milliseconds())
	}
	if st.Memory, err = parseFile(s.fsys, "meminfo", ParseMeminfo); err != nil {
		return nil, err
	}
	if st.Load, err = parseFile(s.fsys, "loadavg", ParseLoadavg); err != nil {
		return nil, err
	}
	for _, r := range []struct {
		name string
		dst  func(*agentproto.PSI) **agentproto.Pressure
	}{
		{"cpu", func(p *agentproto.PSI) **agentproto.Pressure { return &p.CPU }},
		{"memory", func(p *agentproto.PSI) **agentproto.Pressure { return &p.Memory }},
		{"io", func(p *agentproto.PSI) **agentproto.Pressure { return &p.IO }},
	} {
		p, err := parseFile(s.fsys, "pressure/"+r.name, ParsePressure)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if st.PSI == nil {
			st.PSI = &agentproto.PSI{}
		}
		*r.dst(st.PSI) = p
	}
	pids, err := Processes(s.fsys)
	if err != nil {
		return nil, err
	}
	st.Processes = uint32(len(pids))
	// The virtio-fs shares mounted (optional: a /proc without mounts).
	if shares, err := parseFile(s.fsys, "mounts", ParseShareMounts); err == nil {
		st.Shares = shares
	}
	s.seq++
	st.Seq = s.seq
	s.prev, s.prevTime = cur, now
	return st, nil
}

func parseFile[T any](fsys fs.FS, name string, parse func(io.Reader) (T, error)) (T, error) {
	var zero T
	f, err := fsys.Open(name)
	if err != nil {
		return zero, fmt.Errorf("procstat: %w", err)
	}
	defer f.Close()
	return parse(f)
}
