// Package bench is the load generator behind `flux bench`. It drives one
// workload (gets, puts, a mix of both, Batch calls or Pipeline streams)
// from many workers against a Target: a Flux-KV node or gateway, a whole
// cluster through the Go SDK, or a Redis server, so that the two can be
// compared on the same machine with the same keys. It reports throughput,
// latency percentiles from an HDR histogram, and errors by kind.
//
// Each worker records into its own histogram and counters, merged when the
// run ends, so the hot path takes no lock; requests reuse messages built
// once per worker.
package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// Workload is the kind of requests a run sends.
type Workload string

// The workloads.
const (
	Get      Workload = "get"      // one Get (Redis GET) per request
	Put      Workload = "put"      // one Put (Redis SET) per request
	Mixed    Workload = "mixed"    // one Get or Put per request, in the read ratio
	Batch    Workload = "batch"    // one Batch call of Config.Batch gets or puts (Redis MGET or MSET) per request
	Pipeline Workload = "pipeline" // Config.Depth operations in flight per stream (Redis: per lock-step pipeline round trip)
)

// Workloads lists every workload.
var Workloads = []Workload{Get, Put, Mixed, Batch, Pipeline}

// Distribution is how keys are drawn from the key space.
type Distribution string

// The distributions.
const (
	Uniform Distribution = "uniform" // every key equally likely
	Zipfian Distribution = "zipfian" // key i with probability proportional to 1/(1+i)^s
)

// Config describes a run.
type Config struct {
	Workload     Workload
	ReadRatio    float64 // share of gets: per operation for Mixed and Pipeline, per call for Batch; Get and Put ignore it
	Batch        int     // keys per Batch call, MGET or MSET (1 to 1000)
	Depth        int     // operations in flight per Pipeline stream; commands per Redis pipeline round trip (see Pipeline)
	Keys         int     // size of the key space
	KeySize      int     // bytes per key
	ValueSize    int     // bytes per value
	Distribution Distribution
	ZipfS        float64 // exponent of the Zipfian distribution, > 1
	Concurrency  int     // workers
	Duration     time.Duration
	Requests     int64         // measured requests in all (pipeline operations for Pipeline); when set, Duration is ignored
	Warmup       time.Duration // time spent sending requests before measuring
	Preload      bool          // write every key once before the warmup, so that gets find their key

	// Progress, when set, is called with the run's state when the preload
	// starts and then about every ProgressInterval (default 500ms), from a
	// goroutine of Run, never concurrently.
	Progress         func(Progress)
	ProgressInterval time.Duration
}

// Validate reports the first setting that is out of range.
func (c *Config) Validate() error {
	switch {
	case !validWorkload(c.Workload):
		return fmt.Errorf("workload %q: use get, put, mixed, batch or pipeline", c.Workload)
	case c.ReadRatio < 0 || c.ReadRatio > 1:
		return fmt.Errorf("read ratio %g: must be between 0 and 1", c.ReadRatio)
	case c.Batch < 1 || c.Batch > 1000:
		return fmt.Errorf("batch of %d keys: must be 1 to 1000", c.Batch)
	case c.Depth < 1:
		return fmt.Errorf("depth %d: must be at least 1", c.Depth)
	case c.Keys < 1:
		return fmt.Errorf("%d keys: need at least 1", c.Keys)
	case c.ValueSize < 0:
		return fmt.Errorf("value size %d: must not be negative", c.ValueSize)
	case c.Distribution != Uniform && c.Distribution != Zipfian:
		return fmt.Errorf("distribution %q: use uniform or zipfian", c.Distribution)
	case c.Distribution == Zipfian && !(c.ZipfS > 1):
		return fmt.Errorf("zipf exponent %g: must be greater than 1", c.ZipfS)
	case c.Concurrency < 1:
		return fmt.Errorf("concurrency %d: need at least 1 worker", c.Concurrency)
	case c.Requests < 0:
		return fmt.Errorf("%d requests: must not be negative", c.Requests)
	case c.Requests == 0 && c.Duration <= 0:
		return fmt.Errorf("duration %s: must be positive", c.Duration)
	case c.Warmup < 0:
		return fmt.Errorf("warmup %s: must not be negative", c.Warmup)
	}
	return checkKeyWidth(c.Keys, c.KeySize)
}

// Writes reports whether a run of c writes keys: with the preload, or with
// puts in its workload. c must be valid.
func (c *Config) Writes() bool {
	switch c.Workload {
	case Get:
		return c.Preload
	case Put:
		return true
	}
	return c.Preload || c.ReadRatio < 1
}

func validWorkload(w Workload) bool {
	for _, v := range Workloads {
		if w == v {
			return true
		}
	}
	return false
}

// Target is a system under load.
type Target interface {
	// Info describes the target for the summary.
	Info() TargetInfo
	// Preload writes value under every key, failing on the first error.
	Preload(ctx context.Context, keys *Keyspace, value []byte) error
	// NewWorker returns the state of worker i (its requests, its
	// connection), or an error if the target cannot run cfg's workload.
	NewWorker(i int, cfg *Config, value []byte) (Worker, error)
	// Close releases the target's connections.
	Close() error
}

