package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// memoryResult is the memory a node and Redis take for the same keys.
type memoryResult struct {
	Keys       int      `json:"keys"`
	FluxServer string   `json:"flux_server"`
	FluxRSS    [2]int64 `json:"flux_rss_bytes"`        // VmRSS before and after loading
	FluxHeap   [2]int64 `json:"flux_heap_inuse_bytes"` // go_memstats_heap_inuse_bytes before and after; 0 if not exported
	RedisUsed  [2]int64 `json:"redis_used_memory_bytes"`
	RedisRSS   [2]int64 `json:"redis_used_memory_rss_bytes"`
}

func perKey(v [2]int64, keys int) float64 {
	if keys <= 0 {
		return 0
	}
	return float64(v[1]-v[0]) / float64(keys)
}

func (m memoryResult) fluxPerKey() float64  { return perKey(m.FluxRSS, m.Keys) }
func (m memoryResult) redisPerKey() float64 { return perKey(m.RedisUsed, m.Keys) }

// settle is how long memory is left to settle after loading, before it is
// read.
const settle = 2 * time.Second

// measureMemory loads cfg.memKeys keys into a fresh in-memory node and into
// Redis database redisDB, reading their memory before and after.
func (r *runner) measureMemory(ctx context.Context, spec nodeSpec) (memoryResult, error) {
	m := memoryResult{Keys: r.cfg.memKeys, FluxServer: spec.describe()}
	// One measured request after the preload: the preload is the load.
	load := []string{"bench", "--json", "--workload", "put", "--preload", "--keys", strconv.Itoa(m.Keys),
		"--key-size", strconv.Itoa(keySize), "--value-size", strconv.Itoa(valueSize),
		"--concurrency", "4", "--requests", "1", "--warmup", "0s"}

	logf("memory: loading %s keys into a node (%s)", formatCount(float64(m.Keys)), spec.log.describe())
	s, err := r.startNode(ctx, spec)
	if err != nil {
		return m, fmt.Errorf("memory: %w", err)
	}
	// On an error below, run's stopAll stops the node.
	pid := s.cmd.Process.Pid
	sleep(ctx, settle)
	if m.FluxRSS[0], err = vmRSS(pid); err != nil {
		return m, err
	}
	m.FluxHeap[0] = heapInuse(ctx, s.admin)
	if _, err := r.fluxBench(ctx, append(load, "--endpoint", s.endpoint, "--connections", "4")); err != nil {
		return m, fmt.Errorf("memory: load flux: %w", err)
	}
	sleep(ctx, settle)
	if m.FluxRSS[1], err = vmRSS(pid); err != nil {
		return m, err
	}
	m.FluxHeap[1] = heapInuse(ctx, s.admin)
	if err := r.procs.stop(s); err != nil {
		return m, err
	}

	logf("memory: loading %s keys into Redis db %d", formatCount(float64(m.Keys)), redisDB)
	before, err := r.redis.info(ctx, "memory")
	if err != nil {
		return m, err
	}
	_, loadErr := r.fluxBench(ctx, append(load, redisArgs()...))
	after, err := r.redis.info(ctx, "memory")
	if flushErr := r.redis.flushDB(ctx); flushErr != nil && loadErr == nil {
		loadErr = flushErr
	}
	if loadErr != nil {
		return m, fmt.Errorf("memory: load redis: %w", loadErr)
	}
	if err != nil {
		return m, err
	}
	for i, info := range []map[string]string{before, after} {
		if m.RedisUsed[i], err = infoInt(info, "used_memory"); err != nil {
			return m, err
		}
		if m.RedisRSS[i], err = infoInt(info, "used_memory_rss"); err != nil {
			return m, err
		}
	}
	return m, nil
}

// heapInuse reads go_memstats_heap_inuse_bytes from a node's /metrics, or
// returns 0: it only adds to the RSS, which is what the report compares.
func heapInuse(ctx context.Context, admin string) int64 {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, admin+"/metrics", nil)
	if err != nil {
		return 0
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	return promValue(resp.Body, "go_memstats_heap_inuse_bytes")
}

// promValue returns the value of an unlabelled metric in Prometheus text
// format, or 0.
func promValue(r io.Reader, name string) int64 {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return 0
			}
			return int64(f)
		}
	}
	return 0
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
