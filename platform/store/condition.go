package store

import "strconv"

type condKind uint8

const (
	condNone condKind = iota
	condAbsent
	condPresent
	condRevision
)

// Condition is a precondition on a key's current state for Put and Delete.
// An expired key counts as absent. The zero value always holds.
type Condition struct {
	kind condKind
	rev  int64
}

// IfAbsent holds when the key does not exist. Delete rejects it.
func IfAbsent() Condition { return Condition{kind: condAbsent} }

// IfPresent holds when the key exists.
func IfPresent() Condition { return Condition{kind: condPresent} }

// IfRevision holds when the key exists and its ModRevision equals rev.
func IfRevision(rev int64) Condition { return Condition{kind: condRevision, rev: rev} }

// String describes the condition, for logs and test failures.
func (c Condition) String() string {
	switch c.kind {
	case condAbsent:
		return "IfAbsent"
	case condPresent:
		return "IfPresent"
	case condRevision:
		return "IfRevision(" + strconv.FormatInt(c.rev, 10) + ")"
	default:
		return "Always"
	}
}

// holds reports whether c holds for the key's current item (it, ok).
func (c Condition) holds(it item, ok bool) bool {
	switch c.kind {
	case condAbsent:
		return !ok
	case condPresent:
		return ok
	case condRevision:
		return ok && it.modRev == c.rev
	default:
		return true
	}
}
