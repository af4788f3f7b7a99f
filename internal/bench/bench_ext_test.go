package bench_test

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fluxkv/fluxkv/internal/bench"
)

func TestBenchHistogramPercentiles(t *testing.T) {
	t.Parallel()
	// 1µs, 2µs, ... 100000µs, split over two histograms as two workers
	// would record them.
	a, b := bench.NewHistogram(), bench.NewHistogram()
	for i := 1; i <= 100000; i++ {
		h := a
		if i%2 == 0 {
			h = b
		}
		h.Record(time.Duration(i) * time.Microsecond)
	}
	a.Merge(b)
	if a.Count() != 100000 {
		t.Fatalf("count %d, want 100000", a.Count())
	}
	l := a.Latency()
	tests := []struct {
		name      string
		got, want float64
	}{
		{"p50", l.P50, 50000},
		{"p90", l.P90, 90000},
		{"p99", l.P99, 99000},
		{"p999", l.P999, 99900},
	}
	for i, tt := range tests {
		if math.Abs(tt.got-tt.want)/tt.want > 0.01 {
			t.Errorf("#%d %s: got %gµs, want %gµs within 1%%", i, tt.name, tt.got, tt.want)
		}
	}
	// The maximum and mean are exact.
	if l.Max != 100000 || l.Mean != 50000.5 {
		t.Errorf("max %g, mean %g: want 100000 and 50000.5", l.Max, l.Mean)
	}
}

func TestBenchHistogramTail(t *testing.T) {
	t.Parallel()
	h := bench.NewHistogram()
	for range 9900 {
		h.Record(100 * time.Microsecond)
	}
	for range 99 {
		h.Record(10 * time.Millisecond)
	}
	h.Record(2 * time.Minute) // past the histogram's range
	near := func(got, want float64) bool { return math.Abs(got-want)/want <= 0.01 }
	if q := h.Quantile(0.5); !near(float64(q), float64(100*time.Microsecond)) {
		t.Errorf("p50 %s, want 100µs", q)
	}
	if q := h.Quantile(0.99); !near(float64(q), float64(100*time.Microsecond)) {
		t.Errorf("p99 %s, want 100µs", q)
	}
	if q := h.Quantile(0.995); !near(float64(q), float64(10*time.Millisecond)) {
		t.Errorf("p99.5 %s, want 10ms", q)
	}
	if h.Max() != 2*time.Minute {
		t.Errorf("max %s, want 2m", h.Max())
	}
	// A percentile never exceeds the maximum, though the histogram's
	// buckets do.
	one := bench.NewHistogram()
	one.Record(130749900 * time.Nanosecond)
	if l := one.Latency(); l.P50 != 130749.9 || l.P999 != 130749.9 || l.Max != 130749.9 {
		t.Errorf("one latency of 130749.9µs: %+v", l)
	}
	if empty := bench.NewHistogram().Latency(); empty != (bench.Latency{}) {
		t.Errorf("empty histogram: %+v", empty)
	}
}

func TestBenchKeyspace(t *testing.T) {
	t.Parallel()
	tests := []struct {
		n, width int
		first    string
		last     string
	}{
		{1, 2, "k0", "k0"},
		{10, 2, "k0", "k9"},
		{1000, 16, "k000000000000000", "k000000000000999"},
		{100000, 6, "k00000", "k99999"},
	}
	for i, tt := range tests {
		ks, err := bench.NewKeyspace(tt.n, tt.width)
		if err != nil {
			t.Fatalf("#%d: %v", i, err)
		}
		seen := map[string]bool{}
		for k := range ks.Len() {
			key := ks.Key(k)
			if len(key) != tt.width || key[0] != 'k' || seen[key] {
				t.Fatalf("#%d: key %d is %q: want %d bytes, starting with k, unique", i, k, key, tt.width)
			}
			seen[key] = true
		}
		if ks.Key(0) != tt.first || ks.Key(tt.n-1) != tt.last {
			t.Errorf("#%d: keys %q...%q, want %q...%q", i, ks.Key(0), ks.Key(tt.n-1), tt.first, tt.last)
		}
	}
	for i, tt := range []struct{ n, width int }{{1000, 3}, {11, 2}, {1, 1}, {0, 16}} {
		if _, err := bench.NewKeyspace(tt.n, tt.width); err == nil {
			t.Errorf("#%d: %d keys of %d bytes: no error", i, tt.n, tt.width)
		}
	}
}

