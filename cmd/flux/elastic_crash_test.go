package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/fluxkv/fluxkv/client"
	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/platform/discovery"
	"github.com/fluxkv/fluxkv/platform/etcdembed"
)

// waitForLog waits until c has logged a line containing msg.
func waitForLog(t *testing.T, c *child, msg string, wait time.Duration) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !strings.Contains(c.output(), msg) {
		if time.Now().After(deadline) {
			t.Fatalf("no log line %q in %v:\n%s", msg, wait, c.output())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// ringEpochs reads the current ring's epoch and the epoch of the change in
// progress (0 when none).
func ringEpochs(t *testing.T, etcd *clientv3.Client) (current, next int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cur, nx, err := discovery.ReadRings(ctx, etcd)
	if err != nil {
		t.Fatal(err)
	}
	if nx != nil {
		next = nx.Epoch
	}
	return cur.Epoch, next
}

func awaitEpoch(t *testing.T, etcd *clientv3.Client, epoch int64, wait time.Duration) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		cur, next := ringEpochs(t, etcd)
		if cur >= epoch {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the ring did not reach epoch %d in %v (current %d, next %d)", epoch, wait, cur, next)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestHandoffSurvivesCrashes kills, with SIGKILL and while writes go on,
// first the node receiving keys in the middle of its join, then one of the
// nodes sending keys to another joining node. Each time the cluster stays
// at its epoch with the change pending, and once the killed node is back
// the move completes; at the end every preloaded key and every
// acknowledged write reads back.
func TestHandoffSurvivesCrashes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts node processes")
	}
	const preload = 100_000
	etcd, err := etcdembed.Start(t.TempDir(), "http://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer etcd.Close()
	etcdc, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd.ClientURL()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer etcdc.Close()
	dirs := map[string]string{}
	for _, id := range []string{"node-1", "node-2", "node-3", "node-4", "node-5"} {
		dirs[id] = t.TempDir()
	}
	start := func(id string, extra ...string) *child {
		return startChild(t, dirs[id], append([]string{"--etcd", etcd.ClientURL(), "--node-id", id, "--lease-ttl", "2s"}, extra...)...)
	}
	members := map[string]*child{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, id := range []string{"node-1", "node-2", "node-3"} {
		wg.Go(func() {
			c := start(id)
			mu.Lock()
			members[id] = c
			mu.Unlock()
		})
	}
	wg.Wait()
	awaitEpoch(t, etcdc, 3, 10*time.Second)

	ctx := context.Background()
	c, err := client.New(ctx, client.WithEtcd(etcd.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	value := func(i int) string { return fmt.Sprintf("preloaded-%d-%s", i, strings.Repeat("x", 64)) }
	for from := 0; from < preload; from += 1000 {
		ops := make([]*kvv1.Operation, 0, 1000)
		for i := from; i < from+1000; i++ {
			ops = append(ops, &kvv1.Operation{Op: &kvv1.Operation_Put{Put: &kvv1.PutRequest{Key: fmt.Sprintf("pre/%06d", i), Value: []byte(value(i))}}})
		}
		results, err := c.Batch(ctx, ops)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range results {
			if r.GetError() != nil {
				t.Fatalf("preload: %v", r.GetError())
			}
		}
	}

	// Writers, each creating keys of its own, so a lost write shows.
	var (
		stop      = make(chan struct{})
		acked     sync.Map
		failures  atomic.Int64
		writersWG sync.WaitGroup
	)
	for g := range 4 {
		writersWG.Go(func() {
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("live/w%d/%06d", g, seq)
				ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				_, err := c.Put(ctx, &kvv1.PutRequest{Key: key, Value: []byte(key)})
				cancel()
				if err != nil {
					failures.Add(1)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				acked.Store(key, true)
			}
		})
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		writersWG.Wait()
	}()

	// 1. The receiver dies while it copies.
	joiner := start("node-4", "--join")
	waitForLog(t, joiner, "moving keys to this node", 10*time.Second)
	if err := joiner.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-joiner.exited
	time.Sleep(500 * time.Millisecond)
	if cur, next := ringEpochs(t, etcdc); cur != 3 || next != 4 {
		t.Fatalf("after killing the receiver mid-join: ring epoch %d, change to %d; want 3 with the change to 4 pending "+
			"(if the join finished before the kill, the copy was too quick for this test)", cur, next)
	}
	time.Sleep(time.Second)
	if n := failures.Load(); n != 0 {
		t.Errorf("%d writes failed while the receiver was down; its keys were still served by their owners", n)
	}
	joiner = start("node-4", "--join")
	waitForLog(t, joiner, "resuming the join", time.Second)
	awaitEpoch(t, etcdc, 4, 60*time.Second)
	if n := failures.Load(); n != 0 {
		t.Errorf("%d writes failed during the join", n)
	}

	// 2. A sender dies while another node joins: writes to its keys fail
	// (nobody else has them) until it is back, and only those.
	second := start("node-5", "--join")
	waitForLog(t, second, "moving keys to this node", 10*time.Second)
	if err := members["node-1"].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-members["node-1"].exited
	time.Sleep(2 * time.Second)
	if cur, next := ringEpochs(t, etcdc); cur != 4 || next != 5 {
		t.Fatalf("after killing a sender mid-join: ring epoch %d, change to %d; want 4 with the change to 5 pending", cur, next)
	}
	members["node-1"] = start("node-1")
	// Writers see node-1 live again once their view has it.
	time.Sleep(time.Second)
	whileDown := failures.Load()
	awaitEpoch(t, etcdc, 5, 60*time.Second)
	time.Sleep(500 * time.Millisecond)
	close(stop)
	writersWG.Wait()
	if n := failures.Load() - whileDown; n != 0 {
		t.Errorf("%d writes failed after node-1 was back", n)
	}
	t.Logf("%d writes failed while node-1 was down (its keys have no other owner then), none otherwise", whileDown)

	// Everything reads back.
	check := func(keys []string, want func(string) string) {
		for from := 0; from < len(keys); from += 1000 {
			ops := make([]*kvv1.Operation, 0, 1000)
			for _, key := range keys[from:min(from+1000, len(keys))] {
				ops = append(ops, &kvv1.Operation{Op: &kvv1.Operation_Get{Get: &kvv1.GetRequest{Key: key}}})
			}
			results, err := c.Batch(ctx, ops)
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range results {
				key := keys[from+i]
				if got := string(r.GetGet().GetValue()); got != want(key) {
					t.Errorf("%s = %q (error %v), want %q", key, got, r.GetError(), want(key))
				}
			}
		}
	}
	pre := make([]string, preload)
	for i := range pre {
		pre[i] = fmt.Sprintf("pre/%06d", i)
	}
	check(pre, func(key string) string {
		var i int
		fmt.Sscanf(key, "pre/%06d", &i)
		return value(i)
	})
	var live []string
	acked.Range(func(k, _ any) bool { live = append(live, k.(string)); return true })
	check(live, func(key string) string { return key })
	t.Logf("%d preloaded keys and %d acknowledged writes read back after both crashes", preload, len(live))
}
