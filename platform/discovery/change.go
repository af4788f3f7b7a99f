package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// RingReadyPrefix holds, while a change is in progress, one key per target
// of the change that holds every key moving to it durably:
// <prefix><epoch>/<id>, under the target's lease. The change flips when
// every target's key exists.
const RingReadyPrefix = Prefix + "ring/ready/"

// ReadyKey is the key target writes when it is ready for the ring of epoch.
func ReadyKey(epoch int64, target string) string {
	return RingReadyPrefix + strconv.FormatInt(epoch, 10) + "/" + target
}

// ChangeInProgressError is returned when a membership change is asked for
// while another one is in progress.
type ChangeInProgressError struct {
	Next RingRecord
}

func (e *ChangeInProgressError) Error() string {
	return fmt.Sprintf("another membership change is in progress (%s, to epoch %d); wait for it to finish or abort it with `flux cluster abort-change --epoch %d`",
		e.Next.Change.describe(), e.Next.Epoch, e.Next.Epoch)
}

func (c *RingChange) describe() string {
	switch {
	case c == nil:
		return "an unknown change"
	case c.Add != "":
		return "adding " + c.Add
	default:
		return "removing " + c.Remove
	}
}

// Errors of BeginRemove and AbortChange.
var (
	ErrNotMember    = errors.New("not a member of the cluster's ring")
	ErrLastMember   = errors.New("the last member of a cluster cannot be removed")
	ErrNoChange     = errors.New("no membership change is in progress")
	ErrOtherChange  = errors.New("the membership change in progress is not the one named")
	ErrChangeMissed = errors.New("the ring changed while the change was being recorded")
)

// Targets returns the members that receive keys when the ring changes from
// current to next: the member joining, or every member that stays when one
// leaves.
func Targets(current, next *RingRecord) []string {
	if next.Change != nil && next.Change.Add != "" {
		return []string{next.Change.Add}
	}
	return slices.Clone(next.Members)
}

// Sources returns the members target copies keys from when the ring
// changes from current to next: every member of current for a join, the
// member leaving for a removal.
func Sources(current, next *RingRecord, target string) []string {
	if next.Change != nil && next.Change.Remove != "" {
		return []string{next.Change.Remove}
	}
	return slices.DeleteFunc(slices.Clone(current.Members), func(id string) bool { return id == target })
}

// changeState is RingCurrentKey and RingNextKey read at one revision.
type changeState struct {
	ring       ringState
	next       *RingRecord // nil when absent
	nextModRev int64
	nextID     int64 // RingNextKey's create revision: the change's identity
}

func readChange(ctx context.Context, client *clientv3.Client) (changeState, error) {
	st, err := readRing(ctx, client)
	if err != nil {
		return changeState{}, err
	}
	resp, err := client.Get(ctx, RingNextKey, clientv3.WithRev(st.rev))
	if err != nil {
		return changeState{}, fmt.Errorf("read the ring change: %w", err)
	}
	cs := changeState{ring: st}
	if len(resp.Kvs) == 1 {
		next, err := parseRingRecord(resp.Kvs[0].Value)
		if err != nil {
			return changeState{}, fmt.Errorf("ring record %s: %w", RingNextKey, err)
		}
		cs.next, cs.nextModRev, cs.nextID = next, resp.Kvs[0].ModRevision, resp.Kvs[0].CreateRevision
	}
	return cs, nil
}

// begin records next as the change in progress if the ring is still as cs
// read it and no change is in progress; extra runs in the same transaction.
func begin(ctx context.Context, client *clientv3.Client, cs changeState, next RingRecord) (bool, error) {
	value, err := json.Marshal(next)
	if err != nil {
		return false, err
	}
	resp, err := client.Txn(ctx).
		If(cs.ring.unchanged(), clientv3.Compare(clientv3.CreateRevision(RingNextKey), "=", 0)).
		Then(clientv3.OpPut(RingNextKey, string(value))).
		Commit()
	if err != nil {
		return false, fmt.Errorf("record the ring change: %w", err)
	}
	return resp.Succeeded, nil
}

// BeginAdd records, as the change in progress, the ring with id added: the
// new member copies its keys from the others and the ring flips to it once
// it holds them (see Flip). It returns the next ring, the same one when the
// change adding id is already in progress (a restarted joiner resumes it).
// A *ChangeInProgressError names another change in progress; a cluster
// without a ring record must be migrated first (MigrateRing).
func BeginAdd(ctx context.Context, client *clientv3.Client, id string) (*RingRecord, error) {
	for range ringAttempts {
		cs, err := readChange(ctx, client)
		if err != nil {
			return nil, err
		}
		if cs.next != nil {
			if cs.next.Change != nil && cs.next.Change.Add == id {
				return cs.next, nil
			}
			return nil, &ChangeInProgressError{Next: *cs.next}
		}
		if cs.ring.modRev == 0 {
			return nil, errors.New("the cluster has no ring record yet; start a node of this version first")
		}
		i, found := slices.BinarySearch(cs.ring.record.Members, id)
		if found {
			return nil, fmt.Errorf("node %s is on the ring already", id)
		}
		next := RingRecord{
			Epoch:   cs.ring.record.Epoch + 1,
			Members: slices.Insert(slices.Clone(cs.ring.record.Members), i, id),
			Change:  &RingChange{Add: id},
		}
		ok, err := begin(ctx, client, cs, next)
		if err != nil {
			return nil, err
		}
		if ok {
			return &next, nil
		}
	}
	return nil, fmt.Errorf("add member %s: %w", id, ErrRingBusy)
}

