package bench

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"
)

// warmupOnly is a target whose workers complete operations as fast as
// they can during the warmup and none once measuring starts.
type warmupOnly struct{ warmup int64 }

func (w *warmupOnly) Info() TargetInfo                                 { return TargetInfo{Name: "warmup-only"} }
func (w *warmupOnly) Preload(context.Context, *Keyspace, []byte) error { return nil }
func (w *warmupOnly) NewWorker(int, *Config, []byte) (Worker, error)   { return w, nil }
func (w *warmupOnly) Close() error                                     { return nil }

func (w *warmupOnly) Run(_ context.Context, _ *Generator, rec *Recorder) {
	for {
		start, ok := rec.Next()
		if !ok {
			return
		}
		if start < w.warmup {
			rec.Done(start, 1)
			runtime.Gosched()
			continue
		}
		time.Sleep(time.Millisecond)
	}
}

// TestReportMeasureExcludesWarmup: the progress of the measure phase
// counts only measured operations, even those the warmup completed
// between its last report and the start of measuring.
func TestReportMeasureExcludesWarmup(t *testing.T) {
	t.Parallel()
	cfg := Config{
		Workload: Get, Batch: 1, Depth: 1, Keys: 10, KeySize: 4, Distribution: Uniform, Concurrency: 2,
		Warmup: 50 * time.Millisecond, Duration: 50 * time.Millisecond, ProgressInterval: 7 * time.Millisecond,
	}
	var (
		mu       sync.Mutex
		progress []Progress
	)
	cfg.Progress = func(p Progress) {
		mu.Lock()
		defer mu.Unlock()
		progress = append(progress, p)
	}
	if _, err := Run(context.Background(), cfg, &warmupOnly{warmup: int64(cfg.Warmup)}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for i, p := range progress {
		if p.Phase == PhaseMeasure && p.Ops != 0 {
			t.Errorf("#%d: measure phase reports %d operations, all of them the warmup's", i, p.Ops)
		}
	}
}

// TestValidateBuildsNoKeys: checking that the keys fit their width counts
// digits; it does not build the key space. It cannot run in parallel:
// it counts allocations.
func TestValidateBuildsNoKeys(t *testing.T) {
	cfg := Config{Workload: Get, Batch: 1, Depth: 1, Keys: 1_000_000, KeySize: 16, Distribution: Uniform, Concurrency: 1, Duration: time.Second}
	if allocs := testing.AllocsPerRun(10, func() {
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
	}); allocs != 0 {
		t.Errorf("Validate allocated %v times, want 0", allocs)
	}
	tests := []struct {
		n, width int
		ok       bool
	}{
		{1, 2, true}, {10, 2, true}, {11, 2, false}, {11, 3, true}, {1000, 4, true}, {1001, 4, false}, {100000, 6, true}, {1, 1, false}, {0, 16, false},
	}
	for i, tt := range tests {
		if err := checkKeyWidth(tt.n, tt.width); (err == nil) != tt.ok {
			t.Errorf("#%d: %d keys of %d bytes: got %v, want ok %v", i, tt.n, tt.width, err, tt.ok)
		}
	}
}
