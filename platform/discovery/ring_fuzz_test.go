package discovery

import (
	"encoding/json"
	"slices"
	"testing"
)

// FuzzParseRingRecord: whatever bytes sit under /flux/ring/ (anyone with
// etcd access can write there), a record is either refused or holds an
// epoch of at least 1 and sorted, unique, non-empty member ids, and it
// survives a round trip.
func FuzzParseRingRecord(f *testing.F) {
	f.Add([]byte(`{"epoch": 3, "members": ["node-1", "node-2"]}`))
	f.Add([]byte(`{"epoch": 4, "members": ["a"], "change": {"add": "b"}}`))
	f.Add([]byte(`{"epoch": 0}`))
	f.Add([]byte(`{"epoch": 2, "members": ["b", "a"]}`))
	f.Fuzz(func(t *testing.T, value []byte) {
		r, err := parseRingRecord(value)
		if err != nil {
			return
		}
		if r.Epoch < 1 || !slices.IsSorted(r.Members) || slices.Contains(r.Members, "") || len(slices.Compact(slices.Clone(r.Members))) != len(r.Members) {
			t.Fatalf("accepted %q as %+v", value, r)
		}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		again, err := parseRingRecord(b)
		if err != nil || again.Epoch != r.Epoch || !slices.Equal(again.Members, r.Members) {
			t.Fatalf("%+v round-trips to %+v, %v", r, again, err)
		}
	})
}
