package main

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"net"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestInfoInt(t *testing.T) {
	t.Parallel()
	info := map[string]string{"used_memory": "1048576", "used_memory_human": "1.00M"}
	if n, err := infoInt(info, "used_memory"); err != nil || n != 1048576 {
		t.Errorf("used_memory: got %d, %v; want 1048576", n, err)
	}
	if _, err := infoInt(info, "used_memory_human"); err == nil {
		t.Errorf("used_memory_human: got no error for a non-integer")
	}
	if _, err := infoInt(info, "missing"); err == nil {
		t.Errorf("missing field: got no error")
	}
}

// TestRedisConn runs the client against the Redis on redisAddr, reading
// only: other packages' tests write to database 15 at the same time.
// Without a Redis it skips, except in CI (CI set), where it fails.
func TestRedisConn(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c, err := dialRedis(ctx, redisAddr, 2*time.Second)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI has no Redis: %v", err)
		}
		t.Skip(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	server, err := c.info(ctx, "server")
	if err != nil || server["redis_version"] == "" {
		t.Errorf("info server: got redis_version %q, %v", server["redis_version"], err)
	}
	memory, err := c.info(ctx, "memory")
	if err != nil {
		t.Fatal(err)
	}
	if n, err := infoInt(memory, "used_memory"); err != nil || n <= 0 {
		t.Errorf("info memory: used_memory %d, %v", n, err)
	}
	if _, err := c.dbsize(ctx); err != nil {
		t.Errorf("dbsize: %v", err)
	}
	if _, ok := c.config(ctx, "no-such-parameter"); ok {
		t.Errorf("config of an unknown parameter: got ok")
	}
}

func TestDialRedisUnreachable(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = dialRedis(context.Background(), addr, time.Second)
	if err == nil || !strings.Contains(err.Error(), "start redis-server") {
		t.Errorf("got %v, want an error saying to start redis-server", err)
	}
}

const sampleGoBench = `goos: linux
goarch: amd64
pkg: github.com/fluxkv/fluxkv/platform/store
cpu: Intel(R) Xeon(R) Processor
BenchmarkGet/sharded-2         	14869610	        80.45 ns/op	       0 B/op	       0 allocs/op
BenchmarkGet/rwmutex-2         	 9316243	       128.2 ns/op	       0 B/op	       0 allocs/op
BenchmarkPut/syncmap-2         	 3155808	       380.9 ns/op	      48 B/op	       2 allocs/op
BenchmarkScan/shards=16/limit=10     	  100000	     11432 ns/op
PASS
ok  	github.com/fluxkv/fluxkv/platform/store	12.345s
`

func TestParseGoBench(t *testing.T) {
	t.Parallel()
	got, err := parseGoBench(sampleGoBench)
	if err != nil {
		t.Fatal(err)
	}
	want := []goBench{
		{Name: "Get/sharded", Procs: 2, Iterations: 14869610, NsPerOp: 80.45},
		{Name: "Get/rwmutex", Procs: 2, Iterations: 9316243, NsPerOp: 128.2},
		{Name: "Put/syncmap", Procs: 2, Iterations: 3155808, NsPerOp: 380.9, BytesPerOp: 48, AllocsPerOp: 2},
		{Name: "Scan/shards=16/limit=10", Procs: 1, Iterations: 100000, NsPerOp: 11432},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	if _, err := parseGoBench("BenchmarkX-2  100  1.5 B/op\n"); err == nil {
		t.Errorf("a line without ns/op: got no error")
	}
	if _, err := parseGoBench("BenchmarkX-2  100  fast ns/op\n"); err == nil {
		t.Errorf("a value that is not a number: got no error")
	}
}

func TestParsePprofTotal(t *testing.T) {
	t.Parallel()
	header := "File: store.test\nType: delay\nTime: 2026-11-26 03:14:16 UTC\n"
	tests := []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{in: header + "Showing nodes accounting for 1642.78us, 100% of 1642.78us total\nDropped 7 nodes\n      flat  flat%\n", want: 1642780 * time.Nanosecond},
		{in: header + "Showing nodes accounting for 5.49ms, 100% of 5.49ms total\n", want: 5490 * time.Microsecond},
		{in: header + "Showing nodes accounting for 1.20s, 80.00% of 1.50s total\n", want: 1500 * time.Millisecond},
		{in: header + "Showing nodes accounting for 2mins, 100% of 2.50mins total\n", want: 150 * time.Second},
		{in: header + "Showing nodes accounting for 0, 0% of 0 total\n", want: 0},
		{in: header + "Showing nodes accounting for 12ns, 100% of 12ns total\n", want: 12},
		{in: header + "no samples\n", err: true},
		{in: header + "Showing nodes accounting for 3, 100% of 3furlongs total\n", err: true},
	}
	for i, tt := range tests {
		got, err := parsePprofTotal(tt.in)
		if (err != nil) != tt.err {
			t.Errorf("#%d: got error %v, want error %v", i, err, tt.err)
			continue
		}
		if !tt.err && got != tt.want {
			t.Errorf("#%d: got %v, want %v", i, got, tt.want)
		}
	}
}

