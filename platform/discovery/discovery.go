// Package discovery is how Flux-KV processes find each other through etcd.
//
// Etcd holds the cluster's state. /flux/members/<id> records each node that
// ever joined (persistent, so a node that is down keeps its keys), and
// /flux/ring/current the ring everyone routes by: an epoch and the member
// ids, rewritten in the same transaction as every member added or removed.
// /flux/services/<service full
// name>/<instance id> holds one lease-backed key per live instance of any
// gRPC or Connect service, with a JSON Instance as its value; the key
// disappears when its lease expires or is revoked. The format is public, so
// services that are not Flux-KV's register the same way (see
// docs/discovery.md) and the gateway serves them.
//
// Register keeps an instance registered; Watcher keeps a consistent
// snapshot of both prefixes and reports changes.
package discovery

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Key prefixes in etcd.
const (
	Prefix         = "/flux/"
	MembersPrefix  = Prefix + "members/"
	ServicesPrefix = Prefix + "services/"
	GatewaysPrefix = Prefix + "gateways/"
	// DataKey exists once any node of the cluster has accepted a write. A
	// node records it before it applies its first write, and a new member
	// may join only while it is absent: until data moves with its keys,
	// joining a cluster that holds data would hide keys from reads.
	DataKey = Prefix + "cluster/holds-data"
	// RingCurrentKey holds the ring everyone routes by, a JSON RingRecord.
	// It is written only in transactions that compare its revision, so
	// every change is built on the one before it.
	RingCurrentKey = Prefix + "ring/current"
	// RingNextKey holds the ring a change in progress leads to, with the
	// change (docs/design/elastic-cluster.md): BeginAdd and BeginRemove
	// write it, Flip and AbortChange delete it.
	RingNextKey = Prefix + "ring/next"
)

// RingRecord is the value of RingCurrentKey and RingNextKey.
type RingRecord struct {
	Epoch   int64       `json:"epoch"`            // 1 for the first record, one more on every change
	Members []string    `json:"members"`          // member ids, sorted, no duplicates
	Change  *RingChange `json:"change,omitempty"` // in RingNextKey only: what changes from current
}

// RingChange is the membership change a RingNextKey record makes.
type RingChange struct {
	Add    string `json:"add,omitempty"`    // the member joining
	Remove string `json:"remove,omitempty"` // the member leaving
}

// parseRingRecord decodes and checks a ring record: a record that breaks
// the format must not become anyone's ring.
func parseRingRecord(value []byte) (*RingRecord, error) {
	var r RingRecord
	if err := json.Unmarshal(value, &r); err != nil {
		return nil, err
	}
	if r.Epoch < 1 {
		return nil, fmt.Errorf("epoch %d, want 1 or more", r.Epoch)
	}
	for i, id := range r.Members {
		if id == "" {
			return nil, errors.New("an empty member id")
		}
		if i > 0 && r.Members[i-1] >= id {
			return nil, fmt.Errorf("members %q are not sorted and unique", r.Members)
		}
	}
	if r.Members == nil {
		r.Members = []string{}
	}
	return &r, nil
}

// Instance is the value of a live instance's key.
type Instance struct {
	ID           string    `json:"id"`            // instance id, also the last key segment
	Address      string    `json:"address"`       // host:port of the API listener
	AdminAddress string    `json:"admin_address"` // host:port of the admin listener
	StartedAt    time.Time `json:"started_at"`    // RFC 3339
	Version      string    `json:"version"`       // build of the instance
	// TLS says both listeners serve TLS only; otherwise they speak
	// cleartext (h2c on the API port).
	TLS bool `json:"tls,omitempty"`
}

// URL is the base URL of the instance's API listener.
func (i Instance) URL() string { return baseURL(i.TLS, i.Address) }

// DialURL is URL for a caller that may require TLS of the servers it
// calls: an instance registered without TLS is refused to such a caller,
// so a server restarted without its certificate never receives tokens and
// values in the clear.
func (i Instance) DialURL(requireTLS bool) (string, error) {
	if requireTLS && !i.TLS {
		return "", fmt.Errorf("%s is registered without TLS, and calls to it must use TLS (a TLS configuration for peers is set)", i.ID)
	}
	return i.URL(), nil
}

// AdminURL is the base URL of the instance's admin listener.
func (i Instance) AdminURL() string { return baseURL(i.TLS, i.AdminAddress) }

func baseURL(tls bool, addr string) string {
	if tls {
		return "https://" + addr
	}
	return "http://" + addr
}

// Member is the value of a member's key.
type Member struct {
	ID       string    `json:"id"`
	JoinedAt time.Time `json:"joined_at"`
}

// MemberKey is the etcd key of member id.
func MemberKey(id string) string { return MembersPrefix + id }

// InstanceKey is the etcd key of an instance of service.
func InstanceKey(service, id string) string { return ServicesPrefix + service + "/" + id }

// Snapshot is the cluster as of one etcd revision.
type Snapshot struct {
	Revision  int64
	HoldsData bool        // DataKey exists
	Current   *RingRecord // RingCurrentKey; nil until written (a cluster not migrated yet)
	Next      *RingRecord // RingNextKey; nil unless a change is in progress
	// NextRevision is RingNextKey's create revision: it identifies the
	// change in progress, which its epoch does not (a change begun after
	// another was aborted gets the same epoch).
	NextRevision int64
	Gateways     map[string]Instance            // live gateways, by id
	Members      map[string]Member              // by id
	Instances    map[string]map[string]Instance // by service, then instance id
}

