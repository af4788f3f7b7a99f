package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
	"github.com/fluxkv/fluxkv/internal/amqptest"
	"github.com/fluxkv/fluxkv/platform/cdc"
)

// runCDC runs `flux cdc args...` as run does.
func runCDC(env *environment, args ...string) int {
	for _, c := range commands() {
		if c.name == "cdc" {
			return run(env, append([]string{"cdc"}, args...))
		}
	}
	// Until main lists the command, the same steps as run.
	c := cdcCommand()
	rest, err := c.parse(args)
	if errors.Is(err, flag.ErrHelp) {
		c.printUsage(env.stdout)
		return exitOK
	}
	if err != nil {
		return usageError(env, c.name, "%v", err)
	}
	return c.run(env, rest)
}

// lockedBuffer is written by the command while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// publisher publishes to an exchange of the test's own, deleted at its end.
func publisher(t *testing.T, broker string) (*amqp.Channel, string) {
	t.Helper()
	exchange := amqptest.Exchange(t, broker)
	conn, err := amqp.Dial(broker)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := cdc.DeclareExchange(ch, exchange); err != nil {
		t.Fatal(err)
	}
	return ch, exchange
}

func publishEvent(t *testing.T, ch *amqp.Channel, exchange string, ev *cdcv1.ChangeEvent) {
	t.Helper()
	body, err := proto.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	err = ch.PublishWithContext(context.Background(), exchange, cdc.OpName(ev.Op)+"."+ev.NodeId, false, false, amqp.Publishing{
		ContentType: cdc.ContentType, Type: cdc.MessageType, Body: body,
		MessageId: fmt.Sprintf("%s:%d", ev.NodeId, ev.Revision),
	})
	if err != nil {
		t.Fatal(err)
	}
}

func testEvent(rev int64, op cdcv1.Op) *cdcv1.ChangeEvent {
	ev := &cdcv1.ChangeEvent{NodeId: "n1", Revision: rev, Op: op, Key: fmt.Sprintf("k%d", rev), CommitTime: timestamppb.Now()}
	if op == cdcv1.Op_OP_PUT {
		ev.Value = []byte("v")
	}
	return ev
}

// tail is `flux cdc tail` running until the test stops it.
type tail struct {
	stdout, stderr lockedBuffer
	cancel         context.CancelFunc
	code           chan int
}

// startTail starts `flux cdc tail args...` and waits until it consumes.
func startTail(t *testing.T, args ...string) *tail {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tl := &tail{cancel: cancel, code: make(chan int, 1)}
	env := &environment{ctx: ctx, stdin: strings.NewReader(""), stdout: &tl.stdout, stderr: &tl.stderr}
	go func() { tl.code <- runCDC(env, append([]string{"tail"}, args...)...) }()
	t.Cleanup(func() {
		if tl.cancel != nil {
			tl.stop(t)
		}
	})
	tl.waitFor(t, func() bool { return strings.Contains(tl.stderr.String(), "tailing") }, "tail to start")
	return tl
}

func (tl *tail) waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		select {
		case code := <-tl.code:
			t.Fatalf("tail exited with %d while waiting for %s; stderr:\n%s", code, what, tl.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; stderr:\n%s", what, tl.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop interrupts the tail and returns its exit code.
func (tl *tail) stop(t *testing.T) int {
	t.Helper()
	tl.cancel()
	tl.cancel = nil
	select {
	case code := <-tl.code:
		return code
	case <-time.After(30 * time.Second):
		t.Fatal("tail did not stop when interrupted")
		return -1
	}
}

// lines waits for n lines of output and parses them.
func (tl *tail) lines(t *testing.T, n int) []*cdcv1.ChangeEvent {
	t.Helper()
	tl.waitFor(t, func() bool { return strings.Count(tl.stdout.String(), "\n") >= n }, fmt.Sprintf("%d lines", n))
	var evs []*cdcv1.ChangeEvent
	for _, line := range strings.Split(strings.TrimSuffix(tl.stdout.String(), "\n"), "\n") {
		var ev cdcv1.ChangeEvent
		if err := protojson.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		evs = append(evs, &ev)
	}
	return evs
}

func checkEvents(t *testing.T, got []*cdcv1.ChangeEvent, want ...*cdcv1.ChangeEvent) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d events, want %d: %v", len(got), len(want), got)
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Errorf("#%d: got %v, want %v", i, got[i], want[i])
		}
	}
}