func TestBenchGeneratorDistributions(t *testing.T) {
	t.Parallel()
	const n, draws = 1000, 200000
	ks, err := bench.NewKeyspace(n, 8)
	if err != nil {
		t.Fatal(err)
	}
	count := func(cfg bench.Config) []int {
		counts := make([]int, n)
		g := bench.NewGenerator(&cfg, ks, 42)
		for range draws {
			i := g.Index()
			if i < 0 || i >= n {
				t.Fatalf("%s: index %d out of [0, %d)", cfg.Distribution, i, n)
			}
			counts[i]++
		}
		return counts
	}
	share := func(counts []int, from, to int) float64 {
		s := 0
		for _, c := range counts[from:to] {
			s += c
		}
		return float64(s) / draws
	}

	zipf := count(bench.Config{Workload: bench.Get, Distribution: bench.Zipfian, ZipfS: 1.1})
	if zipf[0] < 10*zipf[n-1] || zipf[0] < zipf[1] || zipf[1] < zipf[10] {
		t.Errorf("zipfian counts do not fall with the index: %d %d %d ... %d", zipf[0], zipf[1], zipf[10], zipf[n-1])
	}
	if s := share(zipf, 0, n/10); s < 0.5 {
		t.Errorf("zipfian: the lowest 10%% of keys got %.2f of the draws, want more than half", s)
	}
	uniform := count(bench.Config{Workload: bench.Get, Distribution: bench.Uniform})
	if s := share(uniform, 0, n/10); s < 0.08 || s > 0.12 {
		t.Errorf("uniform: the lowest 10%% of keys got %.3f of the draws, want about 0.1", s)
	}
}

func TestBenchGeneratorReadRatio(t *testing.T) {
	t.Parallel()
	ks, _ := bench.NewKeyspace(10, 4)
	tests := []struct {
		workload bench.Workload
		ratio    float64
		min, max int // reads out of 10000
	}{
		{bench.Get, 0, 10000, 10000},
		{bench.Put, 1, 0, 0},
		{bench.Mixed, 0.9, 8800, 9200},
		{bench.Pipeline, 0.5, 4800, 5200},
		{bench.Batch, 1, 10000, 10000},
	}
	for i, tt := range tests {
		g := bench.NewGenerator(&bench.Config{Workload: tt.workload, ReadRatio: tt.ratio, Distribution: bench.Uniform}, ks, uint64(i))
		reads := 0
		for range 10000 {
			if g.Read() {
				reads++
			}
		}
		if reads < tt.min || reads > tt.max {
			t.Errorf("#%d %s ratio %g: %d reads of 10000, want %d to %d", i, tt.workload, tt.ratio, reads, tt.min, tt.max)
		}
	}
}

