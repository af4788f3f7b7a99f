package kvnode_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/clock"
	"github.com/fluxkv/fluxkv/platform/ring"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// watchTimeout bounds every watch a test opens.
const watchTimeout = 30 * time.Second

// watching is an open watch and what it has received.
type watching struct {
	stream *connect.ServerStreamForClient[kvv1.WatchResponse]
	cancel context.CancelFunc
	token  string // of the last response received
	events []*cdcv1.ChangeEvent
}

// openWatch starts a watch and reads its first response, which must carry
// no events.
func openWatch(t *testing.T, client kvv1connect.KVServiceClient, req *kvv1.WatchRequest) *watching {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), watchTimeout)
	stream, err := client.Watch(ctx, connect.NewRequest(req))
	if err != nil {
		cancel()
		t.Fatalf("watch: %v", err)
	}
	w := &watching{stream: stream, cancel: cancel}
	t.Cleanup(w.close)
	if !stream.Receive() {
		t.Fatalf("watch %v: no first response: %v", req, stream.Err())
	}
	if n := len(stream.Msg().GetEvents()); n != 0 || stream.Msg().GetResumeToken() == "" {
		t.Fatalf("first response: got %d events and token %q, want none and a token", n, stream.Msg().GetResumeToken())
	}
	w.token = stream.Msg().GetResumeToken()
	return w
}

// read receives responses until at least n events have arrived in all.
func (w *watching) read(t *testing.T, n int) {
	t.Helper()
	for len(w.events) < n {
		if !w.stream.Receive() {
			t.Fatalf("after %d of %d events: %v", len(w.events), n, w.stream.Err())
		}
		if w.stream.Msg().GetResumeToken() == "" {
			t.Fatal("a response without a resume token")
		}
		w.token = w.stream.Msg().GetResumeToken()
		w.events = append(w.events, w.stream.Msg().GetEvents()...)
	}
}

func (w *watching) close() {
	w.cancel()
	_ = w.stream.Close()
}

func keysOf(events []*cdcv1.ChangeEvent) []string {
	keys := make([]string, len(events))
	for i, e := range events {
		keys[i] = e.GetKey()
	}
	return keys
}

// TestWatchResume: a watch from a start revision, or from a resume token
// taken mid-stream, gets exactly the changes after it, in revision order,
// and nothing else: after them, the next event is the next write.
func TestWatchResume(t *testing.T) {
	t.Parallel()
	forEachProtocol(t, kvnode.Config{}, func(t *testing.T, client kvv1connect.KVServiceClient, _ *clock.Fake) {
		type change struct {
			key string
			rev int64
			op  cdcv1.Op
		}
		var history []change // every change under w/, in order
		write := func(key string) {
			rev := put(t, client, &kvv1.PutRequest{Key: key, Value: []byte(key)}).GetRevision()
			history = append(history, change{key, rev, cdcv1.Op_OP_PUT})
			// A change that matches no watch below.
			put(t, client, &kvv1.PutRequest{Key: "other/" + key})
		}
		since := func(rev int64, match func(string) bool) []change {
			var out []change
			for _, c := range history {
				if c.rev >= rev && match(c.key) {
					out = append(out, c)
				}
			}
			return out
		}
		for i := range 10 {
			write(fmt.Sprintf("w/%d", i))
		}
		resp, err := client.Delete(context.Background(), connect.NewRequest(&kvv1.DeleteRequest{Key: "w/0"}))
		if err != nil {
			t.Fatal(err)
		}
		history = append(history, change{"w/0", resp.Msg.GetRevision(), cdcv1.Op_OP_DELETE})

		// A token taken from a live stream, with writes before and after.
		mid := openWatch(t, client, &kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: "w/"}})
		for i := 10; i < 13; i++ {
			write(fmt.Sprintf("w/%d", i))
		}
		mid.read(t, 2)
		mid.close()
		for i := 13; i < 16; i++ {
			write(fmt.Sprintf("w/%d", i))
		}
		if got, want := mid.events[0].GetKey(), "w/10"; got != want {
			t.Fatalf("watch from now: first event %s, want %s", got, want)
		}

		prefix := func(k string) bool { return strings.HasPrefix(k, "w/") }
		tests := []struct {
			req      *kvv1.WatchRequest
			from     int64 // the first revision it must stream
			match    func(string) bool
			sentinel string // a key it matches
		}{
			{&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: "w/"}, StartRevision: 1}, 1, prefix, "w/end"},
			{&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: "w/"}, StartRevision: history[3].rev + 1}, history[3].rev + 1, prefix, "w/end"},
			{&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: "w/"}, StartRevision: history[3].rev}, history[3].rev, prefix, "w/end"},
			{&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: "w/"}, ResumeToken: mid.token}, mid.events[len(mid.events)-1].GetRevision() + 1, prefix, "w/end"},
			{&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Key{Key: "w/5"}, StartRevision: history[2].rev}, history[2].rev, func(k string) bool { return k == "w/5" }, "w/5"},
		}
		for i, tt := range tests {
			w := openWatch(t, client, tt.req)
			w.read(t, len(since(tt.from, tt.match)))
			write(tt.sentinel)
			want := since(tt.from, tt.match)
			w.read(t, len(want))
			if len(w.events) != len(want) {
				t.Errorf("#%d: got %d events %v, want %d", i, len(w.events), keysOf(w.events), len(want))
				w.close()
				continue
			}
			for j, e := range w.events {
				if c := want[j]; e.GetKey() != c.key || e.GetRevision() != c.rev || e.GetOp() != c.op || e.GetNodeId() != "test-node" {
					t.Errorf("#%d: event %d: got %s %s at %d from %s, want %s %s at %d", i, j, e.GetOp(), e.GetKey(), e.GetRevision(), e.GetNodeId(), c.op, c.key, c.rev)
				} else if c.op == cdcv1.Op_OP_PUT && string(e.GetValue()) != c.key {
					t.Errorf("#%d: event %d: value %q, want %q", i, j, e.GetValue(), c.key)
				}
			}
			w.close()
		}
	})
}

