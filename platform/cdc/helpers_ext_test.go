package cdc_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
	"github.com/fluxkv/fluxkv/platform/cdc"
)

// waitTimeout bounds every wait of these tests.
const waitTimeout = 60 * time.Second

// memSource is an in-memory log that grows as the test appends to it.
type memSource struct {
	node string

	mu     sync.Mutex
	events []cdc.Event
	grew   chan struct{} // closed and replaced by every Append
}

func newMemSource(node string) *memSource {
	return &memSource{node: node, grew: make(chan struct{})}
}

var ops = []cdcv1.Op{cdcv1.Op_OP_PUT, cdcv1.Op_OP_DELETE, cdcv1.Op_OP_EXPIRE}

// Append adds n events, ops in turn, and returns the last revision.
func (s *memSource) Append(n int) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		rev := int64(len(s.events)) + 1
		ev := &cdcv1.ChangeEvent{
			NodeId:     s.node,
			Revision:   rev,
			Op:         ops[rev%3],
			Key:        "key/" + strconv.FormatInt(rev%97, 10),
			CommitTime: timestamppb.Now(),
		}
		if ev.Op == cdcv1.Op_OP_PUT {
			ev.Value = []byte(fmt.Sprintf("value %d", rev))
		}
		data, err := proto.Marshal(ev)
		if err != nil {
			panic(err)
		}
		s.events = append(s.events, cdc.Event{Revision: rev, Op: ev.Op, Key: ev.Key, Time: ev.CommitTime.AsTime(), Data: data})
	}
	close(s.grew)
	s.grew = make(chan struct{})
	return int64(len(s.events))
}

func (s *memSource) Read(ctx context.Context, after int64, max int) ([]cdc.Event, error) {
	for {
		s.mu.Lock()
		if n := int64(len(s.events)); n > after {
			evs := slices.Clone(s.events[after:min(n, after+int64(max))])
			s.mu.Unlock()
			return evs, nil
		}
		grew := s.grew
		s.mu.Unlock()
		select {
		case <-grew:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (s *memSource) Durable() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int64(len(s.events))
}

func (s *memSource) Event(rev int64) cdc.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.events[rev-1]
}

// logBuffer collects a relay's logs; they are printed if the test fails.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type harness struct {
	relay  *cdc.Relay
	reg    *prometheus.Registry
	logs   *logBuffer
	closed bool // by the test, which checked the error
}

// close closes the relay for a test that checks the result itself.
func (h *harness) close(ctx context.Context) error {
	h.closed = true
	return h.relay.Close(ctx)
}

// newRelay creates a relay with its own registry and logs, closed when the
// test ends.
func newRelay(t *testing.T, cfg cdc.Config, src cdc.Source) *harness {
	t.Helper()
	h := &harness{reg: prometheus.NewRegistry(), logs: &logBuffer{}}
	cfg.Registerer = h.reg
	cfg.Logger = slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r, err := cdc.New(cfg, src)
	if err != nil {
		t.Fatalf("new relay: %v", err)
	}
	h.relay = r
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.Close(ctx); err != nil && !h.closed {
			t.Errorf("close relay: %v", err)
		}
		if t.Failed() {
			t.Logf("relay logs:\n%s", h.logs)
		}
	})
	return h
}

// metric is the value of the named counter or gauge.
func (h *harness) metric(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		m := mf.GetMetric()[0]
		if c := m.GetCounter(); c != nil {
			return c.GetValue()
		}
		return m.GetGauge().GetValue()
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// eventually polls cond until it holds, failing the test after waitTimeout.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
