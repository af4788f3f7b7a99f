package kvnode_test

import (
	"context"
	"fmt"
	"testing"

	"connectrpc.com/connect"

	clusterv1 "github.com/fluxkv/fluxkv/gen/flux/cluster/v1"
	"github.com/fluxkv/fluxkv/gen/flux/cluster/v1/clusterv1connect"
	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// TestStats: NodeService.Stats reports the keys, revisions and log of the
// node that answers, over every protocol, with and without a log.
func TestStats(t *testing.T) {
	t.Parallel()
	for _, appendOnly := range []bool{true, false} {
		for _, p := range protocols {
			t.Run(fmt.Sprintf("%s/aof=%v", p.name, appendOnly), func(t *testing.T) {
				t.Parallel()
				node := startNode(t, kvnode.Config{NodeID: "stats-node", AppendOnly: appendOnly})
				kv := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL(), p.opts...)
				stats := clusterv1connect.NewNodeServiceClient(h2cClient(t), node.APIURL(), p.opts...)
				var last int64
				for i := range 5 {
					last = put(t, kv, &kvv1.PutRequest{Key: fmt.Sprintf("k%d", i), Value: []byte("value")}).GetRevision()
				}
				if _, err := kv.Delete(context.Background(), connect.NewRequest(&kvv1.DeleteRequest{Key: "k0"})); err != nil {
					t.Fatal(err)
				}
				last++
				resp, err := stats.Stats(context.Background(), connect.NewRequest(&clusterv1.StatsRequest{}))
				if err != nil {
					t.Fatalf("stats: %v", err)
				}
				got := resp.Msg.GetStats()
				if got.GetNodeId() != "stats-node" || got.GetKeyCount() != 4 || got.GetRevision() != last || got.GetOldestRevision() != 1 {
					t.Errorf("stats: got %v, want node stats-node, 4 keys, revision %d, oldest revision 1", got, last)
				}
				if got.GetAppendOnly() != appendOnly || (got.GetLogBytes() > 0) != appendOnly {
					t.Errorf("stats: got append_only %v and %d log bytes, want append_only %v and log bytes only with it",
						got.GetAppendOnly(), got.GetLogBytes(), appendOnly)
				}
			})
		}
	}
}
