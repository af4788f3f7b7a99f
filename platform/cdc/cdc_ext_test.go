package cdc_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/fluxkv/fluxkv/internal/amqptest"
	"github.com/fluxkv/fluxkv/platform/cdc"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestPublishesEveryEventInOrder(t *testing.T) {
	t.Parallel()
	broker := amqptest.URL(t)
	exchange, queue := amqptest.Exchange(t, broker), amqptest.Queue(t, broker)
	const node, total = "node-a", 10_000
	src := newMemSource(node)
	src.Append(total / 2)
	h := newRelay(t, cdc.Config{
		URL: broker, NodeID: node, Exchange: exchange, Queue: queue,
		CheckpointDir: t.TempDir(), CheckpointInterval: 50 * time.Millisecond,
	}, src)
	h.relay.Start()
	eventually(t, "connected", func() bool { return h.metric(t, "flux_cdc_connected") == 1 })
	got := amqptest.Consume(t, broker, queue)
	for range 50 {
		src.Append(total / 2 / 50)
	}

	got.Wait(t, node, total, waitTimeout)
	got.CheckExactlyOnce(t, node, total, true)
	for _, d := range got.All() {
		rev, ok := d.Headers["revision"].(int64)
		if !ok || rev < 1 || rev > total {
			t.Fatalf("message %s: revision header %#v, want an int64 from 1 to %d", d.MessageId, d.Headers["revision"], total)
		}
		ev := src.Event(rev)
		op := cdc.OpName(ev.Op)
		checks := []struct {
			what      string
			got, want any
		}{
			{"exchange", d.Exchange, exchange},
			{"routing key", d.RoutingKey, op + "." + node},
			{"content type", d.ContentType, "application/protobuf"},
			{"type", d.Type, "flux.cdc.v1.ChangeEvent"},
			{"message id", d.MessageId, node + ":" + strconv.FormatInt(rev, 10)},
			{"delivery mode", d.DeliveryMode, amqp.Persistent},
			{"timestamp", d.Timestamp.Unix(), ev.Time.Unix()},
			{"node_id header", d.Headers["node_id"], node},
			{"op header", d.Headers["op"], op},
			{"key header", d.Headers["key"], ev.Key},
			{"body", bytes.Equal(d.Body, ev.Data), true},
		}
		for _, c := range checks {
			if c.got != c.want {
				t.Fatalf("revision %d: %s %v, want %v", rev, c.what, c.got, c.want)
			}
		}
	}
	if ops := countOps(got.All()); len(ops) != 3 {
		t.Errorf("routing keys by op: %v, want put, delete and expire", ops)
	}

	eventually(t, "checkpoint at the last revision", func() bool { return h.relay.Checkpoint() == total })
	eventually(t, "no lag", func() bool { return h.metric(t, "flux_cdc_lag_revisions") == 0 })
	for name, want := range map[string]float64{"flux_cdc_nacked_total": 0, "flux_cdc_returned_total": 0, "flux_cdc_checkpoint_revision": total} {
		if got := h.metric(t, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	for _, name := range []string{"flux_cdc_published_total", "flux_cdc_confirmed_total"} {
		if got := h.metric(t, name); got < total {
			t.Errorf("%s = %v, want at least %d", name, got, total)
		}
	}
}

func countOps(ds []amqp.Delivery) map[string]int {
	ops := map[string]int{}
	for _, d := range ds {
		op, _, _ := strings.Cut(d.RoutingKey, ".")
		ops[op]++
	}
	return ops
}

func TestRestartResumesFromCheckpoint(t *testing.T) {
	t.Parallel()
	broker := amqptest.URL(t)
	exchange, queue := amqptest.Exchange(t, broker), amqptest.Queue(t, broker)
	const node = "node-b"
	dir := t.TempDir()
	src := newMemSource(node)
	src.Append(10_000)
	var (
		mu          sync.Mutex
		checkpoints []int64
	)
	cfg := cdc.Config{
		URL: broker, NodeID: node, Exchange: exchange, Queue: queue, Window: 64,
		CheckpointDir: dir, CheckpointInterval: 20 * time.Millisecond,
		OnCheckpoint: func(rev int64) {
			mu.Lock()
			defer mu.Unlock()
			checkpoints = append(checkpoints, rev)
		},
	}
	first := newRelay(t, cfg, src)
	first.relay.Start()
	eventually(t, "a first checkpoint", func() bool { return first.relay.Checkpoint() >= 1000 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := first.close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
	stoppedAt := first.relay.Checkpoint()
	mu.Lock()
	if !slices.IsSorted(checkpoints) || checkpoints[len(checkpoints)-1] != stoppedAt {
		t.Errorf("OnCheckpoint saw %v, want increasing revisions ending at %d", checkpoints, stoppedAt)
	}
	mu.Unlock()

	// Everything up to the checkpoint was confirmed, so it is in the queue.
	got := amqptest.Consume(t, broker, queue)
	got.Wait(t, node, stoppedAt, waitTimeout)

	cfg.OnCheckpoint = nil
	second := newRelay(t, cfg, src)
	if cp := second.relay.Checkpoint(); cp != stoppedAt {
		t.Fatalf("restarted relay at checkpoint %d, want %d", cp, stoppedAt)
	}
	second.relay.Start()
	last := src.Append(2000)
	got.Wait(t, node, last, waitTimeout)
	got.CheckExactlyOnce(t, node, last, true)
	eventually(t, "checkpoint at the last revision", func() bool { return second.relay.Checkpoint() == last })
}

func TestUnroutableEventsAreCounted(t *testing.T) {
	t.Parallel()
	broker := amqptest.URL(t)
	exchange := amqptest.Exchange(t, broker)
	src := newMemSource("node-c")
	const n = 10
	src.Append(n)
	h := newRelay(t, cdc.Config{
		URL: broker, NodeID: "node-c", Exchange: exchange,
		CheckpointDir: t.TempDir(), CheckpointInterval: 20 * time.Millisecond,
	}, src)
	h.relay.Start()
	eventually(t, "every event returned", func() bool { return h.metric(t, "flux_cdc_returned_total") == n })
	// A returned event is confirmed too: with no queue bound it has nowhere
	// to go, and the relay must not stall on it.
	eventually(t, "checkpoint at the last revision", func() bool { return h.relay.Checkpoint() == n })
	if logs := h.logs.String(); !strings.Contains(logs, "returned an event") || !strings.Contains(logs, "returned_total=1") {
		t.Errorf("returns not logged:\n%s", logs)
	}
}

func TestLagBeyondBoundLogsError(t *testing.T) {
	t.Parallel()
	// A port nothing listens on: the broker is down for the whole test.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "amqp://guest:guest@" + ln.Addr().String() + "/"
	_ = ln.Close()

	src := newMemSource("node-d")
	src.Append(100)
	h := newRelay(t, cdc.Config{
		URL: down, NodeID: "node-d", CheckpointDir: t.TempDir(), MaxLag: 10,
		ReconnectMin: 10 * time.Millisecond, ReconnectMax: 50 * time.Millisecond,
	}, src)
	h.relay.Start()
	eventually(t, "a lag error", func() bool {
		return strings.Contains(h.logs.String(), `level=ERROR msg="cdc: relay is behind the log`)
	})
	if !strings.Contains(h.logs.String(), "cannot connect to the broker") {
		t.Errorf("connection failure not logged:\n%s", h.logs)
	}
	if got := h.metric(t, "flux_cdc_lag_revisions"); got != 100 {
		t.Errorf("lag %v revisions, want 100", got)
	}
	if got := h.metric(t, "flux_cdc_connected"); got != 0 {
		t.Errorf("connected = %v, want 0", got)
	}
	// Nothing is outstanding, so Close does not wait for the broker.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.close(ctx); err != nil {
		t.Errorf("close: %v", err)
	}
	if h.relay.Checkpoint() != 0 {
		t.Errorf("checkpoint %d with nothing confirmed", h.relay.Checkpoint())
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	good := cdc.Config{URL: "amqp://guest:guest@127.0.0.1:5672/", NodeID: "n1", CheckpointDir: dir}
	tests := []struct {
		change func(*cdc.Config)
		want   string
	}{
		{func(c *cdc.Config) { c.URL = "" }, "URL is required"},
		{func(c *cdc.Config) { c.URL = "http://secret@host/" }, "not a valid amqp"},
		{func(c *cdc.Config) { c.NodeID = "" }, "NodeID is required"},
		{func(c *cdc.Config) { c.CheckpointDir = "" }, "CheckpointDir is required"},
		{func(c *cdc.Config) { c.Window = -1 }, "Window -1"},
		{func(c *cdc.Config) { c.MaxLag = -1 }, "must not be negative"},
		{func(c *cdc.Config) { c.ReconnectMin, c.ReconnectMax = time.Second, time.Millisecond }, "ReconnectMin"},
	}
	for i, tt := range tests {
		cfg := good
		tt.change(&cfg)
		_, err := cdc.New(cfg, newMemSource("n1"))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("#%d: got %v, want an error containing %q", i, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("#%d: error %q shows the URL's credentials", i, err)
		}
	}
	if _, err := cdc.New(good, nil); err == nil {
		t.Error("New accepted a nil Source")
	}
}

func TestCheckpointFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, cdc.CheckpointFile)
	cfg := cdc.Config{URL: "amqp://guest:guest@127.0.0.1:5672/", NodeID: "n1", CheckpointDir: dir}
	tests := []struct {
		content string // "" for no file
		node    string
		want    int64
		wantErr string
	}{
		{content: "", node: "n1", want: 0},
		{content: `{"node_id":"n1","revision":42}`, node: "n1", want: 42},
		{content: `{"node_id":"n1","revision":42}`, node: "n2", wantErr: `belongs to node "n1"`},
		{content: `{"node_id":"n1","rev`, node: "n1", wantErr: "damaged"},
	}
	for i, tt := range tests {
		_ = os.Remove(file)
		if tt.content != "" {
			if err := os.WriteFile(file, []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		c := cfg
		c.NodeID = tt.node
		r, err := cdc.New(c, newMemSource(tt.node))
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("#%d: got %v, want an error containing %q", i, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("#%d: %v", i, err)
		}
		if got := r.Checkpoint(); got != tt.want {
			t.Errorf("#%d: checkpoint %d, want %d", i, got, tt.want)
		}
		if err := r.Close(context.Background()); err != nil {
			t.Errorf("#%d: close: %v", i, err)
		}
	}
}

func TestCloseWithoutStart(t *testing.T) {
	t.Parallel()
	r, err := cdc.New(cdc.Config{URL: "amqp://127.0.0.1:5672/", NodeID: "n1", CheckpointDir: t.TempDir()}, newMemSource("n1"))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := r.Close(context.Background()); err != nil {
			t.Errorf("close: %v", err)
		}
	}
	r.Start() // after Close: does nothing
	select {
	case <-r.Done():
	default:
		t.Error("Done not closed after Close")
	}
}

func TestNackedEventsArePublishedAgain(t *testing.T) {
	t.Parallel()
	broker := amqptest.URL(t)
	exchange, queue := amqptest.Exchange(t, broker), amqptest.Queue(t, broker)
	// A queue that refuses what it has no room for, so the broker nacks.
	conn, err := amqp.Dial(broker)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := conn.Channel()
	if err == nil {
		err = cdc.DeclareExchange(ch, exchange)
	}
	if err == nil {
		_, err = ch.QueueDeclare(queue, true, false, false, false, amqp.Table{"x-max-length": int64(5), "x-overflow": "reject-publish"})
	}
	if err == nil {
		err = ch.QueueBind(queue, "#", exchange, false, nil)
	}
	_ = conn.Close()
	if err != nil {
		t.Fatal(err)
	}

	const node, n = "node-f", 50
	src := newMemSource(node)
	src.Append(n)
	h := newRelay(t, cdc.Config{
		URL: broker, NodeID: node, Exchange: exchange, CheckpointDir: t.TempDir(),
		CheckpointInterval: 20 * time.Millisecond, ReconnectMin: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond,
	}, src)
	h.relay.Start()
	eventually(t, "a nack", func() bool { return h.metric(t, "flux_cdc_nacked_total") > 0 })
	if cp := h.relay.Checkpoint(); cp >= n {
		t.Fatalf("checkpoint %d passed refused events", cp)
	}
	got := amqptest.Consume(t, broker, queue) // makes room
	got.Wait(t, node, n, waitTimeout)
	got.CheckExactlyOnce(t, node, n, false)
	eventually(t, "checkpoint at the last revision", func() bool { return h.relay.Checkpoint() == n })
	if !strings.Contains(h.logs.String(), "broker refused an event") {
		t.Errorf("nack not logged:\n%s", h.logs)
	}
}

// TestTLSNeedsAMQPS: a TLS configuration with an amqp:// URL is refused,
// since the relay would speak cleartext, password included.
func TestTLSNeedsAMQPS(t *testing.T) {
	t.Parallel()
	_, err := cdc.New(cdc.Config{URL: "amqp://guest:secret@127.0.0.1:5672/", TLS: &tls.Config{MinVersion: tls.VersionTLS12}, NodeID: "n1", CheckpointDir: t.TempDir()}, newMemSource("n1"))
	if err == nil || !strings.Contains(err.Error(), "use amqps://") || strings.Contains(err.Error(), "secret") {
		t.Errorf("TLS with an amqp:// URL: %v", err)
	}
}
