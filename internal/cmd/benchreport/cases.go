package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	redisAddr = "127.0.0.1:6379"
	redisDB   = 15 // the only database the report writes to, and flushes
	amqpURL   = "amqp://guest:guest@127.0.0.1:5672/"
	// cdcQueue is bound to the exchange during the CDC case, as a consumer's
	// queue would be, so the broker stores every event rather than
	// returning it as unroutable.
	cdcQueue  = "flux-bench-cdc"
	clients   = 64
	keySize   = 16
	valueSize = 64
	depth     = 16
)

// summary is the JSON summary `flux bench --json` prints.
type summary struct {
	Target            string           `json:"target"`
	Endpoint          string           `json:"endpoint"`
	Protocol          string           `json:"protocol"`
	Workload          string           `json:"workload"`
	Concurrency       int              `json:"concurrency"`
	Connections       int              `json:"connections"`
	Keys              int              `json:"keys"`
	KeySize           int              `json:"key_size"`
	ValueSize         int              `json:"value_size"`
	Distribution      string           `json:"distribution"`
	ReadRatio         float64          `json:"read_ratio"`
	Batch             int              `json:"batch"`
	Depth             int              `json:"depth"`
	DurationSeconds   float64          `json:"duration_seconds"`
	Requests          int64            `json:"requests"`
	Ops               int64            `json:"ops"`
	RequestsPerSecond float64          `json:"requests_per_second"`
	OpsPerSecond      float64          `json:"ops_per_second"`
	LatencyUS         latency          `json:"latency_us"`
	Errors            map[string]int64 `json:"errors"`
}

type latency struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

// caseResult is one `flux bench` run.
type caseResult struct {
	ID      string          `json:"id"`
	Label   string          `json:"label"`
	Server  string          `json:"server"` // how the server under load ran
	Args    []string        `json:"args"`   // of flux bench
	Summary summary         `json:"-"`
	Raw     json.RawMessage `json:"summary"` // as flux bench printed it
}

func (c *caseResult) failed() int64 {
	var n int64
	for _, v := range c.Summary.Errors {
		n += v
	}
	return n
}

// logMode is how a node keeps its append-only file.
type logMode string

const (
	logOff      logMode = "off" // --aof=false: no file at all
	logNo       logMode = "no"  // a file, never fsynced by the node
	logEverysec logMode = "everysec"
	logAlways   logMode = "always"
)

func (m logMode) describe() string {
	if m == logOff {
		return "no append-only file"
	}
	return "appendfsync " + string(m)
}

// nodeSpec describes a `flux node` to start.
type nodeSpec struct {
	log logMode
	cdc bool // publish every change to RabbitMQ
}

func (s nodeSpec) describe() string {
	d := "flux node, " + s.log.describe()
	if s.cdc {
		d += ", CDC to RabbitMQ"
	}
	return d
}

// runner runs the cases, one fresh server each, and keeps their results.
type runner struct {
	cfg   config
	procs *procs
	redis *redisConn
	tmp   string
	cases []*caseResult
}

// benchArgs are the flags every case shares: 64 workers, 16-byte keys,
// 64-byte values, uniform over cfg.keys keys written before the warmup.
func (r *runner) benchArgs(workload string) []string {
	return []string{"bench", "--json", "--workload", workload,
		"--concurrency", strconv.Itoa(clients), "--keys", strconv.Itoa(r.cfg.keys),
		"--key-size", strconv.Itoa(keySize), "--value-size", strconv.Itoa(valueSize),
		"--duration", r.cfg.duration.String(), "--warmup", r.cfg.warmup.String(), "--preload"}
}

// fluxArgs load endpoint with one HTTP/2 connection per worker, as each
// Redis worker has its own connection.
func fluxArgs(endpoint, protocol string) []string {
	return []string{"--endpoint", endpoint, "--protocol", protocol, "--connections", strconv.Itoa(clients)}
}

// redisArgs load database redisDB of the local Redis.
func redisArgs() []string {
	return []string{"--redis", redisAddr, "--redis-db", strconv.Itoa(redisDB)}
}

