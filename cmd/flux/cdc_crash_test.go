package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/internal/amqptest"
	"github.com/fluxkv/fluxkv/platform/cdc"
)

// TestCDCCrashBetweenAppendAndConfirm kills a node with CDC on while
// writers are busy, so that its log holds events the broker has not
// confirmed (or that it has, but the checkpoint does not say so yet), and
// restarts it on the same data dir. The relay must resume from its
// checkpoint, the node must continue revisions after what its log
// recovered, and the queue must then hold every revision, from the first to
// the last written after the restart, once after dedup by message id.
func TestCDCCrashBetweenAppendAndConfirm(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts node processes")
	}
	broker := amqptest.URL(t)
	queue := amqptest.Queue(t, broker)
	nodeID := fmt.Sprintf("crash-cdc-%08x", rand.Uint32())
	dir := t.TempDir()
	args := []string{"--node-id", nodeID, "--amqp-url", broker, "--cdc-queue", queue}
	node := startChild(t, dir, args...)
	client := kvv1connect.NewKVServiceClient(newTestClient(t), node.url)

	var (
		mu         sync.Mutex
		lastAcked  int64
		wg         sync.WaitGroup
		checkpoint = filepath.Join(dir, cdc.CheckpointFile)
	)
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				resp, err := client.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: fmt.Sprintf("w%d/%d", w, i), Value: []byte("v")}))
				cancel()
				if err != nil {
					return // the node is gone
				}
				mu.Lock()
				lastAcked = max(lastAcked, resp.Msg.GetRevision())
				mu.Unlock()
			}
		})
	}
	// Killed once the relay has persisted a checkpoint, so the restart has
	// one to resume from, and while it publishes what follows.
	deadline := time.Now().Add(30 * time.Second)
	for readCheckpoint(t, checkpoint, nodeID) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint after 30s:\n%s", node.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(time.Duration(300+rand.IntN(1200)) * time.Millisecond)
	if err := node.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-node.exited
	wg.Wait()
	resumeFrom := readCheckpoint(t, checkpoint, nodeID)

	restarted := startChild(t, dir, args...)
	recovered := int64(logField(t, restarted, "recovered from append-only file", "revision", 0))
	if recovered < lastAcked {
		t.Fatalf("recovered revision %d, but revision %d was acknowledged", recovered, lastAcked)
	}
	if resumeFrom >= recovered {
		t.Fatalf("checkpoint %d at recovered revision %d: the kill did not fall between append and confirm", resumeFrom, recovered)
	}
	if from := int64(logField(t, restarted, "cdc: connected to the broker", "from_revision", 30*time.Second)); from != resumeFrom+1 {
		t.Errorf("relay resumed from revision %d, want %d, after the checkpoint", from, resumeFrom+1)
	}

	client = kvv1connect.NewKVServiceClient(newTestClient(t), restarted.url)
	var last int64
	for i := range 100 {
		resp, err := client.Put(context.Background(), connect.NewRequest(&kvv1.PutRequest{Key: fmt.Sprintf("after/%d", i), Value: []byte("v")}))
		if err != nil {
			t.Fatalf("put after restart: %v", err)
		}
		if want := recovered + int64(i) + 1; resp.Msg.GetRevision() != want {
			t.Fatalf("put %d after restart: revision %d, want %d", i, resp.Msg.GetRevision(), want)
		}
		last = resp.Msg.GetRevision()
	}
	t.Logf("acknowledged %d, recovered %d, checkpoint %d at the kill, last %d", lastAcked, recovered, resumeFrom, last)

	got := amqptest.Consume(t, broker, queue)
	got.Wait(t, nodeID, last, 60*time.Second)
	got.CheckExactlyOnce(t, nodeID, last, true)
}

// readCheckpoint is the revision in the relay's checkpoint file, 0 while
// there is none.
func readCheckpoint(t *testing.T, file, nodeID string) int64 {
	t.Helper()
	b, err := os.ReadFile(file)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		NodeID   string `json:"node_id"`
		Revision int64  `json:"revision"`
	}
	if err := json.Unmarshal(b, &c); err != nil || c.NodeID != nodeID {
		t.Fatalf("checkpoint file %q: %v, want node %s", b, err, nodeID)
	}
	return c.Revision
}

// logField waits up to wait for the child's JSON log line with message msg
// and returns its numeric field.
func logField(t *testing.T, c *child, msg, field string, wait time.Duration) float64 {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		for _, line := range strings.Split(c.output(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) != nil || rec["msg"] != msg {
				continue
			}
			v, ok := rec[field].(float64)
			if !ok {
				t.Fatalf("log line %s has no number %s", line, field)
			}
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line %q in %v:\n%s", msg, wait, c.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
