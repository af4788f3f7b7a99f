package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// run measures everything and writes the report. Every process it starts
// is stopped before it returns, whatever happens.
func run(ctx context.Context, cfg config) (err error) {
	start := time.Now()
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	redis, err := dialRedis(ctx, redisAddr, 5*time.Second)
	if err != nil {
		return err
	}
	defer redis.Close()
	// Database 15 is the project's scratch database for benchmarks: flux
	// bench never flushes it, so earlier runs and tests leave their keys,
	// and it refuses to write into a database holding other keys.
	n, err := redis.dbsize(ctx)
	if err != nil {
		return err
	}
	logf("redis database %d is the report's scratch space: flushing it (%d keys) now, after every case and at the end", redisDB, n)
	if err := redis.flushDB(ctx); err != nil {
		return err
	}
	if err := checkRabbitMQ(ctx); err != nil {
		return err
	}
	m, err := describeMachine(ctx, redis)
	if err != nil {
		return err
	}
	if m.busy() {
		logf("warning: other work is using %.0f%% of the CPU: it will skew the numbers", 100*m.CPUBusy)
	}

	tmp, err := os.MkdirTemp("", "benchreport-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n(server logs kept in %s)", err, tmp)
			return
		}
		_ = os.RemoveAll(tmp)
	}()
	logf("building flux")
	bin, err := buildFlux(ctx, root, tmp)
	if err != nil {
		return err
	}
	p := &procs{flux: bin, dir: tmp}
	defer p.stopAll()
	defer func() {
		if flushErr := redis.flushDB(ctx); flushErr != nil && err == nil {
			err = flushErr
		}
	}()
	r := &runner{cfg: cfg, procs: p, redis: redis, tmp: tmp}

	rep := &report{cfg: cfg, machine: m}
	if rep.comparisons, err = r.runComparisons(ctx, m); err != nil {
		return err
	}
	if rep.memory, err = r.measureMemory(ctx, nodeSpec{log: redisLogMode(m)}); err != nil {
		return err
	}
	benchtime, contentionOps := "1s", int64(2_000_000)
	if cfg.quick {
		benchtime, contentionOps = "100ms", 200_000
	}
	logf("store benchmarks")
	if rep.goBench, err = runStoreBenchmarks(ctx, root, benchtime); err != nil {
		return err
	}
	for _, impl := range []string{"sharded", "rwmutex"} {
		logf("mutex profile: %s", impl)
		c, err := runContention(ctx, root, tmp, impl, contentionOps)
		if err != nil {
			return err
		}
		rep.contention = append(rep.contention, c)
	}
	rep.elapsed = time.Since(start)
	return rep.write(cfg.out, r.cases)
}

// moduleRoot returns the repository root, where the go commands run.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	root := filepath.Dir(mod)
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not in a Go module: run benchreport from the Flux-KV repository")
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "flux")); err != nil {
		return "", fmt.Errorf("%s has no cmd/flux: run benchreport from the Flux-KV repository", root)
	}
	return root, nil
}

// checkRabbitMQ fails early, and clearly, when the CDC case cannot run.
func checkRabbitMQ(ctx context.Context) error {
	d := net.Dialer{Timeout: 5 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", "127.0.0.1:5672")
	if err != nil {
		return fmt.Errorf("rabbitmq at 127.0.0.1:5672 is unreachable (%v): the CDC case publishes to it; start rabbitmq-server first", err)
	}
	return conn.Close()
}

// deleteQueue deletes the queue name from RabbitMQ if it exists, with
// what it holds.
func deleteQueue(name string) error {
	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		return fmt.Errorf("rabbitmq: %w", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("rabbitmq: %w", err)
	}
	if _, err := ch.QueueDelete(name, false, false, false); err != nil {
		return fmt.Errorf("rabbitmq: delete queue %s: %w", name, err)
	}
	return nil
}

// write writes the Markdown to out, and the charts and raw results to
// bench/ beside it.
func (rep *report) write(out string, cases []*caseResult) error {
	dir := filepath.Join(filepath.Dir(out), "bench")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	files := map[string][]byte{}
	for name, svg := range rep.charts() {
		files[filepath.Join(dir, name+".svg")] = svg
	}
	raw, err := json.MarshalIndent(struct {
		Command    string        `json:"command"`
		Machine    machine       `json:"machine"`
		Duration   string        `json:"duration_per_case"`
		Warmup     string        `json:"warmup"`
		Keys       int           `json:"keys"`
		Goals      []goalResult  `json:"goals"`
		Cases      []*caseResult `json:"cases"`
		GoBench    []goBench     `json:"go_benchmarks"`
		Contention []contention  `json:"mutex_contention"`
		Memory     memoryResult  `json:"memory"`
	}{rep.command(), rep.machine, rep.cfg.duration.String(), rep.cfg.warmup.String(), rep.cfg.keys,
		rep.goals(), cases, rep.goBench, rep.contention, rep.memory}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	files[filepath.Join(dir, "results.json")] = append(raw, '\n')
	files[out] = []byte(rep.markdown())
	for name, b := range files {
		if err := os.WriteFile(name, b, 0o644); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	}
	return nil
}

// charts draws the report's charts, by file name without .svg.
func (rep *report) charts() map[string][]byte {
	out := map[string][]byte{}
	var lat []latencyGroup
	for _, c := range rep.comparisons {
		withRedis := false
		for _, r := range c.Rows {
			withRedis = withRedis || r.Case.Summary.Target == "redis"
		}
		var bars []bar
		for i, r := range c.Rows {
			s := r.Case.Summary
			color := i
			if withRedis {
				color = 0
				if s.Target == "redis" {
					color = 1
				}
			}
			bars = append(bars, bar{Label: r.Case.Label, Value: s.OpsPerSecond, Text: formatCount(s.OpsPerSecond) + " ops/s", Color: color})
			if !c.Pipelined {
				lat = append(lat, latencyGroup{Label: r.Case.Label, P50: s.LatencyUS.P50, P99: s.LatencyUS.P99})
			}
		}
		out[c.ID] = barChart(c.Title+" (ops/s)", bars)
	}
	out["latency"] = latencyChart("Latency per case, one request in flight per worker: p50 and p99", lat)

	var store []bar
	for _, r := range rep.goBench {
		bench, impl := splitBenchName(r.Name)
		color := map[string]int{"sharded": 0, "rwmutex": 1, "syncmap": 2}[impl]
		v := ratio(1e9, r.NsPerOp)
		store = append(store, bar{Label: bench + ", " + impl, Value: v, Text: formatCount(v) + " ops/s", Color: color})
	}
	out["store"] = barChart("Store benchmarks (ops/s, from ns/op)", store)

	mem := rep.memory
	var membars []bar
	for i, r := range []struct {
		label string
		v     [2]int64
	}{
		{"Flux-KV RSS", mem.FluxRSS},
		{"Flux-KV Go heap in use", mem.FluxHeap},
		{"Redis used_memory", mem.RedisUsed},
		{"Redis used_memory_rss", mem.RedisRSS},
	} {
		if r.v == [2]int64{} {
			continue
		}
		v := perKey(r.v, mem.Keys)
		color := 0
		if i >= 2 {
			color = 1
		}
		membars = append(membars, bar{Label: r.label, Value: v, Text: fmt.Sprintf("%.0f B/key", v), Color: color})
	}
	out["memory"] = barChart(fmt.Sprintf("Memory per key, %s keys (bytes)", formatCount(float64(mem.Keys))), membars)
	return out
}