// RingMembers returns the ids everyone must route by, sorted: the members
// of the current ring, or, in a cluster that has no RingCurrentKey yet (one
// not migrated), the ids under /flux/members/.
func (s *Snapshot) RingMembers() []string {
	if s.Current != nil {
		return slices.Clone(s.Current.Members)
	}
	return s.MemberIDs()
}

// StatusMembers returns, sorted, the ids a status report lists: the ring's
// members and, while a change adds one, the node joining, which is not on
// the ring yet but reports the copies it receives.
func (s *Snapshot) StatusMembers() []string {
	ids := s.RingMembers()
	if s.Next != nil {
		for _, id := range s.Next.Members {
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
		slices.Sort(ids)
	}
	return ids
}

// Epoch returns the current ring's epoch, 0 while there is no
// RingCurrentKey.
func (s *Snapshot) Epoch() int64 {
	if s.Current == nil {
		return 0
	}
	return s.Current.Epoch
}

// MemberIDs returns the ids under /flux/members/, sorted. Route by
// RingMembers instead.
func (s *Snapshot) MemberIDs() []string {
	ids := make([]string, 0, len(s.Members))
	for id := range s.Members {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Live returns the live instances of service, sorted by id.
func (s *Snapshot) Live(service string) []Instance {
	m := s.Instances[service]
	out := make([]Instance, 0, len(m))
	for _, inst := range m {
		out = append(out, inst)
	}
	slices.SortFunc(out, func(a, b Instance) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Services returns the names of services with at least one live instance,
// sorted.
func (s *Snapshot) Services() []string {
	names := make([]string, 0, len(s.Instances))
	for name, m := range s.Instances {
		if len(m) > 0 {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

func (s *Snapshot) clone() *Snapshot {
	// The ring records are never modified once parsed, so they are shared.
	c := &Snapshot{Revision: s.Revision, HoldsData: s.HoldsData, Current: s.Current, Next: s.Next, NextRevision: s.NextRevision, Gateways: maps.Clone(s.Gateways), Members: make(map[string]Member, len(s.Members)), Instances: make(map[string]map[string]Instance, len(s.Instances))}
	for id, m := range s.Members {
		c.Members[id] = m
	}
	for svc, m := range s.Instances {
		cm := make(map[string]Instance, len(m))
		for id, inst := range m {
			cm[id] = inst
		}
		c.Instances[svc] = cm
	}
	return c
}

// apply records one key's new value (nil: deleted), created at etcd
// revision createRev. Keys that are not ours or do not parse are ignored:
// the prefixes are public and a bad entry from someone else must not break
// discovery.
func (s *Snapshot) apply(key string, value []byte, createRev int64) error {
	switch {
	case key == DataKey:
		s.HoldsData = value != nil
	case key == RingCurrentKey || key == RingNextKey:
		var r *RingRecord
		if value != nil {
			var err error
			if r, err = parseRingRecord(value); err != nil {
				// The snapshot keeps the record it had: routing by an older
				// ring is better than by none.
				return fmt.Errorf("ring record %s: %w", key, err)
			}
		}
		if key == RingCurrentKey {
			s.Current = r
		} else {
			s.Next, s.NextRevision = r, 0
			if r != nil {
				s.NextRevision = createRev
			}
		}
	case strings.HasPrefix(key, GatewaysPrefix):
		id := strings.TrimPrefix(key, GatewaysPrefix)
		if value == nil {
			delete(s.Gateways, id)
			return nil
		}
		var inst Instance
		if err := json.Unmarshal(value, &inst); err != nil {
			return fmt.Errorf("gateway %s: %w", key, err)
		}
		inst.ID = id
		if s.Gateways == nil {
			s.Gateways = map[string]Instance{}
		}
		s.Gateways[id] = inst
	case strings.HasPrefix(key, MembersPrefix):
		id := strings.TrimPrefix(key, MembersPrefix)
		if id == "" {
			// Routing by the members (a cluster without a ring record) would
			// fail: a ring has no empty member id.
			return fmt.Errorf("member key %s: no member id", key)
		}
		if value == nil {
			delete(s.Members, id)
			return nil
		}
		var m Member
		if err := json.Unmarshal(value, &m); err != nil {
			return fmt.Errorf("member %s: %w", key, err)
		}
		m.ID = id
		s.Members[id] = m
	case strings.HasPrefix(key, ServicesPrefix):
		svc, id, ok := strings.Cut(strings.TrimPrefix(key, ServicesPrefix), "/")
		if !ok || svc == "" || id == "" || strings.Contains(id, "/") {
			return fmt.Errorf("instance key %s: want %s<service>/<id>", key, ServicesPrefix)
		}
		if value == nil {
			delete(s.Instances[svc], id)
			if len(s.Instances[svc]) == 0 {
				delete(s.Instances, svc)
			}
			return nil
		}
		var inst Instance
		if err := json.Unmarshal(value, &inst); err != nil {
			return fmt.Errorf("instance %s: %w", key, err)
		}
		if inst.Address == "" {
			return fmt.Errorf("instance %s: no address", key)
		}
		inst.ID = id
		if s.Instances[svc] == nil {
			s.Instances[svc] = map[string]Instance{}
		}
		s.Instances[svc][id] = inst
	}
	return nil
}