func TestCDCTailPrivateQueue(t *testing.T) {
	t.Parallel()
	broker := amqptest.URL(t)
	ch, exchange := publisher(t, broker)
	tl := startTail(t, "--amqp-url", broker, "--exchange", exchange, "--binding", "put.#")
	put1, del2, put3 := testEvent(1, cdcv1.Op_OP_PUT), testEvent(2, cdcv1.Op_OP_DELETE), testEvent(3, cdcv1.Op_OP_PUT)
	for _, ev := range []*cdcv1.ChangeEvent{put1, del2, put3} {
		publishEvent(t, ch, exchange, ev)
	}
	// The delete would have come before put3: the binding left it out.
	checkEvents(t, tl.lines(t, 2), put1, put3)
	if code := tl.stop(t); code != exitOK {
		t.Errorf("exit %d after interrupt, want 0; stderr:\n%s", code, tl.stderr.String())
	}
}

func TestCDCTailNamedQueue(t *testing.T) {
	t.Parallel()
	broker := amqptest.URL(t)
	ch, exchange := publisher(t, broker)
	queue := amqptest.Queue(t, broker)
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(queue, "#", exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	// Published before the tail starts: the queue keeps them.
	events := []*cdcv1.ChangeEvent{testEvent(1, cdcv1.Op_OP_PUT), testEvent(2, cdcv1.Op_OP_EXPIRE)}
	for _, ev := range events {
		publishEvent(t, ch, exchange, ev)
	}
	tl := startTail(t, "--amqp-url", broker, "--queue", queue)
	checkEvents(t, tl.lines(t, 2), events...)
	if code := tl.stop(t); code != exitOK {
		t.Errorf("exit %d after interrupt, want 0; stderr:\n%s", code, tl.stderr.String())
	}
}

func TestCDCUsage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args     []string
		wantCode int
		want     string
	}{
		{[]string{"--help"}, exitOK, "[FLUX_AMQP_URL]"},
		{[]string{}, exitError, "want: flux cdc tail"},
		{[]string{"tail", "--amqp-url", "amqp://127.0.0.1:1/", "--queue", "q", "--binding", "put.#"}, exitError, "--binding applies to the private queue"},
		{[]string{"tail", "--amqp-url", "amqp://127.0.0.1:1/"}, exitError, "127.0.0.1:1"},
		{[]string{"tail", "--amqp-url", "amqp://127.0.0.1:1/", "--amqp-tls-ca", "ca.pem"}, exitError, "need an amqps:// --amqp-url"},
	}
	if os.Getenv("FLUX_AMQP_URL") == "" {
		tests = append(tests, struct {
			args     []string
			wantCode int
			want     string
		}{[]string{"tail"}, exitError, "--amqp-url is required"})
	}
	for i, tt := range tests {
		var stdout, stderr lockedBuffer
		env := &environment{ctx: context.Background(), stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr}
		code := runCDC(env, tt.args...)
		if out := stdout.String() + stderr.String(); code != tt.wantCode || !strings.Contains(out, tt.want) {
			t.Errorf("#%d flux cdc %q: exit %d, output %q; want exit %d mentioning %q", i, tt.args, code, out, tt.wantCode, tt.want)
		}
	}
}

// TestCDCAMQPURLFromEnv cannot run in parallel: it sets the process
// environment.
func TestCDCAMQPURLFromEnv(t *testing.T) {
	t.Setenv("FLUX_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/")
	var stdout, stderr lockedBuffer
	env := &environment{ctx: context.Background(), stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr}
	if code := runCDC(env, "tail"); code != exitError || !strings.Contains(stderr.String(), "127.0.0.1:1") {
		t.Errorf("FLUX_AMQP_URL was not used: exit %d, stderr %q", code, stderr.String())
	}
}

// TestCDCTailOverAMQPS: tail reads from a broker that speaks TLS, verified
// with --amqp-tls-ca.
func TestCDCTailOverAMQPS(t *testing.T) {
	t.Parallel()
	broker := amqptest.URL(t)
	ch, exchange := publisher(t, broker)
	proxy := amqptest.NewTLSProxy(t, broker)
	tl := startTail(t, "--amqp-url", proxy.URL(), "--amqp-tls-ca", proxy.CAFile(), "--exchange", exchange)
	put1 := testEvent(1, cdcv1.Op_OP_PUT)
	publishEvent(t, ch, exchange, put1)
	checkEvents(t, tl.lines(t, 1), put1)
	if code := tl.stop(t); code != exitOK {
		t.Errorf("exit %d after interrupt, want 0; stderr:\n%s", code, tl.stderr.String())
	}
}
