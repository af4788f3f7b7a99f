package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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

// ErrMembersChanged is returned by MarkData when members joined after the
// revision the caller's view is from.
var ErrMembersChanged = errors.New("the cluster's members changed")

// AddMember records id under /flux/members/ unless it is there already,
// and reports whether it was added. A new member is refused with
// ErrHoldsData once DataKey exists, unless allowData is set. Both checks
// and the write are one transaction, so a join and a first write racing
// each other cannot both succeed.
func AddMember(ctx context.Context, client *clientv3.Client, id string, allowData bool) (bool, error) {
	value, err := json.Marshal(Member{ID: id, JoinedAt: time.Now().UTC()})
	if err != nil {
		return false, err
	}
	key := MemberKey(id)
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)}
	if !allowData {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(DataKey), "=", 0))
	}
	resp, err := client.Txn(ctx).
		If(cmps...).
		Then(clientv3.OpPut(key, string(value))).
		Else(clientv3.OpGet(key, clientv3.WithCountOnly())).
		Commit()
	if err != nil {
		return false, fmt.Errorf("record member %s: %w", id, err)
	}
	if resp.Succeeded {
		return true, nil
	}
	if resp.Responses[0].GetResponseRange().GetCount() > 0 {
		return false, nil // already a member
	}
	return false, ErrHoldsData
}

// RemoveMember deletes member id. It is for undoing a join that did not
// complete; removing a member of a cluster that holds data moves its keys.
func RemoveMember(ctx context.Context, client *clientv3.Client, id string) error {
	if _, err := client.Delete(ctx, MemberKey(id)); err != nil {
		return fmt.Errorf("remove member %s: %w", id, err)
	}
	return nil
}

// MarkData records that the cluster holds data (DataKey), on behalf of
// node. It fails with ErrMembersChanged if a member joined after revision
// rev, the revision of the caller's view of the members, even when the key
// exists already: the caller's ring is then stale and it must not accept the
// write it was about to. Rewriting the key keeps its create revision, which
// is what AddMember checks.
func MarkData(ctx context.Context, client *clientv3.Client, node string, rev int64) error {
	value, err := json.Marshal(map[string]any{"node_id": node, "at": time.Now().UTC()})
	if err != nil {
		return err
	}
	resp, err := client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(MembersPrefix), "<", rev+1).WithPrefix()).
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
