package coord_test

import (
	"fmt"
	"testing"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/platform/coord"
	"github.com/fluxkv/fluxkv/platform/store"
)

func page(next bool, keys ...string) *kvv1.ScanResponse {
	p := &kvv1.ScanResponse{}
	for _, k := range keys {
		p.Items = append(p.Items, &kvv1.KeyValue{Key: k})
	}
	if next {
		p.NextCursor = "x"
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
		{[]*kvv1.ScanResponse{page(false, "a", "d"), page(false, "b", "c")}, 10, "[a b c d]", ""},
		{[]*kvv1.ScanResponse{page(false, "a", "d"), page(false, "b", "c")}, 3, "[a b c]", "c"},
		{[]*kvv1.ScanResponse{page(true, "a", "b"), page(false, "c")}, 3, "[a b c]", "c"},
		{[]*kvv1.ScanResponse{page(false), page(false)}, 3, "[]", ""},
	}
	for i, tt := range tests {
		got := coord.MergeScan(tt.pages, tt.limit)
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