// TestWatchRequestErrors: requests that cannot be served are refused
// before any response.
func TestWatchRequestErrors(t *testing.T) {
	t.Parallel()
	node := startNode(t, kvnode.Config{})
	client := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
	w := openWatch(t, client, &kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: ""}})
	token := w.token
	w.close()
	tests := []struct {
		req  *kvv1.WatchRequest
		want connect.Code
	}{
		{&kvv1.WatchRequest{}, connect.CodeInvalidArgument},
		{&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{}, StartRevision: -1}, connect.CodeInvalidArgument},
		{&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{}, StartRevision: 1, ResumeToken: token}, connect.CodeInvalidArgument},
		{&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{}, ResumeToken: "not a token"}, connect.CodeInvalidArgument},
		{&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{}, ResumeToken: "AAAA"}, connect.CodeInvalidArgument},
	}
	for i, tt := range tests {
		ctx, cancel := context.WithTimeout(context.Background(), watchTimeout)
		stream, err := client.Watch(ctx, connect.NewRequest(tt.req))
		if err == nil {
			for stream.Receive() {
				t.Errorf("#%d: got a response %v, want an error", i, stream.Msg())
			}
			err = stream.Err()
			_ = stream.Close()
		}
		cancel()
		if got := connect.CodeOf(err); got != tt.want {
			t.Errorf("#%d: got %v, want %v", i, err, tt.want)
		}
	}
}

// TestWatchCompactedStart: once a rewrite has replaced old changes with a
// snapshot, a watch starting before them fails with FAILED_PRECONDITION
// and the oldest revision still held, rather than skipping them; a watch
// opened before the rewrite keeps what it still has to read.
func TestWatchCompactedStart(t *testing.T) {
	t.Parallel()
	node := startNode(t, kvnode.Config{AppendOnly: true})
	client := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
	var last int64
	for i := range 20 {
		last = put(t, client, &kvv1.PutRequest{Key: fmt.Sprintf("c/%d", i), Value: []byte("v")}).GetRevision()
	}
	early := openWatch(t, client, &kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: "c/"}, StartRevision: 1})
	early.read(t, 1)
	rewrite(t, node)

	ctx, cancel := context.WithTimeout(context.Background(), watchTimeout)
	defer cancel()
	stream, err := client.Watch(ctx, connect.NewRequest(&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: "c/"}, StartRevision: 1}))
	if err == nil {
		for stream.Receive() {
			t.Fatalf("watch from a compacted start sent %v", stream.Msg())
		}
		err = stream.Err()
		_ = stream.Close()
	}
	cerr := wantCode(t, err, connect.CodeFailedPrecondition)
	compacted := detail[*kvv1.WatchCompacted](t, cerr)
	if compacted.GetNodeId() != "test-node" || compacted.GetOldestRevision() != last+1 {
		t.Fatalf("detail: got %v, want node test-node and oldest revision %d", compacted, last+1)
	}

	early.read(t, 20)
	if got := len(early.events); got != 20 {
		t.Errorf("watch opened before the rewrite: got %d events, want 20", got)
	}
	from := openWatch(t, client, &kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: "c/"}, StartRevision: compacted.GetOldestRevision()})
	rev := put(t, client, &kvv1.PutRequest{Key: "c/new"}).GetRevision()
	from.read(t, 1)
	if e := from.events[0]; e.GetKey() != "c/new" || e.GetRevision() != rev {
		t.Errorf("from the oldest revision: got %v, want c/new at %d", e, rev)
	}
}