// TargetInfo describes a target.
type TargetInfo struct {
	Name        string // "flux" or "redis"
	Endpoint    string // a URL, host:port, or "etcd:" and the etcd endpoints
	Protocol    string // grpc, connect, grpcweb or resp
	Connections int    // connections the workers share
}

// Worker sends one worker's requests.
type Worker interface {
	// Run sends requests while rec.Next says so and reports each outcome
	// to rec. It returns when the run is over; failures never stop it.
	Run(ctx context.Context, gen *Generator, rec *Recorder)
}

// Phase is the stage a run is in.
type Phase string

// The phases of a run, in order.
const (
	PhasePreload Phase = "preload"
	PhaseWarmup  Phase = "warmup"
	PhaseMeasure Phase = "measure"
)

// Progress is the state of a run, for a progress line.
type Progress struct {
	Phase   Phase
	Elapsed time.Duration // since the phase started
	Ops     int64         // successful key operations in the phase
	Rate    float64       // successful key operations per second since the last report
}

// ErrNoMeasurement is returned when the run was interrupted before it
// started measuring.
var ErrNoMeasurement = errors.New("interrupted before measuring")

// Run runs cfg's workload against target and returns the summary of the
// measured part. Failed requests are counted in the summary, never stop the
// run. When ctx ends, the run stops and Run summarizes what it measured,
// or returns ErrNoMeasurement if it had not started measuring. It returns
// an error for an invalid cfg, a failed preload, or a workload the target
// cannot run. Run does not close target.
func Run(ctx context.Context, cfg Config, target Target) (*Summary, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = 500 * time.Millisecond
	}
	keys, err := NewKeyspace(cfg.Keys, cfg.KeySize)
	if err != nil {
		return nil, err
	}
	value := make([]byte, cfg.ValueSize)
	seeds := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	for i := range value {
		value[i] = byte(seeds.Uint32())
	}
	workers := make([]Worker, cfg.Concurrency)
	for i := range workers {
		if workers[i], err = target.NewWorker(i, &cfg, value); err != nil {
			return nil, err
		}
	}
	if cfg.Preload {
		if cfg.Progress != nil {
			cfg.Progress(Progress{Phase: PhasePreload})
		}
		if err := target.Preload(ctx, keys, value); err != nil {
			return nil, fmt.Errorf("preload: %w", err)
		}
	}

	s := newSchedule(ctx, &cfg)
	recs := make([]*Recorder, len(workers))
	var wg sync.WaitGroup
	for i, w := range workers {
		recs[i] = newRecorder(s)
		gen := NewGenerator(&cfg, keys, seeds.Uint64())
		wg.Go(func() { w.Run(ctx, gen, recs[i]) })
	}
	donec := make(chan struct{})
	var watchers sync.WaitGroup
	watchers.Go(func() {
		select {
		case <-ctx.Done():
			s.stopped.Store(true)
		case <-donec:
		}
	})
	if cfg.Progress != nil {
		watchers.Go(func() { report(s, recs, &cfg, donec) })
	}
	wg.Wait()
	elapsed := time.Duration(s.now() - s.measureStart)
	close(donec)
	watchers.Wait()
	if elapsed <= 0 {
		return nil, ErrNoMeasurement
	}

	sum := newSummary(&cfg, target.Info())
	hist := NewHistogram()
	for _, r := range recs {
		hist.Merge(r.hist)
		sum.Requests += r.requests
		sum.Ops += r.ops
		for name, n := range r.errors {
			sum.Errors[name] += n
		}
	}
	sum.DurationSeconds = elapsed.Seconds()
	sum.RequestsPerSecond = float64(sum.Requests) / elapsed.Seconds()
	sum.OpsPerSecond = float64(sum.Ops) / elapsed.Seconds()
	sum.LatencyUS = hist.Latency()
	return sum, nil
}

// report calls cfg.Progress every interval until donec is closed. The
// measure phase counts only operations of measured requests, which the
// recorders keep apart from the warmup's.
func report(s *schedule, recs []*Recorder, cfg *Config, donec <-chan struct{}) {
	tick := time.NewTicker(cfg.ProgressInterval)
	defer tick.Stop()
	var (
		last   int64 // operations at the previous report
		lastAt = s.now()
	)
	for {
		select {
		case <-donec:
			return
		case <-tick.C:
		}
		var warmup, measured int64
		for _, r := range recs {
			warmup += r.warmupOps.Load()
			measured += r.measuredOps.Load()
		}
		ops := warmup + measured
		now := s.now()
		p := Progress{Phase: PhaseWarmup, Elapsed: time.Duration(now), Ops: warmup}
		if now >= s.measureStart {
			p.Phase, p.Elapsed, p.Ops = PhaseMeasure, time.Duration(now-s.measureStart), measured
		}
		if dt := time.Duration(now - lastAt).Seconds(); dt > 0 {
			p.Rate = float64(ops-last) / dt
		}
		last, lastAt = ops, now
		cfg.Progress(p)
	}
}
