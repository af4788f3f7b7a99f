package discovery_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/fluxkv/fluxkv/platform/discovery"
	"github.com/fluxkv/fluxkv/platform/etcdembed"
)

func startEtcd(t *testing.T) *clientv3.Client {
	t.Helper()
	srv, err := etcdembed.Start(t.TempDir(), "http://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	client, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.ClientURL()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// waitFor polls the watcher's snapshot until cond holds, failing after 10s.
func waitFor(t *testing.T, w *discovery.Watcher, what string, cond func(*discovery.Snapshot) bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		changed := w.Changed()
		if cond(w.Snapshot()) {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("timed out waiting for %s; snapshot %+v", what, w.Snapshot())
		}
	}
}

func TestRegisterWatchAndRevoke(t *testing.T) {
	t.Parallel()
	client := startEtcd(t)
	ctx := context.Background()
	w := discovery.NewWatcher(client, quiet)
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	added, err := discovery.AddMember(ctx, client, "n1", false)
	if err != nil || !added {
		t.Fatalf("add member: %v, %v", added, err)
	}
	if again, err := discovery.AddMember(ctx, client, "n1", false); err != nil || again {
		t.Fatalf("adding a member twice: added %v, %v", again, err)
	}
	inst := discovery.Instance{ID: "n1", Address: "127.0.0.1:7701", AdminAddress: "127.0.0.1:9701", StartedAt: time.Now().UTC().Truncate(time.Second), Version: "test"}
	reg, err := discovery.Register(ctx, client, "flux.kv.v1.KVService", inst, discovery.WithTTL(2*time.Second), discovery.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, w, "n1 live", func(s *discovery.Snapshot) bool {
		live := s.Live("flux.kv.v1.KVService")
		return len(live) == 1 && live[0] == inst && len(s.MemberIDs()) == 1
	})

	// Losing the lease (as after an etcd outage longer than the TTL) makes
	// the registration come back with a new lease.
	resp, err := client.Get(ctx, discovery.InstanceKey("flux.kv.v1.KVService", "n1"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get registration: %v", err)
	}
	oldLease := resp.Kvs[0].Lease
	if _, err := client.Revoke(ctx, clientv3.LeaseID(oldLease)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := client.Get(ctx, discovery.InstanceKey("flux.kv.v1.KVService", "n1"))
		if err == nil && len(resp.Kvs) == 1 && resp.Kvs[0].Lease != oldLease {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("instance was not re-registered after its lease was revoked")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Close revokes the lease: the instance disappears at once, the member
	// stays.
	if err := reg.Close(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, w, "n1 gone", func(s *discovery.Snapshot) bool {
		return len(s.Live("flux.kv.v1.KVService")) == 0 && len(s.MemberIDs()) == 1
	})
}

func TestWatcherIgnoresForeignJunk(t *testing.T) {
	t.Parallel()
	client := startEtcd(t)
	ctx := context.Background()
	if _, err := client.Put(ctx, discovery.ServicesPrefix+"acme.v1.Thing/bad", "not json"); err != nil {
		t.Fatal(err)
	}
	w := discovery.NewWatcher(client, quiet)
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := client.Put(ctx, discovery.ServicesPrefix+"acme.v1.Thing/i1", `{"id":"i1","address":"127.0.0.1:9000"}`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, w, "acme instance", func(s *discovery.Snapshot) bool {
		live := s.Live("acme.v1.Thing")
		return len(live) == 1 && live[0].Address == "127.0.0.1:9000"
	})
	if got := w.Snapshot().Services(); len(got) != 1 || got[0] != "acme.v1.Thing" {
		t.Errorf("services: %v", got)
	}
}

// TestWatcherResyncsAfterCompaction starts a watcher from a revision etcd
// has compacted away: it must load everything again and see the changes.
func TestWatcherResyncsAfterCompaction(t *testing.T) {
	t.Parallel()
	client := startEtcd(t)
	ctx := context.Background()
	first := discovery.NewWatcher(client, quiet)
	if err := first.Start(ctx); err != nil {
		t.Fatal(err)
	}
	old := first.Snapshot()
	first.Close()

	var last int64
	for _, id := range []string{"a", "b", "c"} {
		resp, err := client.Put(ctx, discovery.MemberKey(id), `{"id":"`+id+`"}`)
		if err != nil {
			t.Fatal(err)
		}
		last = resp.Header.Revision
	}
	if _, err := client.Compact(ctx, last); err != nil {
		t.Fatal(err)
	}
	w := discovery.NewWatcher(client, quiet)
	w.StartFrom(old)
	defer w.Close()
	waitFor(t, w, "members after resync", func(s *discovery.Snapshot) bool { return len(s.MemberIDs()) == 3 })
}

// TestJoinAndFirstWriteExcludeEachOther: a member may join only while the
// cluster holds no data, and the first write is recorded only by a node
// whose view includes every member; so a join and a first write racing
// each other cannot both succeed.
func TestJoinAndFirstWriteExcludeEachOther(t *testing.T) {
	t.Parallel()
	client := startEtcd(t)
	ctx := context.Background()
	if added, err := discovery.AddMember(ctx, client, "a", false); err != nil || !added {
		t.Fatalf("add a: %v, %v", added, err)
	}
	resp, err := client.Get(ctx, discovery.MembersPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	viewOfA := resp.Header.Revision // a's view: members {a}
	if added, err := discovery.AddMember(ctx, client, "b", false); err != nil || !added {
		t.Fatalf("add b: %v, %v", added, err)
	}
	if err := discovery.MarkData(ctx, client, "a", viewOfA); !errors.Is(err, discovery.ErrMembersChanged) {
		t.Fatalf("marking data from a view without b: got %v, want ErrMembersChanged", err)
	}
	resp, err = client.Get(ctx, discovery.MembersPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if err := discovery.MarkData(ctx, client, "a", resp.Header.Revision); err != nil {
		t.Fatalf("marking data from a current view: %v", err)
	}
	// Once recorded, a node with a stale view is still refused: its ring
	// would place keys on the wrong member.
	if err := discovery.MarkData(ctx, client, "b", viewOfA); !errors.Is(err, discovery.ErrMembersChanged) {
		t.Fatalf("marking data again from a stale view: got %v, want ErrMembersChanged", err)
	}
	if added, err := discovery.AddMember(ctx, client, "c", false); !errors.Is(err, discovery.ErrHoldsData) || added {
		t.Fatalf("adding c to a cluster with data: got %v, %v, want ErrHoldsData", added, err)
	}
	if added, err := discovery.AddMember(ctx, client, "a", false); err != nil || added {
		t.Fatalf("rejoining as a: got %v, %v, want an existing member", added, err)
	}
	if added, err := discovery.AddMember(ctx, client, "c", true); err != nil || !added {
		t.Fatalf("adding c with consent: got %v, %v", added, err)
	}
	w := discovery.NewWatcher(client, quiet)
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if !w.Snapshot().HoldsData {
		t.Error("the snapshot does not show that the cluster holds data")
	}
}

func TestInstanceDialURL(t *testing.T) {
	t.Parallel()
	plain := discovery.Instance{ID: "node-1", Address: "10.0.0.1:7701", AdminAddress: "10.0.0.1:9701"}
	secure := plain
	secure.TLS = true
	for _, tt := range []struct {
		inst       discovery.Instance
		requireTLS bool
		want       string // "" for an error
	}{
		{plain, false, "http://10.0.0.1:7701"},
		{secure, false, "https://10.0.0.1:7701"},
		{secure, true, "https://10.0.0.1:7701"},
		{plain, true, ""},
	} {
		got, err := tt.inst.DialURL(tt.requireTLS)
		if got != tt.want || (err == nil) != (tt.want != "") {
			t.Errorf("DialURL(%v) of TLS=%v: %q, %v; want %q", tt.requireTLS, tt.inst.TLS, got, err, tt.want)
		}
	}
	if got := secure.AdminURL(); got != "https://10.0.0.1:9701" {
		t.Errorf("AdminURL: %q", got)
	}
}

// TestConnectRefusesTLSToCleartextEndpoints: etcd's client would drop the
// TLS configuration for an http:// endpoint and speak cleartext.
func TestConnectRefusesTLSToCleartextEndpoints(t *testing.T) {
	t.Parallel()
	_, err := discovery.Connect(context.Background(), []string{"https://127.0.0.1:1", "http://127.0.0.1:2"}, &tls.Config{MinVersion: tls.VersionTLS12})
	if err == nil || !strings.Contains(err.Error(), `"http://127.0.0.1:2" is not https://`) {
		t.Errorf("Connect with TLS to an http:// endpoint: %v", err)
	}
}
