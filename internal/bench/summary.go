package bench

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"connectrpc.com/connect"
)

// Summary is the outcome of a run; its JSON form is what `flux bench
// --json` prints and what reports are built from, so field names are a
// contract.
type Summary struct {
	Target            string           `json:"target"`      // "flux" or "redis"
	Endpoint          string           `json:"endpoint"`    // URL, host:port, or "etcd:" and the etcd endpoints
	Protocol          string           `json:"protocol"`    // grpc, connect, grpcweb or resp
	Workload          string           `json:"workload"`    // get, put, mixed, batch or pipeline
	Concurrency       int              `json:"concurrency"` // workers
	Connections       int              `json:"connections"`
	Keys              int              `json:"keys"`
	KeySize           int              `json:"key_size"`
	ValueSize         int              `json:"value_size"`
	Distribution      string           `json:"distribution"`
	ReadRatio         float64          `json:"read_ratio"` // share of gets actually asked for: 1 for get, 0 for put
	Batch             int              `json:"batch"`
	Depth             int              `json:"depth"`
	DurationSeconds   float64          `json:"duration_seconds"` // measured time
	Requests          int64            `json:"requests"`         // successful RPCs or Redis commands; pipeline operations on both targets
	Ops               int64            `json:"ops"`              // successful key operations
	RequestsPerSecond float64          `json:"requests_per_second"`
	OpsPerSecond      float64          `json:"ops_per_second"`
	LatencyUS         Latency          `json:"latency_us"` // per request: per operation for pipelines (its stream round trip for Flux-KV, its whole pipeline's for Redis)
	Errors            map[string]int64 `json:"errors"`     // failed requests (or key operations) by error kind
}

// Latency holds latency statistics in microseconds.
type Latency struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

func newSummary(cfg *Config, info TargetInfo) *Summary {
	ratio := cfg.ReadRatio
	switch cfg.Workload {
	case Get:
		ratio = 1
	case Put:
		ratio = 0
	}
	return &Summary{
		Target:       info.Name,
		Endpoint:     info.Endpoint,
		Protocol:     info.Protocol,
		Workload:     string(cfg.Workload),
		Concurrency:  cfg.Concurrency,
		Connections:  info.Connections,
		Keys:         cfg.Keys,
		KeySize:      cfg.KeySize,
		ValueSize:    cfg.ValueSize,
		Distribution: string(cfg.Distribution),
		ReadRatio:    ratio,
		Batch:        cfg.Batch,
		Depth:        cfg.Depth,
		Errors:       map[string]int64{},
	}
}

// Failed returns the number of failures counted in Errors.
func (s *Summary) Failed() int64 {
	var n int64
	for _, v := range s.Errors {
		n += v
	}
	return n
}

// WriteText writes the summary as a table for people.
func (s *Summary) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s against %s %s (%s)\n", s.Workload, s.Target, s.Endpoint, s.Protocol)
	fmt.Fprintf(&b, "  workers       %d over %d connection%s\n", s.Concurrency, s.Connections, plural(s.Connections))
	fmt.Fprintf(&b, "  keys          %d of %d bytes, %s; values of %d bytes\n", s.Keys, s.KeySize, s.Distribution, s.ValueSize)
	gets, puts := 100*s.ReadRatio, 100*(1-s.ReadRatio)
	switch Workload(s.Workload) {
	case Mixed:
		fmt.Fprintf(&b, "  mix           %.4g%% gets, %.4g%% puts\n", gets, puts)
	case Batch:
		fmt.Fprintf(&b, "  batches       %d keys per call; %.4g%% of calls get, %.4g%% put\n", s.Batch, gets, puts)
	case Pipeline:
		fmt.Fprintf(&b, "  pipelines     %d deep; %.4g%% gets, %.4g%% puts\n", s.Depth, gets, puts)
	}
	fmt.Fprintf(&b, "  duration      %.2fs\n", s.DurationSeconds)
	fmt.Fprintf(&b, "  requests      %d (%.1f/s)\n", s.Requests, s.RequestsPerSecond)
	fmt.Fprintf(&b, "  operations    %d (%.1f/s)\n", s.Ops, s.OpsPerSecond)
	l := s.LatencyUS
	fmt.Fprintf(&b, "  latency (µs)  p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  mean %.1f\n", l.P50, l.P90, l.P99, l.P999, l.Max, l.Mean)
	errs := []string{"none"}
	if len(s.Errors) > 0 {
		errs = errs[:0]
		for _, name := range slices.Sorted(maps.Keys(s.Errors)) {
			errs = append(errs, fmt.Sprintf("%s %d", name, s.Errors[name]))
		}
	}
	fmt.Fprintf(&b, "  errors        %s\n", strings.Join(errs, ", "))
	_, err := io.WriteString(w, b.String())
	return err
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// codeNames maps connect codes, by number and by their wire spelling
// ("invalid_argument", as in OperationError.code), to the names errors are
// counted under ("InvalidArgument"), so that counting allocates nothing.
var (
	codeNames     [connect.CodeUnauthenticated + 1]string
	codeNamesWire = map[string]string{}
)

func init() {
	for c := connect.CodeCanceled; c <= connect.CodeUnauthenticated; c++ {
		codeNames[c] = camel(c.String())
		codeNamesWire[c.String()] = codeNames[c]
	}
	codeNames[0] = "OK"
}

func camel(s string) string {
	var b strings.Builder
	for part := range strings.SplitSeq(s, "_") {
		if part != "" {
			b.WriteString(strings.ToUpper(part[:1]) + part[1:])
		}
	}
	return b.String()
}

// codeName names the connect code of err.
func codeName(err error) string {
	c := connect.CodeOf(err)
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return camel(c.String())
}

// wireCodeName names a code in its wire spelling.
func wireCodeName(code string) string {
	if name, ok := codeNamesWire[code]; ok {
		return name
	}
	if code == "" {
		return "Unknown"
	}
	return camel(code)
}
