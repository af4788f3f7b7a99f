package store

import (
	"strconv"
	"time"
)

// Op is the kind of a Change.
type Op uint8

// The kinds of change a store reports.
const (
	OpPut    Op = iota + 1 // a key was set
	OpDelete               // a key was deleted by a caller
	OpExpire               // a key was removed because its TTL passed
)

// String returns "PUT", "DELETE", "EXPIRE", or "Op(n)" for other values.
func (o Op) String() string {
	switch o {
	case OpPut:
		return "PUT"
	case OpDelete:
		return "DELETE"
	case OpExpire:
		return "EXPIRE"
	default:
		return "Op(" + strconv.Itoa(int(o)) + ")"
	}
}

// Change is one mutation of the store, as passed to the change hook and
// accepted by Apply.
//
// The hook installed with WithChangeHook is called synchronously for every
// mutation, in strictly increasing revision order without gaps, while the
// key's shard and the store's commit lock are held. It must therefore be
// fast, must not block and must not call back into the store (that
// deadlocks). Value and Previous.Value are shared with the store and must not
// be modified.
type Change struct {
	Op          Op
	Revision    int64
	Key         string
	Value       []byte    // the new value (OpPut only)
	Previous    Entry     // the entry before the change, when HadPrevious
	HadPrevious bool      // always true for OpDelete and OpExpire
	CommitTime  time.Time // the store clock's time of the change
	ExpireTime  time.Time // OpPut: new absolute expiry (zero = none)
}