// startNode starts a standalone node with its own data directory.
func (r *runner) startNode(ctx context.Context, spec nodeSpec) (*server, error) {
	api, err := freeAddr()
	if err != nil {
		return nil, err
	}
	admin, err := freeAddr()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(r.tmp, "node-")
	if err != nil {
		return nil, err
	}
	args := []string{"node", "--listen", api, "--admin-listen", admin, "--data-dir", dir,
		"--node-id", "bench", "--log-level", "warn"}
	if spec.log == logOff {
		args = append(args, "--aof=false")
	} else {
		args = append(args, "--appendfsync", string(spec.log))
	}
	if spec.cdc {
		args = append(args, "--amqp-url", amqpURL, "--cdc-queue", cdcQueue)
	}
	s, err := r.procs.start(ctx, "node", "http://"+api, args...)
	if err != nil {
		return nil, err
	}
	s.admin = "http://" + admin
	return s, nil
}

// startDev starts `flux dev` with one node and the gateway; the server's
// endpoint is the gateway's, node the node's.
func (r *runner) startDev(ctx context.Context) (s *server, node string, err error) {
	var ports [5]int
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return nil, "", err
		}
	}
	dir, err := os.MkdirTemp(r.tmp, "dev-")
	if err != nil {
		return nil, "", err
	}
	gw := fmt.Sprintf("127.0.0.1:%d", ports[0])
	args := []string{"dev", "--nodes", "1", "--data-dir", dir, "--log-level", "warn",
		"--etcd-listen", fmt.Sprintf("http://127.0.0.1:%d", ports[1]),
		"--base-port", strconv.Itoa(ports[2]), "--admin-base-port", strconv.Itoa(ports[3]),
		"--gateway-listen", gw, "--gateway-admin-listen", fmt.Sprintf("127.0.0.1:%d", ports[4])}
	s, err = r.procs.start(ctx, "dev", "http://"+gw, args...)
	if err != nil {
		return nil, "", err
	}
	node = fmt.Sprintf("http://127.0.0.1:%d", ports[2])
	if err := r.procs.waitHealthyAt(ctx, s, node); err != nil {
		_ = r.procs.stop(s)
		return nil, "", fmt.Errorf("dev node: %w", err)
	}
	return s, node, nil
}

// fluxCase runs one case against a fresh node.
func (r *runner) fluxCase(ctx context.Context, id, label string, spec nodeSpec, workload, protocol string, extra ...string) (*caseResult, error) {
	s, err := r.startNode(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", label, err)
	}
	args := append(r.benchArgs(workload), fluxArgs(s.endpoint, protocol)...)
	c, err := r.bench(ctx, id, label, spec.describe()+", "+protocol, append(args, extra...))
	if stopErr := r.procs.stop(s); err == nil && stopErr != nil {
		err = stopErr
	}
	return c, err
}

// redisCase runs one case against Redis and empties database redisDB
// afterwards.
func (r *runner) redisCase(ctx context.Context, id, label, workload string, extra ...string) (*caseResult, error) {
	args := append(append(r.benchArgs(workload), redisArgs()...), extra...)
	c, err := r.bench(ctx, id, label, "redis-server "+redisAddr+", db "+strconv.Itoa(redisDB), args)
	if flushErr := r.redis.flushDB(ctx); err == nil && flushErr != nil {
		err = flushErr
	}
	return c, err
}

// bench runs `flux bench args` and records its summary.
func (r *runner) bench(ctx context.Context, id, label, server string, args []string) (*caseResult, error) {
	fmt.Fprintf(os.Stderr, "benchreport: %-40s ", label)
	raw, err := r.fluxBench(ctx, args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "failed")
		return nil, fmt.Errorf("%s: %w", label, err)
	}
	c := &caseResult{ID: id, Label: label, Server: server, Args: args[1:], Raw: raw}
	if err := json.Unmarshal(raw, &c.Summary); err != nil {
		return nil, fmt.Errorf("%s: flux bench --json: %w", label, err)
	}
	fmt.Fprintf(os.Stderr, "%12s ops/s  p50 %-9s p99 %s\n", formatCount(c.Summary.OpsPerSecond),
		formatMicros(c.Summary.LatencyUS.P50), formatMicros(c.Summary.LatencyUS.P99))
	r.cases = append(r.cases, c)
	return c, nil
}

// fluxBench runs the flux binary with args and returns its standard
// output, bounded by the case's duration plus room for the preload.
func (r *runner) fluxBench(ctx context.Context, args []string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.warmup+r.cfg.duration+3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.procs.flux, args...)
	cmd.Env, cmd.SysProcAttr = cleanEnv(), childAttr()
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("flux %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.Bytes(), nil
}

// cleanEnv is the environment without FLUX_ variables, which stand in for
// flags: a case runs with the flags it names and no others.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FLUX_") {
			env = append(env, kv)
		}
	}
	return env
}