func TestBenchSummaryJSONFieldNames(t *testing.T) {
	t.Parallel()
	in := bench.Summary{
		Target: "flux", Endpoint: "http://127.0.0.1:7700", Protocol: "grpc", Workload: "get", Concurrency: 64,
		Connections: 1, Keys: 100000, KeySize: 16, ValueSize: 64, Distribution: "uniform", ReadRatio: 0.9, Batch: 16,
		Depth: 16, DurationSeconds: 10.01, Requests: 123456, Ops: 123456, RequestsPerSecond: 12345.6, OpsPerSecond: 12345.6,
		LatencyUS: bench.Latency{P50: 1, P90: 2, P99: 3, P999: 4, Max: 5, Mean: 1.5},
		Errors:    map[string]int64{"Unavailable": 3},
	}
	data, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil {
		t.Fatal(err)
	}
	want := []string{"target", "endpoint", "protocol", "workload", "concurrency", "connections", "keys", "key_size",
		"value_size", "distribution", "read_ratio", "batch", "depth", "duration_seconds", "requests", "ops",
		"requests_per_second", "ops_per_second", "latency_us", "errors"}
	if got := slices.Sorted(mapKeys(fields)); !slices.Equal(got, slices.Sorted(slices.Values(want))) {
		t.Errorf("fields %q, want %q", got, want)
	}
	var latency map[string]float64
	if err := json.Unmarshal(fields["latency_us"], &latency); err != nil {
		t.Fatal(err)
	}
	if got := slices.Sorted(mapKeys(latency)); !slices.Equal(got, []string{"max", "mean", "p50", "p90", "p99", "p999"}) {
		t.Errorf("latency_us fields %q", got)
	}
	var out bench.Summary
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatal(err)
	}
	if out.Errors["Unavailable"] != 3 || out.LatencyUS != in.LatencyUS || out.OpsPerSecond != in.OpsPerSecond {
		t.Errorf("round trip: got %+v, want %+v", out, in)
	}
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// fake is a target whose workers answer at once: a request fails with
// "Unavailable" when its key's index is a multiple of 4, and otherwise
// succeeds with 3 operations.
type fake struct {
	preloaded atomic.Int64
	workers   atomic.Int64
	requests  atomic.Int64
	onRequest func(n int64) // called with the number of requests so far
}

func (f *fake) Info() bench.TargetInfo {
	return bench.TargetInfo{Name: "fake", Endpoint: "nowhere", Protocol: "none", Connections: 2}
}

func (f *fake) Preload(_ context.Context, keys *bench.Keyspace, _ []byte) error {
	f.preloaded.Add(int64(keys.Len()))
	return nil
}

func (f *fake) NewWorker(int, *bench.Config, []byte) (bench.Worker, error) {
	f.workers.Add(1)
	return f, nil
}

func (f *fake) Close() error { return nil }

func (f *fake) Run(_ context.Context, gen *bench.Generator, rec *bench.Recorder) {
	for {
		start, ok := rec.Next()
		if !ok {
			return
		}
		if n := f.requests.Add(1); f.onRequest != nil {
			f.onRequest(n)
		}
		if gen.Index()%4 == 0 {
			rec.Fail(start, "Unavailable")
			continue
		}
		rec.Done(start, 3)
	}
}

func validConfig() bench.Config {
	return bench.Config{
		Workload: bench.Batch, ReadRatio: 1, Batch: 3, Depth: 1, Keys: 1000, KeySize: 16, ValueSize: 8,
		Distribution: bench.Uniform, Concurrency: 4, Requests: 1000, Preload: true,
	}
}

func TestBenchRunCountsRequestsOpsAndErrors(t *testing.T) {
	t.Parallel()
	f := &fake{}
	var (
		mu     sync.Mutex
		phases []bench.Phase
	)
	cfg := validConfig()
	cfg.Progress = func(p bench.Progress) {
		mu.Lock()
		defer mu.Unlock()
		phases = append(phases, p.Phase)
	}
	sum, err := bench.Run(context.Background(), cfg, f)
	if err != nil {
		t.Fatal(err)
	}
	if f.preloaded.Load() != 1000 || f.workers.Load() != 4 {
		t.Errorf("preloaded %d keys with %d workers, want 1000 and 4", f.preloaded.Load(), f.workers.Load())
	}
	if failed := sum.Errors["Unavailable"]; sum.Requests+failed != 1000 || failed == 0 || len(sum.Errors) != 1 {
		t.Errorf("%d requests and errors %v: want 1000 in all, some failed", sum.Requests, sum.Errors)
	}
	if sum.Ops != 3*sum.Requests {
		t.Errorf("%d ops for %d requests, want 3 each", sum.Ops, sum.Requests)
	}
	if sum.Target != "fake" || sum.Connections != 2 || sum.Workload != "batch" || sum.Batch != 3 || sum.Keys != 1000 {
		t.Errorf("summary does not describe the run: %+v", sum)
	}
	if sum.LatencyUS.Max < sum.LatencyUS.P50 || sum.DurationSeconds <= 0 {
		t.Errorf("latency %+v over %gs", sum.LatencyUS, sum.DurationSeconds)
	}
	if len(phases) == 0 || phases[0] != bench.PhasePreload {
		t.Errorf("progress phases %v, want preload first", phases)
	}
}

