package coord_test

import (
	"fmt"
	"testing"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/platform/coord"
	"github.com/fluxkv/fluxkv/platform/store"
)

// page is one node's answer: keys, and more after the key scannedTo ("":
// the node has no more).
func page(scannedTo string, keys ...string) *kvv1.ScanResponse {
	p := &kvv1.ScanResponse{}
	for _, k := range keys {
		p.Items = append(p.Items, &kvv1.KeyValue{Key: k})
	}
	if scannedTo != "" {
		p.NextCursor = store.CursorAfter(scannedTo)
	}
	return p
}

func TestMergeScan(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pages    []*kvv1.ScanResponse
		limit    int
		want     string
		wantNext string // key the cursor resumes after; "" for none
	}{
		{[]*kvv1.ScanResponse{page("", "a", "d"), page("", "b", "c")}, 10, "[a b c d]", ""},
		{[]*kvv1.ScanResponse{page("", "a", "d"), page("", "b", "c")}, 3, "[a b c]", "c"},
		// The first node may hold "bb": the page must stop at its "b".
		{[]*kvv1.ScanResponse{page("b", "a", "b"), page("", "c")}, 3, "[a b]", "b"},
		{[]*kvv1.ScanResponse{page("b", "a", "b"), page("c", "bb", "c")}, 10, "[a b]", "b"},
		{[]*kvv1.ScanResponse{page(""), page("")}, 3, "[]", ""},
		// A key two nodes returned while their rings disagreed, once.
		{[]*kvv1.ScanResponse{page("", "a", "b"), page("", "b")}, 10, "[a b]", ""},
		// A node that filtered out every key it scanned (it owns none of
		// them) still bounds the page.
		{[]*kvv1.ScanResponse{page("m"), page("", "a", "z")}, 10, "[a]", "m"},
	}
	for i, tt := range tests {
		got, err := coord.MergeScan(tt.pages, tt.limit)
		if err != nil {
			t.Fatalf("#%d: %v", i, err)
		}
		var keys []string
		for _, it := range got.GetItems() {
			keys = append(keys, it.GetKey())
		}
		if fmt.Sprint(keys) != tt.want && !(tt.want == "[]" && len(keys) == 0) {
			t.Errorf("#%d: got %v, want %s", i, keys, tt.want)
		}
		wantCursor := ""
		if tt.wantNext != "" {
			wantCursor = store.CursorAfter(tt.wantNext)
		}
		if got.GetNextCursor() != wantCursor {
			t.Errorf("#%d: cursor %q, want %q", i, got.GetNextCursor(), wantCursor)
		}
	}
}

func TestMergeScanRejectsBadCursor(t *testing.T) {
	t.Parallel()
	if _, err := coord.MergeScan([]*kvv1.ScanResponse{{NextCursor: "not a cursor"}}, 10); err == nil {
		t.Fatal("got nil error for a page with an invalid cursor")
	}
}
