// Package fio defines the workloads of the filesystem benchmark
// (bench/fs) as fio command lines and reads fio's JSON output
// (--output-format=json) into one Result per run.
//
// Data workloads (sequential and random read and write) are time-based
// runs on one file laid out once per directory; metadata workloads
// create, stat and unlink a set of empty-ish files with fio's filecreate,
// filestat and filedelete engines, which count one I/O per file in the
// read direction, so that their IOPS are files per second.
package fio

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Workload names, in report order.
const (
	SeqRead   = "seqread"
	SeqWrite  = "seqwrite"
	RandRead  = "randread"
	RandWrite = "randwrite"
	Create    = "create"
	Stat      = "stat"
	Delete    = "delete"
)

// ErrBadOutput means fio's output is not the JSON of one job that ran.
var ErrBadOutput = errors.New("fio: bad output")

// maxOutput bounds the fio output read (a guest writes it).
const maxOutput = 1 << 20

// Settings size the workloads.
type Settings struct {
	// FileMiB is the size of the data workloads' file.
	FileMiB int
	// RuntimeSec is each data workload's time-based run.
	RuntimeSec int
	// Files is how many files the metadata workloads create, stat and
	// unlink.
	Files int
}

// DefaultSettings are bench/fs's defaults: 64 MiB, 5 s, 10,000 files.
func DefaultSettings() Settings { return Settings{FileMiB: 64, RuntimeSec: 5, Files: 10000} }

// Workload is one fio job.
type Workload struct {
	Name string
	// Metadata workloads report files per second, data workloads bytes
	// per second and IOPS.
	Metadata bool
	// Subdir is the directory under the system's bench directory the job
	// runs in (metadata workloads use their own, so that the data file is
	// not among the files).
	Subdir string
	// Args are fio's options for the job, without --directory and the
	// output format.
	Args []string
}

// Workloads returns the workloads in the order they run: the data file
// is laid out by the first (sequential write), read back, then written
// and read at random; the metadata workloads create the files, stat
// them and unlink them.
func Workloads(s Settings) []Workload {
	data := func(name, rw, bs string, fsync bool) Workload {
		args := []string{"--name=" + name, "--filename=fio.dat", "--size=" + strconv.Itoa(s.FileMiB) + "M",
			"--rw=" + rw, "--bs=" + bs, "--ioengine=psync", "--direct=0", "--numjobs=1", "--iodepth=1",
			"--time_based", "--runtime=" + strconv.Itoa(s.RuntimeSec), "--invalidate=1"}
		if fsync {
			args = append(args, "--end_fsync=1")
		}
		return Workload{Name: name, Subdir: "data", Args: args}
	}
	meta := func(name, engine string) Workload {
		return Workload{Name: name, Metadata: true, Subdir: "meta", Args: []string{"--name=" + name, "--ioengine=" + engine,
			"--nrfiles=" + strconv.Itoa(s.Files), "--filesize=4k", "--bs=4k", "--openfiles=1",
			"--filename_format=f.$filenum"}}
	}
	return []Workload{
		data(SeqWrite, "write", "1M", true),
		data(SeqRead, "read", "1M", false),
		data(RandRead, "randread", "4k", false),
		data(RandWrite, "randwrite", "4k", true),
		meta(Create, "filecreate"),
		meta(Stat, "filestat"),
		meta(Delete, "filedelete"),
	}
}

// Names are the workload names in report order.
func Names() []string {
	return []string{SeqRead, SeqWrite, RandRead, RandWrite, Create, Stat, Delete}
}

// Result is what one fio run measured.
type Result struct {
	// BytesPerSec and IOPS are the job's throughput in its direction
	// (for the metadata engines, IOPS are files per second).
	BytesPerSec float64
	IOPS        float64
	// Ops are the I/Os (files) done in RuntimeMs.
	Ops       int64
	RuntimeMs int64
	// ClatP99Us and ClatMeanUs are the completion latency of one I/O (one
	// file operation), microseconds.
	ClatP99Us  float64
	ClatMeanUs float64
	Version    string
}

type jsonDir struct {
	BwBytes  float64 `json:"bw_bytes"`
	IOPS     float64 `json:"iops"`
	TotalIOs int64   `json:"total_ios"`
	Runtime  int64   `json:"runtime"`
	Clat     struct {
		Mean       float64            `json:"mean"`
		N          int64              `json:"N"`
		Percentile map[string]float64 `json:"percentile"`
	} `json:"clat_ns"`
}

type jsonOutput struct {
	Version string `json:"fio version"`
	Jobs    []struct {
		Name       string  `json:"jobname"`
		Error      int     `json:"error"`
		JobRuntime int64   `json:"job_runtime"`
		Read       jsonDir `json:"read"`
		Write      jsonDir `json:"write"`
	} `json:"jobs"`
}

// Parse reads the output of one fio job run with --output-format=json:
// text before the JSON (fio's warnings) is skipped. The job's direction
// is the one that did I/O (write when both did); text after the JSON
// is skipped too.
func Parse(out []byte) (Result, error) {
	if len(out) > maxOutput {
		return Result{}, fmt.Errorf("%w: %d bytes, at most %d", ErrBadOutput, len(out), maxOutput)
	}
	i := bytes.IndexByte(out, '{')
	if i < 0 {
		return Result{}, fmt.Errorf("%w: no JSON", ErrBadOutput)
	}
	var o jsonOutput // (fio's messages after the JSON, on stderr, are left)
	if err := json.NewDecoder(bytes.NewReader(out[i:])).Decode(&o); err != nil {
		return Result{}, fmt.Errorf("%w: %v", ErrBadOutput, err)
	}
	if len(o.Jobs) != 1 {
		return Result{}, fmt.Errorf("%w: %d jobs, want 1", ErrBadOutput, len(o.Jobs))
	}
	j := o.Jobs[0]
	if j.Error != 0 {
		return Result{}, fmt.Errorf("%w: job %.40q ended with error %d", ErrBadOutput, j.Name, j.Error)
	}
	d := j.Read
	if j.Write.TotalIOs > 0 {
		d = j.Write
	}
	if d.TotalIOs <= 0 {
		return Result{}, fmt.Errorf("%w: job %.40q did no I/O", ErrBadOutput, j.Name)
	}
	rt := d.Runtime
	if rt <= 0 {
		rt = j.JobRuntime
	}
	return Result{BytesPerSec: d.BwBytes, IOPS: d.IOPS, Ops: d.TotalIOs, RuntimeMs: rt,
		ClatP99Us: d.Clat.Percentile["99.000000"] / 1000, ClatMeanUs: d.Clat.Mean / 1000, Version: o.Version}, nil
}
