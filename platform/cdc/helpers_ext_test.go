package cdc_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
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

// brokerURL is the RabbitMQ the tests use. A test is skipped when it is not
// reachable, except in CI, where that fails it.
func brokerURL(t *testing.T) string {
	t.Helper()
	u := os.Getenv("FLUX_AMQP_URL")
	if u == "" {
		u = "amqp://guest:guest@127.0.0.1:5672/"
	}
	conn, err := amqp.DialConfig(u, amqp.Config{Dial: amqp.DefaultDial(2 * time.Second)})
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("RabbitMQ at FLUX_AMQP_URL (default 127.0.0.1:5672) is required in CI: %v", err)
		}
		t.Skipf("RabbitMQ unreachable, set FLUX_AMQP_URL or start it: %v", err)
	}
	_ = conn.Close()
	return u
}

// viaHost is brokerURL with its host:port replaced.
func viaHost(t *testing.T, brokerURL, hostport string) string {
	t.Helper()
	u, err := url.Parse(brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = hostport
	return u.String()
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// names returns an exchange and a queue of the test's own, deleted when it
// ends.
func names(t *testing.T, brokerURL string) (exchange, queue string) {
	t.Helper()
	base := fmt.Sprintf("flux.cdc.test.%s.%08x", unsafeName.ReplaceAllString(t.Name(), "_"), rand.Uint32())
	exchange, queue = base, base+".q"
	t.Cleanup(func() {
		conn, err := amqp.Dial(brokerURL)
		if err != nil {
			t.Errorf("clean up: %v", err)
			return
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			t.Errorf("clean up: %v", err)
			return
		}
		if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
			t.Errorf("delete queue: %v", err)
		}
		if err := ch.ExchangeDelete(exchange, false, false); err != nil {
			t.Errorf("delete exchange: %v", err)
		}
	})
	return exchange, queue
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

// collector consumes a queue, straight from the broker, and records what
// arrives.
type collector struct {
	mu         sync.Mutex
	deliveries []amqp.Delivery
	seen       map[string]bool // message ids
	firstSeen  []int64         // revisions, in the order they first arrived
}

func consume(t *testing.T, brokerURL, queue string) *collector {
	t.Helper()
	conn, err := amqp.Dial(brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := conn.Channel()
	if err != nil {
		_ = conn.Close()
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(queue, "", true, true, false, false, nil)
	if err != nil {
		_ = conn.Close()
		t.Fatal(err)
	}
	c := &collector{seen: map[string]bool{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for d := range deliveries {
			c.add(d)
		}
	}()
	t.Cleanup(func() {
		_ = conn.Close()
		<-done
	})
	return c
}

func (c *collector) add(d amqp.Delivery) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deliveries = append(c.deliveries, d)
	if c.seen[d.MessageId] {
		return
	}
	c.seen[d.MessageId] = true
	rev, _ := d.Headers["revision"].(int64)
	c.firstSeen = append(c.firstSeen, rev)
}

// has reports whether every revision from 1 to n of node arrived.
func (c *collector) has(node string, n int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for rev := int64(1); rev <= n; rev++ {
		if !c.seen[node+":"+strconv.FormatInt(rev, 10)] {
			return false
		}
	}
	return true
}

// checkExactlyOnce fails the test unless, without duplicates, the queue
// held revisions 1 to n of node and nothing else; inOrder also wants them to
// have first arrived in revision order.
func (c *collector) checkExactlyOnce(t *testing.T, node string, n int64, inOrder bool) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if int64(len(c.seen)) != n {
		t.Errorf("got %d distinct message ids, want %d", len(c.seen), n)
	}
	for id := range c.seen {
		rev, err := strconv.ParseInt(strings.TrimPrefix(id, node+":"), 10, 64)
		if err != nil || rev < 1 || rev > n {
			t.Errorf("unexpected message id %q", id)
		}
	}
	if !inOrder {
		return
	}
	for i, rev := range c.firstSeen {
		if rev != int64(i)+1 {
			t.Fatalf("revision %d arrived %d-th: not in revision order", rev, i+1)
		}
	}
}

func (c *collector) all() []amqp.Delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.deliveries)
}