func TestGoal(t *testing.T) {
	t.Parallel()
	tests := []struct {
		g       goal
		r       float64
		str     string
		verdict string
	}{
		{atLeast(0.5), 0.62, "≥ 0.5x", "pass"},
		{atLeast(0.5), 0.5, "≥ 0.5x", "pass"},
		{atLeast(0.5), 0.49, "≥ 0.5x", "miss"},
		{atLeast(0.9), math.NaN(), "≥ 0.9x", "n/a"},
		{atMost(1.5), 1.2, "≤ 1.5x", "pass"},
		{atMost(1.5), 1.5, "≤ 1.5x", "pass"},
		{atMost(1.5), 1.51, "≤ 1.5x", "miss"},
		{goal{}, 3, "", ""},
	}
	for i, tt := range tests {
		if got := tt.g.String(); got != tt.str {
			t.Errorf("#%d: String got %q, want %q", i, got, tt.str)
		}
		if got := tt.g.verdict(tt.r); got != tt.verdict {
			t.Errorf("#%d: verdict(%v) got %q, want %q", i, tt.r, got, tt.verdict)
		}
	}
}

func TestFormat(t *testing.T) {
	t.Parallel()
	tests := []struct {
		got, want string
	}{
		{formatRatio(ratio(1, 3)), "0.33x"},
		{formatRatio(ratio(5, 0)), "n/a"},
		{formatRatio(2), "2.00x"},
		{formatCount(0), "0"},
		{formatCount(999), "999"},
		{formatCount(1000), "1,000"},
		{formatCount(1234567.6), "1,234,568"},
		{formatCount(-12345), "-12,345"},
		{formatMicros(4.25), "4.2 µs"},
		{formatMicros(436.2), "436 µs"},
		{formatMicros(4751.3), "4.75 ms"},
		{formatMicros(2.5e6), "2.50 s"},
		{formatMicros(math.NaN()), "n/a"},
		{formatBytes(512), "512 B"},
		{formatBytes(1536), "1.5 KiB"},
		{formatBytes(24684028 * 1024), "23.5 GiB"},
		{orUnknown(""), "unknown"},
	}
	for i, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("#%d: got %q, want %q", i, tt.got, tt.want)
		}
	}
}

func TestProcParsing(t *testing.T) {
	t.Parallel()
	if got := memTotal("MemTotal:       24684028 kB\nMemFree: 1 kB\n"); got != 24684028*1024 {
		t.Errorf("memTotal: got %d", got)
	}
	if got := memTotal("MemFree: 1 kB\n"); got != 0 {
		t.Errorf("memTotal without the field: got %d, want 0", got)
	}
	idle, total, err := parseCPUTimes("cpu  100 5 50 800 40 0 5 0 0 0\ncpu0 50 2 25 400 20 0 2 0 0 0\n")
	if err != nil || idle != 840 || total != 1000 {
		t.Errorf("parseCPUTimes: got idle %d, total %d, %v; want 840, 1000", idle, total, err)
	}
	if _, _, err := parseCPUTimes("intr 1 2 3\n"); err == nil {
		t.Errorf("parseCPUTimes without a cpu line: got no error")
	}
	if (machine{CPUBusy: 0.2}).busy() || !(machine{CPUBusy: 0.3}).busy() || (machine{CPUBusy: -1}).busy() {
		t.Errorf("busy: want true only above 25%%")
	}
	if got := promValue(strings.NewReader("# HELP go_memstats_heap_inuse_bytes x\ngo_memstats_heap_inuse_bytes_total 9\ngo_memstats_heap_inuse_bytes 1.2582912e+07\n"), "go_memstats_heap_inuse_bytes"); got != 12582912 {
		t.Errorf("promValue: got %d, want 12582912", got)
	}
}

// wellFormed fails unless b is one well-formed XML document with an svg root.
func wellFormed(t *testing.T, name string, b []byte) {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(b))
	var root string
	depth := 0
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Errorf("%s: not well-formed: %v", name, err)
			return
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if depth == 0 {
				if root != "" {
					t.Errorf("%s: more than one root element", name)
				}
				root = tok.Name.Local
			}
			depth++
		case xml.EndElement:
			depth--
		}
	}
	if root != "svg" {
		t.Errorf("%s: root element %q, want svg", name, root)
	}
}

func TestCharts(t *testing.T) {
	t.Parallel()
	bars := []bar{
		{Label: "Redis GET <64 & co>", Value: 109705.8, Color: 1},
		{Label: `Flux-KV "Get"`, Value: 15464},
		{Label: "nothing", Value: 0},
		{Label: "unmeasured", Value: math.NaN()},
	}
	svg := barChart("Throughput & more", bars)
	wellFormed(t, "barChart", svg)
	if !bytes.Contains(svg, []byte("Redis GET &lt;64 &amp; co&gt;")) {
		t.Errorf("barChart: label not escaped:\n%s", svg)
	}
	if bytes.Contains(svg, []byte("NaN")) {
		t.Errorf("barChart: NaN in the output:\n%s", svg)
	}
	wellFormed(t, "empty barChart", barChart("empty", nil))
	lat := latencyChart("Latency", []latencyGroup{{Label: "a<b", P50: 436.2, P99: 4063.2}, {Label: "b", P50: 0, P99: math.Inf(1)}})
	wellFormed(t, "latencyChart", lat)
	if n := bytes.Count(lat, []byte("<rect")); n != 1+2+4 {
		t.Errorf("latencyChart: got %d rects, want background, 2 legend keys and 4 bars", n)
	}
}

