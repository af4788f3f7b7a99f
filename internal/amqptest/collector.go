package amqptest

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// queueWait bounds how long Consume waits for the code under test to
// declare the queue.
const queueWait = 30 * time.Second

// pollInterval is how often Wait looks at what arrived.
const pollInterval = 20 * time.Millisecond

// Collector consumes a queue straight from the broker and records every
// delivery, duplicates included. Its checks look at the events of one node
// at a time: a queue bound to a shared exchange also gets other nodes'
// events, which they pass over.
//
// A delivery belongs to node when its node_id header is node or its message
// id starts with "<node>:"; the checks then hold it to both.
type Collector struct {
	mu         sync.Mutex
	deliveries []amqp.Delivery // in arrival order
	ids        map[string]bool // message ids seen
}

// Consume starts consuming queue, acknowledging automatically, until the
// test ends. The queue may be declared by the code under test: Consume
// waits up to 30s for it to exist before failing the test.
func Consume(t testing.TB, brokerURL, queue string) *Collector {
	t.Helper()
	conn, err := amqp.DialConfig(brokerURL, amqp.Config{Dial: amqp.DefaultDial(dialTimeout)})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := waitForQueue(conn, queue)
	if err != nil {
		_ = conn.Close()
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(queue, "", true, true, false, false, nil)
	if err != nil {
		_ = conn.Close()
		t.Fatal(err)
	}
	c := &Collector{ids: map[string]bool{}}
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

// waitForQueue returns a channel once queue exists. A passive declare of a
// missing queue closes its channel, so each attempt opens another.
func waitForQueue(conn *amqp.Connection, queue string) (*amqp.Channel, error) {
	deadline := time.Now().Add(queueWait)
	for {
		ch, err := conn.Channel()
		if err != nil {
			return nil, err
		}
		_, err = ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err == nil {
			return ch, nil
		}
		var aerr *amqp.Error
		if !errors.As(err, &aerr) || aerr.Code != amqp.NotFound {
			return nil, fmt.Errorf("queue %s: %w", queue, err)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("queue %s was not declared within %v", queue, queueWait)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *Collector) add(d amqp.Delivery) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deliveries = append(c.deliveries, d)
	c.ids[d.MessageId] = true
}

// All returns every delivery so far, in arrival order, duplicates and other
// nodes' events included.
func (c *Collector) All() []amqp.Delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.deliveries)
}

// Unique returns the first delivery of each message id of node, in arrival
// order: what a consumer that drops duplicates by message id sees.
func (c *Collector) Unique(node string) []amqp.Delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []amqp.Delivery
	seen := map[string]bool{}
	for _, d := range c.deliveries {
		if belongs(d, node) && !seen[d.MessageId] {
			seen[d.MessageId] = true
			out = append(out, d)
		}
	}
	return out
}

// Has reports whether every revision from 1 to n of node arrived.
func (c *Collector) Has(node string, n int64) bool {
	return len(c.missing(node, n, 1)) == 0
}

// missing returns up to max revisions from 1 to n of node that have not
// arrived.
func (c *Collector) missing(node string, n int64, max int) []int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []int64
	for rev := int64(1); rev <= n && len(out) < max; rev++ {
		if !c.ids[messageID(node, rev)] {
			out = append(out, rev)
		}
	}
	return out
}

// Wait polls until every revision from 1 to n of node has arrived, failing
// the test, with the first revisions missing, once timeout has passed.
func (c *Collector) Wait(t testing.TB, node string, n int64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !c.Has(node, n) {
		if time.Now().After(deadline) {
			t.Fatalf("after %v, revisions of %s still missing (first ones): %v", timeout, node, c.missing(node, n, 10))
		}
		time.Sleep(pollInterval)
	}
}

// CheckExactlyOnce fails the test unless the events of node that arrived
// are, after dropping duplicates by message id, revisions 1 to n and
// nothing else. Each must carry matching node_id and revision headers, and
// every copy of a message id the same body: a consumer that drops
// duplicates by id would otherwise drop a different change. With inOrder,
// the revisions must also have first arrived in revision order.
func (c *Collector) CheckExactlyOnce(t testing.TB, node string, n int64, inOrder bool) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	first := map[string]amqp.Delivery{}
	var order []int64 // revisions, in the order they first arrived
	bad := 0
	report := func(format string, args ...any) {
		if bad++; bad <= 10 {
			t.Errorf(format, args...)
		}
	}
	for _, d := range c.deliveries {
		if !belongs(d, node) {
			continue
		}
		rev, err := strconv.ParseInt(strings.TrimPrefix(d.MessageId, node+":"), 10, 64)
		if err != nil || !strings.HasPrefix(d.MessageId, node+":") || rev < 1 || rev > n {
			report("unexpected message id %q (node %s, revisions 1 to %d)", d.MessageId, node, n)
			continue
		}
		if h := d.Headers["node_id"]; h != node {
			report("message %s: node_id header %#v, want %q", d.MessageId, h, node)
		}
		if h := d.Headers["revision"]; h != rev {
			report("message %s: revision header %#v, want int64 %d", d.MessageId, h, rev)
		}
		if f, ok := first[d.MessageId]; ok {
			if !bytes.Equal(f.Body, d.Body) {
				report("message %s arrived twice with different bodies", d.MessageId)
			}
			continue
		}
		first[d.MessageId] = d
		order = append(order, rev)
	}
	if int64(len(first)) != n {
		report("got %d distinct revisions of %s, want %d", len(first), node, n)
	}
	if !inOrder {
		return
	}
	for i, rev := range order {
		if rev != int64(i)+1 {
			report("revision %d of %s arrived %d-th: not in revision order", rev, node, i+1)
			return
		}
	}
}

func belongs(d amqp.Delivery, node string) bool {
	return d.Headers["node_id"] == node || strings.HasPrefix(d.MessageId, node+":")
}

func messageID(node string, rev int64) string { return node + ":" + strconv.FormatInt(rev, 10) }
