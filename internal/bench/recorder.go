package bench

import (
	"context"
	"sync/atomic"
	"time"
)

// schedule is what every worker of a run shares: when measuring starts and
// ends, and the requests left. Workers read it without locks.
type schedule struct {
	ctx          context.Context // the caller's: when it ends, the run stops and failures stop counting
	base         time.Time
	measureStart int64 // nanoseconds since base: the end of the warmup
	end          int64 // nanoseconds since base; used when budget is 0
	budget       int64 // measured requests to send in all; 0: run until end
	tickets      atomic.Int64
	stopped      atomic.Bool // set when ctx ends
}

func newSchedule(ctx context.Context, cfg *Config) *schedule {
	s := &schedule{ctx: ctx, base: time.Now(), measureStart: int64(cfg.Warmup), budget: cfg.Requests}
	s.end = s.measureStart + int64(cfg.Duration)
	return s
}

func (s *schedule) now() int64 { return int64(time.Since(s.base)) }

// over reports whether the run has ended.
func (s *schedule) over() bool {
	if s.stopped.Load() {
		return true
	}
	if s.budget > 0 {
		return s.tickets.Load() >= s.budget
	}
	return s.now() >= s.end
}

// Recorder is a worker's view of the run: it says when to send a request
// and records the outcome in the worker's own histogram and counters. Next
// and Over may be called from any goroutine; Done and Fail from one
// goroutine at a time.
type Recorder struct {
	s        *schedule
	hist     *Histogram
	errors   map[string]int64
	requests int64 // measured successful requests
	ops      int64 // measured successful key operations

	// Successful key operations, for the progress line: of requests that
	// started in the warmup, and of measured ones, so that the first
	// measured count holds no warmup operation.
	_           [64]byte // keeps workers' progress counters on separate cache lines
	warmupOps   atomic.Int64
	measuredOps atomic.Int64
	_           [48]byte
}

func newRecorder(s *schedule) *Recorder {
	return &Recorder{s: s, hist: NewHistogram(), errors: map[string]int64{}}
}

// Next reports whether the worker should send another request and, if so,
// returns the time the request starts, to pass to Done or Fail. Requests
// that start during the warmup are not counted.
func (r *Recorder) Next() (start int64, ok bool) {
	s := r.s
	if s.stopped.Load() {
		return 0, false
	}
	now := s.now()
	switch {
	case now < s.measureStart:
		return now, true
	case s.budget > 0:
		return now, s.tickets.Add(1) <= s.budget
	default:
		return now, now < s.end
	}
}

// Over reports whether the run has ended, for a worker that must decide
// whether to set up for more requests (a new stream) before calling Next.
func (r *Recorder) Over() bool { return r.s.over() }

// Done records a request that started at start and succeeded with ops key
// operations.
func (r *Recorder) Done(start int64, ops int) {
	end := r.s.now()
	if start < r.s.measureStart {
		r.warmupOps.Add(int64(ops))
		return
	}
	r.measuredOps.Add(int64(ops))
	r.hist.Record(time.Duration(end - start))
	r.requests++
	r.ops += int64(ops)
}

// Fail records a request that started at start and failed with the error
// named name. Failures after the caller's context ended are the run being
// interrupted, and are not counted.
func (r *Recorder) Fail(start int64, name string) {
	r.FailOps(start, name, 1)
}

// FailOps records n key operations that failed with the error named name
// inside a Batch call that started at start; the call counts as a
// successful request only if the caller also calls Done for the operations
// that succeeded.
func (r *Recorder) FailOps(start int64, name string, n int) {
	if start < r.s.measureStart || r.s.ctx.Err() != nil {
		return
	}
	r.errors[name] += int64(n)
}
