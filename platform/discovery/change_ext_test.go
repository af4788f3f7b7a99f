package discovery_test

import (
	"context"
	"errors"
	"testing"

	"github.com/fluxkv/fluxkv/platform/discovery"
)

// TestChangesAreIdentifiedByMoreThanTheirEpoch: a change begun after an
// aborted one gets the same epoch, but readiness recorded for the first
// (by a target that has not noticed the abort) does not count for the
// second.
func TestChangesAreIdentifiedByMoreThanTheirEpoch(t *testing.T) {
	t.Parallel()
	client := startEtcd(t)
	ctx := context.Background()
	for _, id := range []string{"a", "b", "y", "z"} {
		if _, err := discovery.AddMember(ctx, client, id, false); err != nil {
			t.Fatal(err)
		}
	}
	first, err := discovery.BeginRemove(ctx, client, "y")
	if err != nil {
		t.Fatal(err)
	}
	_, firstID, err := discovery.ReadChange(ctx, client)
	if err != nil {
		t.Fatal(err)
	}
	if err := discovery.AbortChange(ctx, client, first.Epoch); err != nil {
		t.Fatal(err)
	}
	second, err := discovery.BeginRemove(ctx, client, "z")
	if err != nil {
		t.Fatal(err)
	}
	_, secondID, err := discovery.ReadChange(ctx, client)
	if err != nil {
		t.Fatal(err)
	}
	if first.Epoch != second.Epoch || firstID == secondID {
		t.Fatalf("epochs %d and %d, ids %d and %d: want the same epoch and different ids", first.Epoch, second.Epoch, firstID, secondID)
	}
	lease, err := client.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	// a and b still work on the removal of y.
	for _, id := range []string{"a", "b"} {
		if err := discovery.MarkReady(ctx, client, firstID, first.Epoch, id, discovery.Ready{}, lease.ID); !errors.Is(err, discovery.ErrOtherChange) {
			t.Fatalf("MarkReady for the aborted change by %s: %v, want ErrOtherChange", id, err)
		}
	}
	if err := discovery.MarkReady(ctx, client, secondID, second.Epoch, "y", discovery.Ready{}, lease.ID); err != nil {
		t.Fatal(err)
	}
	if ok, err := discovery.Flip(ctx, client, firstID); ok || !errors.Is(err, discovery.ErrOtherChange) {
		t.Fatalf("Flip of the aborted change: %v, %v; want ErrOtherChange", ok, err)
	}
	if ok, err := discovery.Flip(ctx, client, secondID); ok || err != nil {
		t.Fatalf("Flip with a and b not ready for it: %v, %v; want not yet", ok, err)
	}
	for _, id := range []string{"a", "b"} {
		if err := discovery.MarkReady(ctx, client, secondID, second.Epoch, id, discovery.Ready{}, lease.ID); err != nil {
			t.Fatal(err)
		}
	}
	if ok, err := discovery.Flip(ctx, client, secondID); !ok || err != nil {
		t.Fatalf("Flip with every target ready: %v, %v", ok, err)
	}
	cur, err := discovery.ReadCurrent(ctx, client)
	if err != nil || cur.Epoch != second.Epoch || len(cur.Members) != 3 || cur.Members[2] != "y" {
		t.Fatalf("ring after the flip: %+v, %v; want a, b and y at epoch %d", cur, err, second.Epoch)
	}
}
