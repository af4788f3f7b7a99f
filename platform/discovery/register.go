package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// DefaultTTL is how long an instance stays registered after its process
// stops renewing its lease.
const DefaultTTL = 5 * time.Second

// Registration keeps one instance registered under a lease, re-registering
// with a new lease whenever the old one is lost (an etcd outage longer than
// the TTL, a partition). Close revokes the lease, so the instance disappears
// at once.
type Registration struct {
	client  *clientv3.Client
	key     string
	value   string
	ttl     time.Duration
	logger  *slog.Logger
	session *concurrency.Session // guarded by mu
	mu      sync.Mutex
	// keepCtx bounds the lease keep-alives, which outlive the calls that
	// start them.
	keepCtx    context.Context
	keepCancel context.CancelFunc

	closeOnce sync.Once
	stopc     chan struct{}
	donec     chan struct{}
}

// RegisterOption configures Register.
type RegisterOption func(*Registration)

// WithTTL sets the lease TTL, rounded up to whole seconds (default 5s).
func WithTTL(d time.Duration) RegisterOption { return func(r *Registration) { r.ttl = d } }

// WithLogger sets where lease losses and re-registrations are logged.
func WithLogger(l *slog.Logger) RegisterOption { return func(r *Registration) { r.logger = l } }

// Register puts inst under /flux/services/<service>/<inst.ID> with a lease
// and keeps it there until Close. It fails if the first registration does
// not succeed before ctx ends.
func Register(ctx context.Context, client *clientv3.Client, service string, inst Instance, opts ...RegisterOption) (*Registration, error) {
	return register(ctx, client, InstanceKey(service, inst.ID), inst, opts...)
}

// RegisterGateway puts a gateway under /flux/gateways/<inst.ID> with a lease,
// like Register: gateways see how many of them are live (to share a global
// rate limit) without being taken for services to proxy.
func RegisterGateway(ctx context.Context, client *clientv3.Client, inst Instance, opts ...RegisterOption) (*Registration, error) {
	return register(ctx, client, GatewaysPrefix+inst.ID, inst, opts...)
}

func register(ctx context.Context, client *clientv3.Client, key string, inst Instance, opts ...RegisterOption) (*Registration, error) {
	value, err := json.Marshal(inst)
	if err != nil {
		return nil, err
	}
	r := &Registration{
		client: client,
		key:    key,
		value:  string(value),
		ttl:    DefaultTTL,
		logger: slog.Default(),
		stopc:  make(chan struct{}),
		donec:  make(chan struct{}),
	}
	for _, opt := range opts {
		opt(r)
	}
	r.keepCtx, r.keepCancel = context.WithCancel(context.Background())
	session, err := r.register(ctx)
	if err != nil {
		r.keepCancel()
		return nil, err
	}
	r.session = session
	go r.keep(session)
	return r, nil
}

// ErrHoldsData is returned by AddMember when the cluster holds data.
var ErrHoldsData = errors.New("the cluster holds data")

// ErrMembersChanged is returned by MarkData when the ring changed after the
// revision the caller's view is from.
var ErrMembersChanged = errors.New("the cluster's members changed")

// ErrRingBusy is returned by AddMember, RemoveMember and MigrateRing when
// other changes to the ring kept committing first; the caller may try
// again.
var ErrRingBusy = errors.New("the ring kept changing under this change")

// ringAttempts bounds how often a change to the ring is retried after
// another one committed first. Changes are rare (a node joining or leaving),
// so running out means something rewrites the ring in a loop.
const ringAttempts = 16

// ringState is RingCurrentKey as read at one etcd revision, for a
// transaction that changes it only if it is still the same.
type ringState struct {
	record RingRecord // Epoch 0 and the /flux/members/ ids while the key is absent
	modRev int64      // of RingCurrentKey; 0 while it is absent
	rev    int64      // the etcd revision it was read at
}

// readRing reads RingCurrentKey and the member ids at one revision. A
// record that does not parse is an error: a change must not be built on a
// ring nobody routes by.
func readRing(ctx context.Context, client *clientv3.Client) (ringState, error) {
	resp, err := client.Txn(ctx).Then(
		clientv3.OpGet(RingCurrentKey),
		clientv3.OpGet(MembersPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly()),
	).Commit()
	if err != nil {
		return ringState{}, fmt.Errorf("read the ring: %w", err)
	}
	st := ringState{rev: resp.Header.Revision}
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 1 {
		rec, err := parseRingRecord(kvs[0].Value)
		if err != nil {
			return ringState{}, fmt.Errorf("ring record %s: %w", RingCurrentKey, err)
		}
		st.record, st.modRev = *rec, kvs[0].ModRevision
		return st, nil
	}
	st.record.Members = []string{}
	for _, kv := range resp.Responses[1].GetResponseRange().GetKvs() {
		st.record.Members = append(st.record.Members, strings.TrimPrefix(string(kv.Key), MembersPrefix))
	}
	slices.Sort(st.record.Members)
	return st, nil
}