// TestReport renders a report from made-up results: every chart it links
// must be one it draws, well-formed, and the goals must be computed.
func TestReport(t *testing.T) {
	t.Parallel()
	mk := func(id, target string, ops float64) *caseResult {
		return &caseResult{ID: id, Label: id, Server: target, Summary: summary{Target: target, OpsPerSecond: ops,
			LatencyUS: latency{P50: 100, P99: 900, P999: 2000}, Errors: map[string]int64{}}}
	}
	redisGet, fluxGet := mk("redis-get", "redis", 100000), mk("flux-get", "flux", 40000)
	fluxGet.Summary.Errors["Unavailable"] = 3
	redisPipe, fluxPipe := mk("redis-pipeline", "redis", 700000), mk("flux-pipeline", "flux", 100000)
	rep := &report{
		cfg:     config{duration: 10 * time.Second, warmup: 2 * time.Second, keys: 100000, args: []string{"-out", "docs/benchmarks.md"}},
		machine: machine{CPU: "Test CPU", LogicalCores: 2, Redis: "7.0.15", Commit: "abc1234", Dirty: true, CPUBusy: 0.62},
		comparisons: []comparison{{ID: "vs-redis", Title: "Flux-KV vs Redis", Rows: []row{
			{Case: redisGet}, {Case: fluxGet, Base: redisGet, Goal: atLeast(0.5)},
		}}, {ID: "pipeline", Title: "Pipelining", Pipelined: true, Rows: []row{
			{Case: redisPipe}, {Case: fluxPipe, Base: redisPipe},
		}}},
		goBench:    []goBench{{Name: "Get/sharded", Procs: 2, NsPerOp: 80}, {Name: "Get/rwmutex", Procs: 2, NsPerOp: 160}},
		contention: []contention{{Impl: "sharded", Ops: 1000, DelayNanos: 5000, NsPerOp: 5}, {Impl: "rwmutex", Ops: 1000, DelayNanos: 15000, NsPerOp: 15}},
		memory:     memoryResult{Keys: 1000, FluxRSS: [2]int64{1000, 301000}, RedisUsed: [2]int64{5000, 105000}},
	}
	goals := rep.goals()
	if len(goals) != 2 {
		t.Fatalf("got %d goals, want 2", len(goals))
	}
	if g := goals[0]; g.Ratio == nil || *g.Ratio != 0.4 || g.Verdict != "miss" {
		t.Errorf("get goal: got %+v, want ratio 0.4, miss", g)
	}
	if g := goals[1]; g.Ratio == nil || *g.Ratio != 3 || g.Verdict != "miss" {
		t.Errorf("memory goal: got %+v, want ratio 3, miss", g)
	}
	md := rep.markdown()
	for _, want := range []string{
		"go run ./internal/cmd/benchreport -out docs/benchmarks.md",
		"| Flux-KV memory per key vs Redis | 3.00x | ≤ 1.5x | miss |",
		"| flux-get | flux | 40,000 | 100 µs | 900 µs | 2.00 ms | 0.40x | ≥ 0.5x | miss |",
		"flux-get: Unavailable 3",
		"| Get | one map behind a sync.RWMutex | 160.0 | 0 | 0 | 0.50x |",
		"| one map behind a sync.RWMutex | 1,000 | 15 µs | 15.00 ns | 3.00x |",
		"abc1234 (with uncommitted changes)",
		"other work used 62% of its CPU",
		"| CPU in use by other work at the start | 62% (1 s sample of /proc/stat) |",
		"flushes that database (and no other) before it starts, after every case and at the end",
		"The pipelining cases are left out",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	if strings.Contains(md, "NaN") {
		t.Errorf("markdown holds NaN")
	}
	charts := rep.charts()
	for name, svg := range charts {
		wellFormed(t, name, svg)
	}
	// Pipelined latencies, with many operations in flight, are not drawn
	// beside those of one request at a time.
	if lat := string(charts["latency"]); !strings.Contains(lat, ">flux-get<") || strings.Contains(lat, "pipeline") {
		t.Errorf("latency chart: want flux-get and no pipeline case:\n%s", lat)
	}
	for _, line := range strings.Split(md, "\n") {
		_, link, ok := strings.Cut(line, "](bench/")
		if !ok || !strings.HasSuffix(link, ".svg)") {
			continue
		}
		if _, ok := charts[strings.TrimSuffix(link, ".svg)")]; !ok {
			t.Errorf("markdown links bench/%s, which is not drawn", strings.TrimSuffix(link, ")"))
		}
	}
}
