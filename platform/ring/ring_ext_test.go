package ring_test

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/fluxkv/fluxkv/platform/ring"
)

func randomKeys(n int) []string {
	r := rand.New(rand.NewPCG(42, 1))
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("user/%016x", r.Uint64())
	}
	return keys
}

// TestBalance: with 3 members and the default virtual nodes, the most
// loaded member owns at most 1.1x the mean of 1M random keys.
func TestBalance(t *testing.T) {
	t.Parallel()
	r, err := ring.New([]string{"node-1", "node-2", "node-3"})
	if err != nil {
		t.Fatal(err)
	}
	keys := randomKeys(1_000_000)
	counts := map[string]int{}
	for _, k := range keys {
		counts[r.Owner(k)]++
	}
	mean := float64(len(keys)) / 3
	for m, n := range counts {
		if ratio := float64(n) / mean; ratio > 1.1 {
			t.Errorf("%s owns %d keys, %.3fx the mean", m, n, ratio)
		}
	}
	t.Logf("keys per member: %v", counts)
}

// TestAddingAMemberMovesAQuarterOntoIt: a 4th member takes close to 1/4 of
// the keys, and every key that moves, moves onto it.
func TestAddingAMemberMovesAQuarterOntoIt(t *testing.T) {
	t.Parallel()
	three, _ := ring.New([]string{"node-1", "node-2", "node-3"})
	four, _ := ring.New([]string{"node-1", "node-2", "node-3", "node-4"})
	keys := randomKeys(200_000)
	moved := 0
	for _, k := range keys {
		before, after := three.Owner(k), four.Owner(k)
		if before == after {
			continue
		}
		moved++
		if after != "node-4" {
			t.Fatalf("key %s moved from %s to %s, not to the new member", k, before, after)
		}
	}
	if frac := float64(moved) / float64(len(keys)); frac < 0.22 || frac > 0.28 {
		t.Errorf("%.3f of the keys moved, want close to 0.25", frac)
	}
}

func TestOwnerIsIndependentOfMemberOrder(t *testing.T) {
	t.Parallel()
	a, _ := ring.New([]string{"c", "a", "b"})
	b, _ := ring.New([]string{"a", "b", "c"})
	for _, k := range randomKeys(10_000) {
		if a.Owner(k) != b.Owner(k) {
			t.Fatalf("owner of %s depends on member order", k)
		}
	}
}

func TestNewRejectsBadMembers(t *testing.T) {
	t.Parallel()
	tests := [][]string{{"a", "a"}, {""}}
	for i, members := range tests {
		if _, err := ring.New(members); err == nil {
			t.Errorf("#%d: New(%q) succeeded", i, members)
		}
	}
	if _, err := ring.New([]string{"a"}, ring.WithVirtualNodes(0)); err == nil {
		t.Error("New accepted 0 virtual nodes")
	}
	empty, err := ring.New(nil)
	if err != nil || empty.Owner("k") != "" {
		t.Errorf("empty ring: %v, owner %q", err, empty.Owner("k"))
	}
}