func TestBenchRunForDuration(t *testing.T) {
	t.Parallel()
	cfg := validConfig()
	cfg.Requests, cfg.Duration, cfg.Warmup, cfg.Preload = 0, 50*time.Millisecond, 20*time.Millisecond, false
	f := &fake{}
	sum, err := bench.Run(context.Background(), cfg, f)
	if err != nil {
		t.Fatal(err)
	}
	if f.preloaded.Load() != 0 {
		t.Errorf("preloaded without Preload")
	}
	// Requests sent during the warmup are not counted.
	if sum.Requests == 0 || sum.Requests+sum.Errors["Unavailable"] >= f.requests.Load() || sum.DurationSeconds < 0.05 {
		t.Errorf("%d requests counted of %d sent, over %gs", sum.Requests, f.requests.Load(), sum.DurationSeconds)
	}
}

func TestBenchRunInterrupted(t *testing.T) {
	t.Parallel()
	for i, warmup := range []time.Duration{time.Hour, 0} {
		cfg := validConfig()
		cfg.Requests, cfg.Duration, cfg.Warmup = 0, time.Hour, warmup
		ctx, cancel := context.WithCancel(context.Background())
		f := &fake{onRequest: func(n int64) {
			if n == 1000 {
				cancel()
			}
		}}
		sum, err := bench.Run(ctx, cfg, f)
		cancel()
		if warmup > 0 {
			if !errors.Is(err, bench.ErrNoMeasurement) {
				t.Errorf("#%d interrupted in the warmup: got %v, want ErrNoMeasurement", i, err)
			}
			continue
		}
		if err != nil || sum.Requests == 0 {
			t.Errorf("#%d interrupted while measuring: got %+v, %v; want what was measured", i, sum, err)
		}
	}
}

func TestBenchConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		change func(*bench.Config)
		want   string // in the error; empty: valid
	}{
		{func(*bench.Config) {}, ""},
		{func(c *bench.Config) { c.Workload = "scan" }, "workload"},
		{func(c *bench.Config) { c.ReadRatio = 1.5 }, "read ratio"},
		{func(c *bench.Config) { c.Batch = 1001 }, "batch"},
		{func(c *bench.Config) { c.Depth = 0 }, "depth"},
		{func(c *bench.Config) { c.Keys = 0 }, "keys"},
		{func(c *bench.Config) { c.KeySize = 3 }, "bytes"},
		{func(c *bench.Config) { c.Distribution = "normal" }, "distribution"},
		{func(c *bench.Config) { c.Distribution, c.ZipfS = bench.Zipfian, 1 }, "zipf"},
		{func(c *bench.Config) { c.Concurrency = 0 }, "concurrency"},
		{func(c *bench.Config) { c.Requests, c.Duration = 0, 0 }, "duration"},
		{func(c *bench.Config) { c.Warmup = -time.Second }, "warmup"},
	}
	for i, tt := range tests {
		cfg := validConfig()
		tt.change(&cfg)
		err := cfg.Validate()
		if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("#%d: got %v, want an error mentioning %q", i, err, tt.want)
		}
	}
}
