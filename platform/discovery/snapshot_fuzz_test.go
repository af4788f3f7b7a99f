package discovery

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fluxkv/fluxkv/platform/ring"
)

// baseSnapshot is a cluster as a watcher may hold it; migrated gives it a
// ring record, otherwise its ring is the ids under /flux/members/.
func baseSnapshot(migrated bool) *Snapshot {
	at := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	s := &Snapshot{
		Revision: 40,
		Gateways: map[string]Instance{"gw-1": {ID: "gw-1", Address: "10.0.0.9:8080", StartedAt: at}},
		Members:  map[string]Member{"node-1": {ID: "node-1", JoinedAt: at}, "node-2": {ID: "node-2", JoinedAt: at}},
		Instances: map[string]map[string]Instance{
			"flux.kv.v1.KVService": {"node-1": {ID: "node-1", Address: "10.0.0.1:7000", AdminAddress: "127.0.0.1:7001", StartedAt: at, Version: "v1"}},
		},
	}
	if migrated {
		s.Current = &RingRecord{Epoch: 2, Members: []string{"node-1", "node-2"}}
	}
	return s
}

// FuzzSnapshotApply: whatever anyone with access to etcd writes under
// /flux/, applying it to a snapshot never panics; a refused entry leaves
// the snapshot as it was; an accepted one leaves a snapshot the gateway and
// the nodes can route by (every id as its key names it, the ring's members
// valid ring members); its value, encoded again, applies the same; and
// deleting the key afterwards is the same as deleting it at once.
func FuzzSnapshotApply(f *testing.F) {
	at := time.Date(2026, 5, 6, 7, 8, 9, 10, time.UTC)
	encode := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add(MemberKey("node-3"), encode(Member{ID: "node-3", JoinedAt: at}), false, false)
	f.Add(MemberKey("node-3"), encode(Member{ID: "node-3", JoinedAt: at}), false, true)
	f.Add(InstanceKey("flux.kv.v1.KVService", "node-2"), encode(Instance{ID: "node-2", Address: "10.0.0.2:7000", StartedAt: at}), false, true)
	f.Add(InstanceKey("acme.echo.v1.EchoService", "e/1"), encode(Instance{Address: "x:1"}), false, false)
	f.Add(GatewaysPrefix+"gw-2", encode(Instance{ID: "gw-2", Address: "10.0.0.8:8080"}), false, true)
	f.Add(RingCurrentKey, encode(RingRecord{Epoch: 3, Members: []string{"node-1", "node-2", "node-3"}}), false, true)
	f.Add(RingNextKey, encode(RingRecord{Epoch: 3, Members: []string{"node-1"}, Change: &RingChange{Remove: "node-2"}}), false, false)
	f.Add(DataKey, []byte(`{"node_id":"node-1"}`), false, true)
	f.Add(MemberKey("node-1"), []byte(nil), true, false)
	f.Add(InstanceKey("flux.kv.v1.KVService", "node-1"), []byte(nil), true, true)
	f.Fuzz(func(t *testing.T, key string, value []byte, deleted, migrated bool) {
		if deleted {
			value = nil
		} else if value == nil {
			value = []byte{} // a put of an empty value
		}
		before := baseSnapshot(migrated)
		s := before.clone()
		if err := s.apply(key, value, 77); err != nil {
			if !reflect.DeepEqual(s, before) {
				t.Fatalf("refused %q = %q (%v), but changed the snapshot to %+v", key, value, err, s)
			}
			return
		}
		checkRoutable(t, s)

		if value == nil || !strings.HasPrefix(key, Prefix) {
			return
		}
		var again []byte
		switch {
		case key == RingCurrentKey:
			again = reencode(t, s.Current)
		case key == RingNextKey:
			again = reencode(t, s.Next)
		case strings.HasPrefix(key, MembersPrefix):
			again = reencode(t, s.Members[strings.TrimPrefix(key, MembersPrefix)])
		case strings.HasPrefix(key, GatewaysPrefix):
			again = reencode(t, s.Gateways[strings.TrimPrefix(key, GatewaysPrefix)])
		case strings.HasPrefix(key, ServicesPrefix):
			svc, id, _ := strings.Cut(strings.TrimPrefix(key, ServicesPrefix), "/")
			again = reencode(t, s.Instances[svc][id])
		default:
			again = value
		}
		fromAgain := before.clone()
		if err := fromAgain.apply(key, again, 77); err != nil || !sameSnapshot(fromAgain, s) {
			t.Fatalf("%q = %q re-encodes to %q, which applies as %+v, %v; want %+v", key, value, again, fromAgain, err, s)
		}

		deletedAtOnce := before.clone()
		if err := deletedAtOnce.apply(key, nil, 78); err != nil {
			t.Fatalf("delete %q: %v", key, err)
		}
		if err := s.apply(key, nil, 78); err != nil || !sameSnapshot(s, deletedAtOnce) {
			t.Fatalf("put then delete of %q gives %+v, %v; delete alone %+v", key, s, err, deletedAtOnce)
		}
	})
}

func reencode(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("encode %+v: %v", v, err)
	}
	return b
}

// checkRoutable fails t unless s holds only what routing can use.
func checkRoutable(t *testing.T, s *Snapshot) {
	t.Helper()
	if _, err := ring.New(s.RingMembers()); err != nil {
		t.Fatalf("snapshot %+v: ring members %q: %v", s, s.RingMembers(), err)
	}
	for _, r := range []*RingRecord{s.Current, s.Next} {
		if r == nil {
			continue
		}
		if _, err := ring.New(r.Members); err != nil || r.Epoch < 1 {
			t.Fatalf("snapshot holds ring record %+v: %v", r, err)
		}
	}
	for id, m := range s.Members {
		if m.ID != id {
			t.Fatalf("member %q holds id %q", id, m.ID)
		}
	}
	for id, g := range s.Gateways {
		if g.ID != id {
			t.Fatalf("gateway %q holds id %q", id, g.ID)
		}
	}
	for svc, live := range s.Instances {
		if svc == "" || len(live) == 0 {
			t.Fatalf("service %q with %d instances", svc, len(live))
		}
		for id, inst := range live {
			if id == "" || strings.Contains(id, "/") || inst.ID != id || inst.Address == "" {
				t.Fatalf("instance %q of %s: %+v", id, svc, inst)
			}
		}
	}
}

// sameSnapshot compares snapshots with times compared as instants: a time
// read from JSON carries the offset it was written with.
func sameSnapshot(a, b *Snapshot) bool {
	norm := func(s *Snapshot) *Snapshot {
		c := s.clone()
		for id, m := range c.Members {
			m.JoinedAt = m.JoinedAt.UTC()
			c.Members[id] = m
		}
		for id, g := range c.Gateways {
			g.StartedAt = g.StartedAt.UTC()
			c.Gateways[id] = g
		}
		for _, live := range c.Instances {
			for id, inst := range live {
				inst.StartedAt = inst.StartedAt.UTC()
				live[id] = inst
			}
		}
		return c
	}
	return reflect.DeepEqual(norm(a), norm(b))
}
