package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

const storePkg = "./platform/store/"

// goBench is one line of `go test -bench` output.
type goBench struct {
	Name        string  `json:"name"` // without the Benchmark prefix and -GOMAXPROCS suffix
	Procs       int     `json:"procs"`
	Iterations  int64   `json:"iterations"`
	NsPerOp     float64 `json:"ns_per_op"`
	BytesPerOp  float64 `json:"bytes_per_op"`
	AllocsPerOp float64 `json:"allocs_per_op"`
}

// contention is the mutex profile of one store implementation under the
// same fixed number of Puts.
type contention struct {
	Impl       string  `json:"impl"`
	Ops        int64   `json:"ops"`
	DelayNanos int64   `json:"delay_ns"` // total time goroutines waited for locks
	NsPerOp    float64 `json:"delay_ns_per_op"`
}

var benchLine = regexp.MustCompile(`^Benchmark(\S+?)(?:-(\d+))?\s+(\d+)\s+(.*)$`)

// parseGoBench returns the benchmark results in go test -bench output; other
// lines (goos, PASS, ok) are skipped.
func parseGoBench(out string) ([]goBench, error) {
	var results []goBench
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(strings.TrimSpace(sc.Text()))
		if m == nil {
			continue
		}
		b := goBench{Name: m[1], Procs: 1}
		if m[2] != "" {
			b.Procs, _ = strconv.Atoi(m[2])
		}
		b.Iterations, _ = strconv.ParseInt(m[3], 10, 64)
		fields := strings.Fields(m[4])
		seen := false
		for i := 0; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				return nil, fmt.Errorf("benchmark %s: value %q: %w", b.Name, fields[i], err)
			}
			switch fields[i+1] {
			case "ns/op":
				b.NsPerOp, seen = v, true
			case "B/op":
				b.BytesPerOp = v
			case "allocs/op":
				b.AllocsPerOp = v
			}
		}
		if !seen {
			return nil, fmt.Errorf("benchmark %s: no ns/op in %q", b.Name, m[4])
		}
		results = append(results, b)
	}
	return results, sc.Err()
}

var pprofTotal = regexp.MustCompile(`of (\S+) total`)

// parsePprofTotal returns the total of a `go tool pprof -top` listing of a
// delay profile: the "Showing nodes accounting for X, P% of TOTAL total"
// line. A profile with no contention says "of 0 total".
func parsePprofTotal(out string) (time.Duration, error) {
	m := pprofTotal.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no total in pprof output %q", firstLines(out, 8))
	}
	return parsePprofDuration(m[1])
}

// parsePprofDuration parses pprof's durations: 0, 12ns, 3.40us, 1.20ms,
// 2.50s, 1.50mins, 2hrs.
func parsePprofDuration(s string) (time.Duration, error) {
	if s == "0" {
		return 0, nil
	}
	for _, u := range []struct {
		suffix string
		unit   time.Duration
	}{ // "mins" ends in "ns": longer suffixes first.
		{"mins", time.Minute}, {"min", time.Minute}, {"hrs", time.Hour}, {"hr", time.Hour},
		{"ns", time.Nanosecond}, {"us", time.Microsecond}, {"µs", time.Microsecond}, {"ms", time.Millisecond}, {"s", time.Second}} {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return 0, fmt.Errorf("pprof duration %q: %w", s, err)
			}
			return time.Duration(f * float64(u.unit)), nil
		}
	}
	return 0, fmt.Errorf("pprof duration %q: unknown unit", s)
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}

// runStoreBenchmarks runs the store's Get, Put and Mixed benchmarks, which
// compare the sharded map with a single-lock map and sync.Map.
func runStoreBenchmarks(ctx context.Context, root, benchtime string) ([]goBench, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "test", "-run", "^$", "-bench", "^Benchmark(Get|Put|Mixed)$",
		"-benchmem", "-benchtime", benchtime, storePkg)
	cmd.Dir, cmd.Stderr = root, os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go test -bench %s: %w\n%s", storePkg, err, out)
	}
	results, err := parseGoBench(string(out))
	if err != nil {
		return nil, err
	}
	if len(results) == 0 {
		return nil, fmt.Errorf("go test -bench %s printed no results:\n%s", storePkg, out)
	}
	return results, nil
}

// runContention profiles lock contention of one implementation's
// BenchmarkPut over exactly ops iterations, so the totals compare.
func runContention(ctx context.Context, root, dir, impl string, ops int64) (contention, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	bin := filepath.Join(dir, "store.test")
	prof := filepath.Join(dir, impl+".mutex.pprof")
	cmd := exec.CommandContext(ctx, "go", "test", "-run", "^$", "-bench", "^BenchmarkPut$/^"+impl+"$",
		"-benchtime", fmt.Sprintf("%dx", ops), "-mutexprofile", prof, "-o", bin, storePkg)
	cmd.Dir, cmd.Stderr = root, os.Stderr
	if out, err := cmd.Output(); err != nil {
		return contention{}, fmt.Errorf("go test -mutexprofile (%s): %w\n%s", impl, err, out)
	}
	out, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", bin, prof).CombinedOutput()
	if err != nil {
		return contention{}, fmt.Errorf("go tool pprof -top %s: %w\n%s", prof, err, out)
	}
	total, err := parsePprofTotal(string(out))
	if err != nil {
		return contention{}, fmt.Errorf("%s: %w", impl, err)
	}
	return contention{Impl: impl, Ops: ops, DelayNanos: total.Nanoseconds(), NsPerOp: float64(total.Nanoseconds()) / float64(ops)}, nil
}