// unchanged holds while RingCurrentKey is as st read it (absent included:
// an absent key compares as revision 0).
func (st ringState) unchanged() clientv3.Cmp {
	return clientv3.Compare(clientv3.ModRevision(RingCurrentKey), "=", st.modRev)
}

// put writes the ring that follows st with members.
func (st ringState) put(members []string) (clientv3.Op, error) {
	value, err := json.Marshal(RingRecord{Epoch: st.record.Epoch + 1, Members: members})
	if err != nil {
		return clientv3.Op{}, err
	}
	return clientv3.OpPut(RingCurrentKey, string(value)), nil
}

// AddMember records id under /flux/members/ unless it is there already,
// and reports whether it was added. A new member is refused with
// ErrHoldsData once DataKey exists, unless allowData is set. The checks,
// the member and the next ring (RingCurrentKey with id added and the epoch
// one more) are one transaction, so a join and a first write racing each
// other cannot both succeed, and joins racing each other each build on the
// ring the one before left: one commits, the others read the ring again and
// retry, up to a bound (then ErrRingBusy).
func AddMember(ctx context.Context, client *clientv3.Client, id string, allowData bool) (bool, error) {
	value, err := json.Marshal(Member{ID: id, JoinedAt: time.Now().UTC()})
	if err != nil {
		return false, err
	}
	key := MemberKey(id)
	for range ringAttempts {
		st, err := readRing(ctx, client)
		if err != nil {
			return false, fmt.Errorf("record member %s: %w", id, err)
		}
		cmps := []clientv3.Cmp{
			clientv3.Compare(clientv3.CreateRevision(key), "=", 0), st.unchanged(),
			clientv3.Compare(clientv3.CreateRevision(RingNextKey), "=", 0),
		}
		if !allowData {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(DataKey), "=", 0))
		}
		ops := []clientv3.Op{clientv3.OpPut(key, string(value))}
		// An id already on the ring (its member key deleted by hand) gets its
		// key back; the ring, and so the epoch, stays.
		if i, found := slices.BinarySearch(st.record.Members, id); !found {
			op, err := st.put(slices.Insert(slices.Clone(st.record.Members), i, id))
			if err != nil {
				return false, err
			}
			ops = append(ops, op)
		}
		resp, err := client.Txn(ctx).
			If(cmps...).
			Then(ops...).
			Else(clientv3.OpGet(key, clientv3.WithCountOnly()), clientv3.OpGet(DataKey, clientv3.WithCountOnly()), clientv3.OpGet(RingNextKey)).
			Commit()
		if err != nil {
			return false, fmt.Errorf("record member %s: %w", id, err)
		}
		switch {
		case resp.Succeeded:
			return true, nil
		case resp.Responses[0].GetResponseRange().GetCount() > 0:
			return false, nil // already a member
		case !allowData && resp.Responses[1].GetResponseRange().GetCount() > 0:
			return false, ErrHoldsData
		case len(resp.Responses[2].GetResponseRange().GetKvs()) == 1:
			next, err := parseRingRecord(resp.Responses[2].GetResponseRange().GetKvs()[0].Value)
			if err != nil {
				return false, fmt.Errorf("ring record %s: %w", RingNextKey, err)
			}
			return false, &ChangeInProgressError{Next: *next}
		}
		// The ring changed since it was read: read it again.
	}
	return false, fmt.Errorf("record member %s: %w", id, ErrRingBusy)
}

