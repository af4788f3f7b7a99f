// Package coord holds what nodes and the Go SDK share to split a request
// across the owners of its keys and put the answers back together.
package coord

import (
	"fmt"
	"slices"
	"strings"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/platform/store"
)

// ForwardedHeader marks a request sent to a node on another party's behalf
// (a coordinating node or the SDK): the node serves it from its own store
// and never forwards or coordinates it again, so a request crosses at most
// one hop. Its value names the sender.
const ForwardedHeader = "Flux-Forwarded-By"

// MergeScan merges the pages that every member returned for the same Scan
// request into one page of at most limit keys in key order. Each node
// serves only the keys it owns, so the pages are disjoint unless two nodes'
// rings disagreed mid-change; a key that still appears twice is returned
// once.
//
// A page with a next cursor has more keys after that cursor's key, which
// other pages' later keys may sort before, so the merged page stops at the
// smallest such key: every key up to it has been seen on every node.
// Cursors name the key to resume after, not a position in one node's
// store, so the merged page's cursor continues the scan on every node.
func MergeScan(pages []*kvv1.ScanResponse, limit int) (*kvv1.ScanResponse, error) {
	var (
		bound   string
		bounded bool
	)
	for _, page := range pages {
		if page.GetNextCursor() == "" {
			continue
		}
		key, err := store.CursorKey(page.GetNextCursor())
		if err != nil {
			return nil, fmt.Errorf("a node answered an invalid cursor: %w", err)
		}
		if !bounded || key < bound {
			bound, bounded = key, true
		}
	}
	var items []*kvv1.KeyValue
	for _, page := range pages {
		for _, item := range page.GetItems() {
			if !bounded || item.GetKey() <= bound {
				items = append(items, item)
			}
		}
	}
	slices.SortStableFunc(items, func(a, b *kvv1.KeyValue) int { return strings.Compare(a.GetKey(), b.GetKey()) })
	items = slices.CompactFunc(items, func(a, b *kvv1.KeyValue) bool { return a.GetKey() == b.GetKey() })
	resp := &kvv1.ScanResponse{Items: items}
	switch {
	case len(items) > limit:
		resp.Items = items[:limit]
		resp.NextCursor = store.CursorAfter(items[limit-1].GetKey())
	case bounded:
		resp.NextCursor = store.CursorAfter(bound)
	}
	return resp, nil
}

// OperationKey is the key a Batch or Pipeline operation touches, which
// decides its owner; "" for an operation with nothing set.
func OperationKey(op *kvv1.Operation) string {
	switch o := op.GetOp().(type) {
	case *kvv1.Operation_Get:
		return o.Get.GetKey()
	case *kvv1.Operation_Put:
		return o.Put.GetKey()
	case *kvv1.Operation_Delete:
		return o.Delete.GetKey()
	}
	return ""
}
