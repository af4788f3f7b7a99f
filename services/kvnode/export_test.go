package kvnode

import (
	"time"

	"github.com/fluxkv/fluxkv/platform/store"
)

// Applier exposes the target side of a copy to the black-box tests, which
// drive it with a real Copy stream.
type Applier = applier

// NewApplier returns an applier writing to st, whose clock is now.
func NewApplier(st *store.Store, now func() time.Time) *Applier { return newApplier(st, now) }

// Run applies stream until it ends; see applier.run.
func (a *applier) Run(stream copyStream) (int64, error) { return a.run(stream) }

// Revision is the source revision the copy has been applied through.
func (a *applier) Revision() int64 { return a.revision() }

// RingEpoch is the epoch of the ring the node routes by: 0 before it joined
// a cluster, or while the cluster has no ring record.
func (n *Node) RingEpoch() int64 {
	c := n.router.cluster.Load()
	if c == nil {
		return 0
	}
	return c.view.Load().epoch
}
