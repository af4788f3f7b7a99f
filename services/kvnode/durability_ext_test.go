package kvnode_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/changelog"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// TestRestartRecoversWrites writes through every write path, stops the node
// gracefully and starts another on the same data directory.
func TestRestartRecoversWrites(t *testing.T) {
	t.Parallel()
	for _, policy := range []changelog.Policy{changelog.FsyncAlways, changelog.FsyncEverySec, changelog.FsyncNo} {
		t.Run(policy.String(), func(t *testing.T) {
			t.Parallel()
			cfg := kvnode.Config{AppendOnly: true, AppendFsync: policy, DataDir: t.TempDir(), NodeID: "restart"}
			first, err := kvnode.New(withTestDefaults(cfg))
			if err != nil {
				t.Fatal(err)
			}
			if err := first.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			client := kvv1connect.NewKVServiceClient(h2cClient(t), first.APIURL())
			ctx := context.Background()
			put(t, client, &kvv1.PutRequest{Key: "unary", Value: []byte("1")})
			put(t, client, &kvv1.PutRequest{Key: "gone", Value: []byte("x")})
			if _, err := client.Delete(ctx, connect.NewRequest(&kvv1.DeleteRequest{Key: "gone"})); err != nil {
				t.Fatal(err)
			}
			if _, err := client.Batch(ctx, connect.NewRequest(&kvv1.BatchRequest{Operations: []*kvv1.Operation{
				{Op: &kvv1.Operation_Put{Put: &kvv1.PutRequest{Key: "batch", Value: []byte("2")}}},
			}})); err != nil {
				t.Fatal(err)
			}
			stream := client.Pipeline(ctx)
			if err := stream.Send(&kvv1.PipelineRequest{Id: 1, Operation: &kvv1.Operation{Op: &kvv1.Operation_Put{Put: &kvv1.PutRequest{Key: "pipeline", Value: []byte("3")}}}}); err != nil {
				t.Fatal(err)
			}
			if err := stream.CloseRequest(); err != nil {
				t.Fatal(err)
			}
			if _, err := stream.Receive(); err != nil {
				t.Fatal(err)
			}
			_ = stream.CloseResponse()
			lastRev := put(t, client, &kvv1.PutRequest{Key: "last", Value: []byte("4")}).GetRevision()
			if err := first.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}

			second := startNode(t, cfg)
			client = kvv1connect.NewKVServiceClient(h2cClient(t), second.APIURL())
			for key, want := range map[string]string{"unary": "1", "batch": "2", "pipeline": "3", "last": "4"} {
				if got := get(t, client, key); string(got.GetValue()) != want {
					t.Errorf("%s after restart: got %v, want %s", key, got, want)
				}
			}
			if got := get(t, client, "gone"); got.GetFound() {
				t.Errorf("deleted key came back after restart")
			}
			// Revisions continue where they stopped.
			if rev := put(t, client, &kvv1.PutRequest{Key: "next", Value: nil}).GetRevision(); rev != lastRev+1 {
				t.Errorf("first revision after restart: got %d, want %d", rev, lastRev+1)
			}
		})
	}
}

func withTestDefaults(cfg kvnode.Config) kvnode.Config {
	cfg.Listen, cfg.AdminListen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Logger = discardLogger()
	return cfg
}

func TestInMemoryNodeKeepsNoFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	node := startNode(t, kvnode.Config{DataDir: dir})
	client := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
	put(t, client, &kvv1.PutRequest{Key: "k", Value: []byte("v")})
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("an in-memory node wrote %d entries into its data dir", len(entries))
	}
}

func TestAdminRewrite(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	node := startNode(t, kvnode.Config{AppendOnly: true, DataDir: dir})
	client := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
	for i := range 100 {
		put(t, client, &kvv1.PutRequest{Key: fmt.Sprintf("k%d", i%10), Value: []byte("v")})
	}
	resp, err := http.Post(node.AdminURL()+"/aof/rewrite", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("rewrite: %d %s", resp.StatusCode, body)
	}
	bases, _ := filepath.Glob(filepath.Join(dir, "aof", "base-*.aof"))
	if len(bases) != 1 {
		t.Errorf("after a rewrite: base files %v, want one", bases)
	}
	metrics, err := http.Get(node.AdminURL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	text, _ := io.ReadAll(metrics.Body)
	metrics.Body.Close()
	for _, want := range []string{`flux_aof_rewrites_total{result="ok"} 1`, "flux_aof_size_bytes", "flux_aof_fsync_seconds"} {
		if !strings.Contains(string(text), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