func rewrite(t *testing.T, node *kvnode.Node) {
	t.Helper()
	resp, err := http.Post(node.AdminURL()+"/aof/rewrite", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("rewrite: %d %s", resp.StatusCode, body)
	}
}

// TestWatchReadsOlderChangesFromTheLog: a watch from revision 1 gets every
// change, including those the in-memory tail of recent events no longer
// holds, which come from the log's files.
func TestWatchReadsOlderChangesFromTheLog(t *testing.T) {
	t.Parallel()
	node := startNode(t, kvnode.Config{AppendOnly: true})
	client := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
	const n = 20000 // more than the tail holds (16384 by default)
	for i := 0; i < n; i += 1000 {
		ops := make([]*kvv1.Operation, 1000)
		for j := range ops {
			ops[j] = &kvv1.Operation{Op: &kvv1.Operation_Put{Put: &kvv1.PutRequest{Key: fmt.Sprintf("l/%05d", i+j)}}}
		}
		if _, err := client.Batch(context.Background(), connect.NewRequest(&kvv1.BatchRequest{Operations: ops})); err != nil {
			t.Fatal(err)
		}
	}
	w := openWatch(t, client, &kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: "l/"}, StartRevision: 1})
	w.read(t, n)
	for i, e := range w.events {
		if want := fmt.Sprintf("l/%05d", i); e.GetKey() != want || e.GetRevision() != int64(i+1) {
			t.Fatalf("#%d: got %s at revision %d, want %s at %d", i, e.GetKey(), e.GetRevision(), want, i+1)
		}
	}
}

