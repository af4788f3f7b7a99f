package coord

import (
	"errors"
	"net"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
)

// ErrorDomain is the domain of the google.rpc.ErrorInfo details Flux-KV
// attaches to routing errors.
const ErrorDomain = "fluxkv.dev"

// Reasons a node refuses a request before running it. Each travels as the
// reason of an ErrorInfo detail, so a client knows the request had no
// effect and may safely send it again, even a write.
const (
	// ReasonNotOwner: the request reached a node whose ring says another
	// node owns the key (membership is changing). The ErrorInfo's metadata
	// may name the "owner" and the ring's "epoch".
	ReasonNotOwner = "NOT_OWNER"
	// ReasonOwnerNotLive: the key's owner is a member that is not live.
	ReasonOwnerNotLive = "OWNER_NOT_LIVE"
	// ReasonOwnerUnreachable: the key's owner is live in etcd but the
	// connection to it could not be opened.
	ReasonOwnerUnreachable = "OWNER_UNREACHABLE"
	// ReasonNotReady: the node cannot take the write yet: etcd could not
	// record that the cluster holds data, or the members changed under it.
	ReasonNotReady = "NOT_READY"
	// ReasonMoving: the key is moving to another node as the ring changes,
	// and its owner takes no writes to it until the move is done (a pause of
	// about an etcd transaction). Retry after a short wait.
	ReasonMoving = "MOVING"
)

// NotExecuted returns an Unavailable error carrying an ErrorInfo with reason
// and the node's id in its metadata.
func NotExecuted(reason, node string, err error) *connect.Error {
	cerr := connect.NewError(connect.CodeUnavailable, err)
	if d, derr := connect.NewErrorDetail(&errdetails.ErrorInfo{
		Reason: reason, Domain: ErrorDomain, Metadata: map[string]string{"node_id": node},
	}); derr == nil {
		cerr.AddDetail(d)
	}
	return cerr
}

// WasNotExecuted reports whether err proves that the request it answers had
// no effect anywhere: a node refused it with one of the reasons above, or
// the connection to the node could not even be opened. A client may retry
// such a request, writes included; after any other error a write may or may
// not have been applied.
func WasNotExecuted(err error) bool {
	if connect.CodeOf(err) != connect.CodeUnavailable {
		return false
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "dial" {
		return true
	}
	switch Reason(err) {
	case ReasonNotOwner, ReasonOwnerNotLive, ReasonOwnerUnreachable, ReasonNotReady, ReasonMoving:
		return true
	}
	return false
}

// Reason returns the reason of the Flux-KV ErrorInfo detail err carries,
// or "" if it has none.
func Reason(err error) string {
	var cerr *connect.Error
	if !errors.As(err, &cerr) {
		return ""
	}
	for _, d := range cerr.Details() {
		v, derr := d.Value()
		if derr != nil {
			continue
		}
		if info, ok := v.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return info.GetReason()
		}
	}
	return ""
}

// Epoch returns the ring epoch a NOT_OWNER refusal names (the epoch of the
// ring the refusing node routed by), or 0 if it names none.
func Epoch(err error) int64 {
	var cerr *connect.Error
	if !errors.As(err, &cerr) {
		return 0
	}
	for _, d := range cerr.Details() {
		v, derr := d.Value()
		if derr != nil {
			continue
		}
		if info, ok := v.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			epoch, _ := strconv.ParseInt(info.GetMetadata()["epoch"], 10, 64)
			return epoch
		}
	}
	return 0
}

// RerouteBudget bounds how long a client or the gateway keeps sending a
// request again while its key moves between nodes (refusals with MOVING or
// NOT_OWNER). A move normally pauses a key for milliseconds (the target
// applies the last changes, writes its log and flips the ring in etcd). At
// worst a target holds its sources frozen for its drain (5 s) and its wait
// for the other targets of a removal (5 s) before it lets them go, or, if
// it dies, until its lease expires (10 s).
const RerouteBudget = 30 * time.Second

// MovingBackoff is the pause before the attempt-th retry (from 0) of a
// request refused with MOVING: short at first, as a freeze usually ends
// within milliseconds, and at most 200 ms.
func MovingBackoff(attempt int) time.Duration {
	d := 10 * time.Millisecond << min(attempt, 5)
	return min(d, 200*time.Millisecond)
}