// BeginRemove records, as the change in progress, the ring without id: the
// other members copy its keys and the ring flips once they hold them. It
// returns the next ring, the same one when removing id is in progress
// already. Errors: ErrNotMember, ErrLastMember, *ChangeInProgressError.
func BeginRemove(ctx context.Context, client *clientv3.Client, id string) (*RingRecord, error) {
	for range ringAttempts {
		cs, err := readChange(ctx, client)
		if err != nil {
			return nil, err
		}
		if cs.next != nil {
			if cs.next.Change != nil && cs.next.Change.Remove == id {
				return cs.next, nil
			}
			return nil, &ChangeInProgressError{Next: *cs.next}
		}
		if cs.ring.modRev == 0 {
			return nil, errors.New("the cluster has no ring record yet; start a node of this version first")
		}
		i, found := slices.BinarySearch(cs.ring.record.Members, id)
		if !found {
			return nil, fmt.Errorf("node %s: %w (members: %s)", id, ErrNotMember, strings.Join(cs.ring.record.Members, ", "))
		}
		if len(cs.ring.record.Members) == 1 {
			return nil, fmt.Errorf("node %s: %w", id, ErrLastMember)
		}
		next := RingRecord{
			Epoch:   cs.ring.record.Epoch + 1,
			Members: slices.Delete(slices.Clone(cs.ring.record.Members), i, i+1),
			Change:  &RingChange{Remove: id},
		}
		ok, err := begin(ctx, client, cs, next)
		if err != nil {
			return nil, err
		}
		if ok {
			return &next, nil
		}
	}
	return nil, fmt.Errorf("remove member %s: %w", id, ErrRingBusy)
}

// Ready is the value of a target's ready key: the change it is ready for
// and the incarnation of each source it froze.
type Ready struct {
	// Change is the create revision of the RingNextKey it is ready for.
	Change int64 `json:"change"`
	// Sources maps the instance key of each source it froze to that key's
	// mod revision when it froze it: a source that restarted since has
	// registered again, lost its freeze, and may have taken writes the
	// target does not hold, so Flip requires every one unchanged.
	Sources map[string]int64 `json:"sources"`
}

// Incarnation returns the mod revision of an instance key (see Ready),
// read from etcd; an error if the instance is not registered.
func Incarnation(ctx context.Context, client *clientv3.Client, instanceKey string) (int64, error) {
	resp, err := client.Get(ctx, instanceKey)
	if err != nil {
		return 0, err
	}
	if len(resp.Kvs) == 0 {
		return 0, fmt.Errorf("%s is not registered", instanceKey)
	}
	return resp.Kvs[0].ModRevision, nil
}

// ClearReady deletes target's ready key for the change whose RingNextKey
// has create revision change, and reports whether that change is still in
// progress. A target calls it before it starts (again) to copy: a ready key
// left by an earlier attempt must not let the change flip while the target
// copies anew.
func ClearReady(ctx context.Context, client *clientv3.Client, change, epoch int64, target string) (bool, error) {
	resp, err := client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(RingNextKey), "=", change)).
		Then(clientv3.OpDelete(ReadyKey(epoch, target))).
		Commit()
	if err != nil {
		return false, fmt.Errorf("clear the ready key of %s: %w", target, err)
	}
	return resp.Succeeded, nil
}

// MarkReady records that target holds every key moving to it for the
// change whose RingNextKey has create revision change (the ring of epoch),
// having frozen the sources in ready, under lease: the record goes with the
// lease, so a target that dies no longer counts as ready. It fails with
// ErrOtherChange when that change is no longer in progress.
func MarkReady(ctx context.Context, client *clientv3.Client, change, epoch int64, target string, ready Ready, lease clientv3.LeaseID) error {
	ready.Change = change
	value, err := json.Marshal(ready)
	if err != nil {
		return err
	}
	resp, err := client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(RingNextKey), "=", change)).
		Then(clientv3.OpPut(ReadyKey(epoch, target), string(value), clientv3.WithLease(lease))).
		Commit()
	if err != nil {
		return fmt.Errorf("record that %s is ready: %w", target, err)
	}
	if !resp.Succeeded {
		return ErrOtherChange
	}
	return nil
}

