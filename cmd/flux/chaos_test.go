package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/fluxkv/fluxkv/client"
	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/platform/etcdembed"
	"github.com/fluxkv/fluxkv/platform/ring"
)

// TestChaos runs three node processes on an embedded etcd, writes 10k keys
// through the SDK, kills one node with SIGKILL and restarts it. While it is
// down its keys fail fast and the others keep working; after the restart
// every acknowledged key reads back, recovered from the node's log; no
// request ever runs into its deadline.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("starts node processes")
	}
	const (
		keys     = 10_000
		leaseTTL = 2 * time.Second
	)
	etcd, err := etcdembed.Start(t.TempDir(), "http://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer etcd.Close()
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	startMember := func(i int) *child {
		return startChild(t, dirs[i], "--etcd", etcd.ClientURL(), "--node-id", fmt.Sprintf("node-%d", i+1),
			"--lease-ttl", leaseTTL.String())
	}
	nodes := []*child{startMember(0), startMember(1), startMember(2)}

	ctx := context.Background()
	c, err := client.New(ctx, client.WithEtcd(etcd.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r, _ := ring.New([]string{"node-1", "node-2", "node-3"})

	var deadlines atomic.Int64 // requests that ran into their deadline
	call := func(fn func(context.Context) error) error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		err := fn(ctx)
		if connect.CodeOf(err) == connect.CodeDeadlineExceeded || errors.Is(err, context.DeadlineExceeded) {
			deadlines.Add(1)
		}
		return err
	}
	waitLive := func(id string) {
		key := ""
		for i := 0; key == ""; i++ {
			if k := fmt.Sprintf("probe/%d", i); r.Owner(k) == id {
				key = k
			}
		}
		deadline := time.Now().Add(10 * time.Second)
		for call(func(ctx context.Context) error { _, err := c.Put(ctx, &kvv1.PutRequest{Key: key}); return err }) != nil {
			if time.Now().After(deadline) {
				t.Fatalf("%s not live within 10s", id)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for _, id := range r.Members() {
		waitLive(id)
	}

	// 10k keys through the SDK, 16 writers.
	values := make([]string, keys)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := range 16 {
		wg.Go(func() {
			for i := w; i < keys; i += 16 {
				values[i] = fmt.Sprintf("v%d", i)
				if call(func(ctx context.Context) error {
					_, err := c.Put(ctx, &kvv1.PutRequest{Key: fmt.Sprintf("key/%05d", i), Value: []byte(values[i])})
					return err
				}) != nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d writes failed with every node up", failed.Load(), keys)
	}

	// Kill node-2 without warning.
	if err := nodes[1].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-nodes[1].exited
	killedAt := time.Now()

	// Within the lease TTL + 1s, and from then on, node-2's keys fail fast
	// with Unavailable; the other nodes' keys keep working.
	var ok, other, down, fast int
	for time.Since(killedAt) < leaseTTL+2*time.Second {
		for i := 0; i < keys; i += 97 {
			key := fmt.Sprintf("key/%05d", i)
			start := time.Now()
			err := call(func(ctx context.Context) error { _, err := c.Get(ctx, key); return err })
			if r.Owner(key) != "node-2" {
				other++
				if err == nil {
					ok++
				}
				continue
			}
			if time.Since(killedAt) > leaseTTL+time.Second {
				down++
				if connect.CodeOf(err) == connect.CodeUnavailable && time.Since(start) < 500*time.Millisecond {
					fast++
				}
			}
		}
	}
	if float64(ok) < 0.999*float64(other) {
		t.Errorf("only %d of %d requests for live nodes' keys succeeded while node-2 was down", ok, other)
	}
	if down == 0 || fast != down {
		t.Errorf("%d of %d requests for node-2's keys failed fast with Unavailable after its lease expired", fast, down)
	}

	// Restart node-2 on its data: within 10s it is live, and every key of
	// the cluster reads back.
	nodes[1] = startMember(1)
	waitLive("node-2")
	for i := range keys {
		key := fmt.Sprintf("key/%05d", i)
		var got *kvv1.GetResponse
		err := call(func(ctx context.Context) error { var err error; got, err = c.Get(ctx, key); return err })
		if err != nil || string(got.GetValue()) != values[i] {
			t.Fatalf("%s after the restart: %v, %v (owner %s)", key, got, err, r.Owner(key))
		}
	}
	if n := deadlines.Load(); n != 0 {
		t.Errorf("%d requests ran into their deadline", n)
	}
	t.Logf("down window: %d/%d other-node requests ok, %d/%d node-2 requests failed fast", ok, other, fast, down)
}
