// Command benchreport measures Flux-KV against Redis and against itself on
// this machine and writes docs/benchmarks.md, its charts (docs/bench/*.svg)
// and the raw results (docs/bench/results.json). It builds the flux binary
// once, starts a fresh server on loopback for every case, drives it with
// `flux bench --json` and stops it with SIGTERM; it also runs the store's
// Go benchmarks and mutex profiles, and measures memory per key.
//
// It needs Redis at 127.0.0.1:6379 (it writes only to database 15, which it
// flushes before it starts, after each case and at the end) and RabbitMQ at
// amqp://guest:guest@127.0.0.1:5672/ for the CDC case. Run it from the
// repository root:
//
//	go run ./internal/cmd/benchreport -out docs/benchmarks.md
//
// With the defaults it takes about four minutes on two cores; -quick
// checks that everything works in under a minute, with numbers that mean
// little.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// config is the command line.
type config struct {
	out      string        // Markdown file; the charts and JSON go to bench/ beside it
	duration time.Duration // measured time per case
	warmup   time.Duration // unmeasured load before each case
	quick    bool          // tiny durations and key counts, to check the program
	keys     int           // key space of the throughput cases
	memKeys  int           // keys loaded to measure memory per key
	args     []string      // the command line, for the generated-by line
}

func main() {
	var cfg config
	flag.StringVar(&cfg.out, "out", "docs/benchmarks.md", "Markdown `file` to write; charts and raw results go to bench/ beside it")
	flag.DurationVar(&cfg.duration, "duration", 10*time.Second, "measured `time` per case")
	flag.DurationVar(&cfg.warmup, "warmup", 2*time.Second, "unmeasured load before each case")
	flag.BoolVar(&cfg.quick, "quick", false, "check the whole program in under a minute: 1s cases, 10k keys; the numbers mean little")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "benchreport: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	cfg.keys, cfg.memKeys = 100_000, 1_000_000
	if cfg.quick {
		cfg.duration, cfg.warmup = time.Second, 200*time.Millisecond
		cfg.keys, cfg.memKeys = 10_000, 10_000
	}
	if cfg.duration <= 0 || cfg.warmup < 0 {
		fmt.Fprintln(os.Stderr, "benchreport: -duration must be positive and -warmup not negative")
		os.Exit(2)
	}
	cfg.args = os.Args[1:]

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	start := time.Now()
	err := run(ctx, cfg)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchreport: %v\n", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "benchreport: wrote %s in %s\n", cfg.out, time.Since(start).Round(time.Second))
}

// logf reports progress on standard error.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "benchreport: "+format+"\n", args...)
}
