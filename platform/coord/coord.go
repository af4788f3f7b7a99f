// Package coord holds what nodes and the Go SDK share to split a request
// across the owners of its keys and put the answers back together.
package coord

import (
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
// request into one page of at most limit keys in key order. Cursors name
// the last key returned, not a position in one node's store, so the merged
// page's cursor continues the scan on every node.
func MergeScan(pages []*kvv1.ScanResponse, limit int) *kvv1.ScanResponse {
	var items []*kvv1.KeyValue
	more := false
	for _, page := range pages {
		items = append(items, page.GetItems()...)
		more = more || page.GetNextCursor() != ""
	}
	slices.SortFunc(items, func(a, b *kvv1.KeyValue) int { return strings.Compare(a.GetKey(), b.GetKey()) })
	if len(items) > limit {
		items, more = items[:limit], true
	}
	resp := &kvv1.ScanResponse{Items: items}
	if more && len(items) > 0 {
		resp.NextCursor = store.CursorAfter(items[len(items)-1].GetKey())
	}
	return resp
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