// RemoveMember deletes member id and writes the ring without it (the epoch
// one more) in one transaction, retried like AddMember's. It is for undoing
// a join that did not complete; removing a member of a cluster that holds
// data moves its keys.
func RemoveMember(ctx context.Context, client *clientv3.Client, id string) error {
	for range ringAttempts {
		st, err := readRing(ctx, client)
		if err != nil {
			return fmt.Errorf("remove member %s: %w", id, err)
		}
		ops := []clientv3.Op{clientv3.OpDelete(MemberKey(id))}
		if i, found := slices.BinarySearch(st.record.Members, id); found {
			op, err := st.put(slices.Delete(slices.Clone(st.record.Members), i, i+1))
			if err != nil {
				return err
			}
			ops = append(ops, op)
		}
		// Not during a change: its next ring was built on this one.
		resp, err := client.Txn(ctx).If(st.unchanged(), clientv3.Compare(clientv3.CreateRevision(RingNextKey), "=", 0)).Then(ops...).Commit()
		if err != nil {
			return fmt.Errorf("remove member %s: %w", id, err)
		}
		if resp.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("remove member %s: %w", id, ErrRingBusy)
}

// MigrateRing writes RingCurrentKey for a cluster created before it
// existed: epoch 1 over the ids under /flux/members/. It does nothing, and
// reports false, when the key exists or there are no members (the first
// AddMember writes it). The transaction requires the key to be absent, so
// nodes starting at once agree on one record; it also requires that no
// member was written since the ids were read, which catches a join by a
// node that predates ring records (such a node's removals it cannot see:
// upgrade all nodes before removing any).
func MigrateRing(ctx context.Context, client *clientv3.Client) (bool, error) {
	for range ringAttempts {
		st, err := readRing(ctx, client)
		if err != nil {
			return false, fmt.Errorf("migrate to ring records: %w", err)
		}
		if st.modRev != 0 || len(st.record.Members) == 0 {
			return false, nil
		}
		op, err := st.put(st.record.Members)
		if err != nil {
			return false, err
		}
		resp, err := client.Txn(ctx).
			If(st.unchanged(), clientv3.Compare(clientv3.ModRevision(MembersPrefix), "<", st.rev+1).WithPrefix()).
			Then(op).
			Commit()
		if err != nil {
			return false, fmt.Errorf("migrate to ring records: %w", err)
		}
		if resp.Succeeded {
			return true, nil
		}
	}
	return false, fmt.Errorf("migrate to ring records: %w", ErrRingBusy)
}

// MarkData records that the cluster holds data (DataKey), on behalf of
// node. It fails with ErrMembersChanged if the ring changed after revision
// rev, the revision of the caller's view of it, even when the key exists
// already: the caller's ring is then stale and it must not accept the write
// it was about to. Rewriting the key keeps its create revision, which is
// what AddMember checks.
//
// Why a join and a first write cannot both succeed: every ring change by
// AddMember rewrites RingCurrentKey in the transaction that checks DataKey
// is absent. If the join commits first, RingCurrentKey's mod revision is
// past rev and this transaction fails; if this one commits first, DataKey
// exists and the join is refused. The compare over /flux/members/ covers a
// cluster without RingCurrentKey yet, whose ring is those ids (and joins by
// nodes that predate ring records). A migration rewrites RingCurrentKey
// with the same members, which fails a view from before it once: the
// caller refreshes its view and retries, as after any change.
func MarkData(ctx context.Context, client *clientv3.Client, node string, rev int64) error {
	value, err := json.Marshal(map[string]any{"node_id": node, "at": time.Now().UTC()})
	if err != nil {
		return err
	}
	resp, err := client.Txn(ctx).
		If(
			clientv3.Compare(clientv3.ModRevision(RingCurrentKey), "<", rev+1),
			clientv3.Compare(clientv3.CreateRevision(MembersPrefix), "<", rev+1).WithPrefix(),
		).
		Then(clientv3.OpPut(DataKey, string(value))).
		Commit()
	if err != nil {
		return fmt.Errorf("record in etcd that the cluster holds data: %w", err)
	}
	if !resp.Succeeded {
		return ErrMembersChanged
	}
	return nil
}

// register grants a lease within ctx, keeps it alive until Close, and puts
// the instance under it.
func (r *Registration) register(ctx context.Context) (*concurrency.Session, error) {
	secs := int64((r.ttl + time.Second - 1) / time.Second)
	lease, err := r.client.Grant(ctx, secs)
	if err != nil {
		return nil, fmt.Errorf("etcd lease: %w", err)
	}
	session, err := concurrency.NewSession(r.client, concurrency.WithLease(lease.ID), concurrency.WithContext(r.keepCtx))
	if err != nil {
		return nil, fmt.Errorf("etcd session: %w", err)
	}
	if _, err := r.client.Put(ctx, r.key, r.value, clientv3.WithLease(session.Lease())); err != nil {
		session.Orphan()
		return nil, fmt.Errorf("register %s: %w", r.key, err)
	}
	return session, nil
}

// keep waits for the session to end and registers again, backing off while
// etcd is unreachable.
func (r *Registration) keep(session *concurrency.Session) {
	defer close(r.donec)
	for {
		select {
		case <-r.stopc:
			return
		case <-session.Done():
		}
		r.logger.Warn("etcd lease lost; re-registering", slog.String("key", r.key))
		backoff := 250 * time.Millisecond
		for {
			ctx, cancel := context.WithTimeout(r.keepCtx, 5*time.Second)
			next, err := r.register(ctx)
			cancel()
			if err == nil {
				session = next
				r.mu.Lock()
				r.session = next
				r.mu.Unlock()
				r.logger.Info("re-registered in etcd", slog.String("key", r.key))
				break
			}
			select {
			case <-r.stopc:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
		}
	}
}

// Close stops re-registering and revokes the lease, removing the instance
// at once. If etcd does not answer before ctx ends, the lease is left to
// expire after its TTL. It is idempotent; later calls return nil.
func (r *Registration) Close(ctx context.Context) error {
	var err error
	r.closeOnce.Do(func() {
		close(r.stopc)
		// Cancelling the keep-alives' context first also ends a
		// re-registration in progress, so Close does not wait for it; and a
		// revoke that cannot reach etcd does not leave them renewing.
		r.keepCancel()
		<-r.donec
		r.mu.Lock()
		session := r.session
		r.mu.Unlock()
		session.Orphan()
		if _, rerr := r.client.Revoke(ctx, session.Lease()); rerr != nil {
			err = fmt.Errorf("revoke lease of %s (it expires after its TTL): %w", r.key, rerr)
		}
	})
	return err
}