// Flip ends the change whose RingNextKey has create revision change once
// every target is ready: in one transaction that checks both ring records,
// every target's ready key for this change, and that no source a target
// froze has restarted since, RingCurrentKey becomes the next ring,
// RingNextKey and the ready keys go, and the member joining is recorded (or
// the one leaving deleted). It reports false, with no error, while a target
// is not ready; ErrOtherChange when the change is no longer in progress
// (flipped by another target, or aborted).
func Flip(ctx context.Context, client *clientv3.Client, change int64) (bool, error) {
	cs, err := readChange(ctx, client)
	if err != nil {
		return false, err
	}
	if cs.next == nil || cs.nextID != change {
		return false, ErrOtherChange
	}
	epoch := cs.next.Epoch
	cmps := []clientv3.Cmp{
		cs.ring.unchanged(),
		clientv3.Compare(clientv3.ModRevision(RingNextKey), "=", cs.nextModRev),
	}
	for _, t := range Targets(&cs.ring.record, cs.next) {
		resp, err := client.Get(ctx, ReadyKey(epoch, t), clientv3.WithRev(cs.ring.rev))
		if err != nil {
			return false, fmt.Errorf("read the ready key of %s: %w", t, err)
		}
		if len(resp.Kvs) == 0 {
			return false, nil
		}
		var ready Ready
		if err := json.Unmarshal(resp.Kvs[0].Value, &ready); err != nil || ready.Change != change {
			return false, nil // left by an earlier change, or not ours
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(ReadyKey(epoch, t)), "=", resp.Kvs[0].ModRevision))
		for key, rev := range ready.Sources {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", rev))
		}
	}
	value, err := json.Marshal(RingRecord{Epoch: cs.next.Epoch, Members: cs.next.Members})
	if err != nil {
		return false, err
	}
	ops := []clientv3.Op{
		clientv3.OpPut(RingCurrentKey, string(value)),
		clientv3.OpDelete(RingNextKey),
		clientv3.OpDelete(RingReadyPrefix, clientv3.WithPrefix()),
	}
	switch ch := cs.next.Change; {
	case ch != nil && ch.Add != "":
		member, err := json.Marshal(Member{ID: ch.Add, JoinedAt: time.Now().UTC()})
		if err != nil {
			return false, err
		}
		ops = append(ops, clientv3.OpPut(MemberKey(ch.Add), string(member)))
	case ch != nil && ch.Remove != "":
		ops = append(ops, clientv3.OpDelete(MemberKey(ch.Remove)))
	}
	resp, err := client.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return false, fmt.Errorf("flip the ring to epoch %d: %w", epoch, err)
	}
	return resp.Succeeded, nil
}

// AbortChange abandons the change to the ring of epoch: RingNextKey and the
// ready keys go, and the ring stays. Sources release their freezes and
// targets drop their copies when they see it. Errors: ErrNoChange,
// ErrOtherChange.
func AbortChange(ctx context.Context, client *clientv3.Client, epoch int64) error {
	cs, err := readChange(ctx, client)
	if err != nil {
		return err
	}
	switch {
	case cs.next == nil:
		return ErrNoChange
	case cs.next.Epoch != epoch:
		return fmt.Errorf("%w: epoch %d is in progress (%s)", ErrOtherChange, cs.next.Epoch, cs.next.Change.describe())
	}
	resp, err := client.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(RingNextKey), "=", cs.nextModRev)).
		Then(clientv3.OpDelete(RingNextKey), clientv3.OpDelete(RingReadyPrefix, clientv3.WithPrefix())).
		Commit()
	if err != nil {
		return fmt.Errorf("abort the ring change: %w", err)
	}
	if !resp.Succeeded {
		return ErrChangeMissed
	}
	return nil
}

// ReadRings reads RingCurrentKey and RingNextKey from etcd at one revision
// (a linearizable read): nil for either that is absent.
func ReadRings(ctx context.Context, client *clientv3.Client) (current, next *RingRecord, err error) {
	cs, err := readChange(ctx, client)
	if err != nil {
		return nil, nil, err
	}
	if cs.ring.modRev != 0 {
		current = &cs.ring.record
	}
	return current, cs.next, nil
}

// ReadCurrent reads RingCurrentKey from etcd (a linearizable read): nil
// when the cluster has none.
func ReadCurrent(ctx context.Context, client *clientv3.Client) (*RingRecord, error) {
	current, _, err := ReadRings(ctx, client)
	return current, err
}

// ReadChange reads RingNextKey from etcd with its create revision, which
// identifies the change (see Snapshot.NextRevision): nil and 0 when no
// change is in progress.
func ReadChange(ctx context.Context, client *clientv3.Client) (*RingRecord, int64, error) {
	cs, err := readChange(ctx, client)
	if err != nil {
		return nil, 0, err
	}
	return cs.next, cs.nextID, nil
}

// ReadNext reads RingNextKey from etcd: nil when no change is in progress.
func ReadNext(ctx context.Context, client *clientv3.Client) (*RingRecord, error) {
	_, next, err := ReadRings(ctx, client)
	return next, err
}