// TestClusterWatch: a prefix watch sent to any node streams every member's
// changes; its token, taken mid-stream and given to another node, resumes
// without gaps or duplicates. A key watch follows the key's owner.
func TestClusterWatch(t *testing.T) {
	t.Parallel()
	_, nodes := startCluster(t, 3)
	members := []string{"node-1", "node-2", "node-3"}
	r, err := ring.New(members)
	if err != nil {
		t.Fatal(err)
	}
	clients := make([]kvv1connect.KVServiceClient, len(nodes))
	for i, node := range nodes {
		clients[i] = kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
	}
	owners := map[string]bool{}
	var written []string
	write := func(from, to int) {
		for i := from; i < to; i++ {
			key := fmt.Sprintf("cw/%03d", i)
			owners[r.Owner(key)] = true
			written = append(written, key)
			put(t, clients[i%3], &kvv1.PutRequest{Key: key, Value: []byte(key)})
		}
	}

	// The token is taken while writes are still arriving: where it cuts
	// each node's stream is up to the race.
	first := openWatch(t, clients[0], &kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: "cw/"}})
	write(0, 20)
	first.read(t, 10)
	write(20, 40)
	first.read(t, len(first.events)+1)
	first.close()
	write(40, 60)
	if len(owners) != len(members) {
		t.Fatalf("the keys written are owned by %v only", owners)
	}
	resumed := openWatch(t, clients[1], &kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: "cw/"}, ResumeToken: first.token})
	resumed.read(t, len(written)-len(first.events))
	// One more key on every member: each must be the next event of its
	// node, so no duplicate was still on its way.
	var ends []string
	for _, m := range members {
		key := keyOwnedBy(r, m, "cw/end")
		ends = append(ends, key)
		put(t, clients[0], &kvv1.PutRequest{Key: key})
	}
	resumed.read(t, len(written)-len(first.events)+len(ends))

	got := keysOf(append(slices.Clone(first.events), resumed.events...))
	want := append(slices.Clone(written), ends...)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("events across the resume: got %d %v, want each of %d writes once: %v", len(got), got, len(want), want)
	}
	for _, events := range [][]*cdcv1.ChangeEvent{first.events, resumed.events} {
		lastRev := map[string]int64{}
		for _, e := range events {
			if owner := r.Owner(e.GetKey()); e.GetNodeId() != owner {
				t.Errorf("%s: from node %s, want its owner %s", e.GetKey(), e.GetNodeId(), owner)
			}
			if e.GetRevision() <= lastRev[e.GetNodeId()] {
				t.Errorf("%s: revision %d of node %s after %d", e.GetKey(), e.GetRevision(), e.GetNodeId(), lastRev[e.GetNodeId()])
			}
			lastRev[e.GetNodeId()] = e.GetRevision()
		}
	}
	resumed.close()

	// A key watch through a node that does not own the key, from a
	// revision of its owner.
	key := keyOwnedBy(r, "node-2", "kw")
	rev := put(t, clients[0], &kvv1.PutRequest{Key: key, Value: []byte("1")}).GetRevision()
	put(t, clients[2], &kvv1.PutRequest{Key: key, Value: []byte("2")})
	kw := openWatch(t, clients[0], &kvv1.WatchRequest{Target: &kvv1.WatchRequest_Key{Key: key}, StartRevision: rev})
	kw.read(t, 2)
	for i, e := range kw.events {
		if e.GetKey() != key || e.GetNodeId() != "node-2" || string(e.GetValue()) != fmt.Sprint(i+1) {
			t.Errorf("key watch #%d: got %v, want value %d from node-2", i, e, i+1)
		}
	}
	kw.close()

	// Revisions are per node: a cluster-wide watch cannot start at one.
	ctx, cancel := context.WithTimeout(context.Background(), watchTimeout)
	defer cancel()
	stream, err := clients[0].Watch(ctx, connect.NewRequest(&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: "cw/"}, StartRevision: 1}))
	if err == nil {
		for stream.Receive() {
			t.Fatalf("a cluster-wide watch from a revision sent %v", stream.Msg())
		}
		err = stream.Err()
		_ = stream.Close()
	}
	wantCode(t, err, connect.CodeInvalidArgument)

	// A member leaving ends the watches it has a part in, naming it; then,
	// as it is not live, new ones fail.
	open := openWatch(t, clients[0], &kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: "cw/"}})
	if err := nodes[2].Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	for open.stream.Receive() {
		if n := len(open.stream.Msg().GetEvents()); n != 0 {
			t.Errorf("got %d events, nothing was written", n)
		}
	}
	if err := open.stream.Err(); connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "node-3") {
		t.Errorf("watch open while node-3 left: got %v, want unavailable naming node-3", err)
	}
	waitUntil(t, "the watch to fail for the missing member", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		stream, err := clients[0].Watch(ctx, connect.NewRequest(&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: "cw/"}}))
		if err != nil {
			return connect.CodeOf(err) == connect.CodeUnavailable && strings.Contains(err.Error(), "node-3")
		}
		defer stream.Close()
		for stream.Receive() {
			// Started before the others noticed the member left.
		}
		err = stream.Err()
		return connect.CodeOf(err) == connect.CodeUnavailable && strings.Contains(err.Error(), "node-3")
	})
}

// TestWatchEndsAtShutdown: open watches end with UNAVAILABLE when the node
// shuts down, rather than holding its shutdown until the timeout.
func TestWatchEndsAtShutdown(t *testing.T) {
	t.Parallel()
	node := startNode(t, kvnode.Config{ShutdownTimeout: 2 * watchTimeout})
	client := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
	w := openWatch(t, client, &kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{}})
	if err := node.Shutdown(context.Background()); err != nil {
		t.Fatalf("shutdown with a watch open: %v", err)
	}
	for w.stream.Receive() {
		// Progress messages, if the shutdown was slow.
	}
	wantCode(t, w.stream.Err(), connect.CodeUnavailable)
}
