// Package rpcpolicy holds the resilience policies the gateway applies to the
// calls it proxies: a token-bucket rate limit that answers before any decoding,
// a circuit breaker per backend instance, singleflight for calls without side
// effects, a default deadline, and the rule that decides whether a failed call
// may be retried.
//
// Every policy reports Prometheus metrics named flux_gateway_*. The policies
// are independent of one another and of the proxy; the gateway composes them.
package rpcpolicy

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/descriptorpb"
)

// WithDefaultTimeout bounds ctx by d unless it already has a deadline, in which
// case the caller's deadline wins, shorter or longer. d <= 0 adds no bound.
// The caller must call the returned cancel function, as with
// context.WithTimeout.
func WithDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok || d <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d)
}

// Retryable reports whether a call that failed with err may be sent again, to a
// fresh instance: only when the method declares it has no side effects or is
// idempotent, and only when the error is Unavailable, the one code that says
// the call did not reach a healthy backend. A retry after DeadlineExceeded
// would double the load on a backend that is already slow.
func Retryable(idempotency descriptorpb.MethodOptions_IdempotencyLevel, err error) bool {
	switch idempotency {
	case descriptorpb.MethodOptions_NO_SIDE_EFFECTS, descriptorpb.MethodOptions_IDEMPOTENT:
		return err != nil && connect.CodeOf(err) == connect.CodeUnavailable
	default:
		return false
	}
}

// codeOf is connect.CodeOf that also recognises bare context errors, which
// the policies see when a caller's context ends before a backend answers.
func codeOf(err error) connect.Code {
	var connectErr *connect.Error
	switch {
	case errors.As(err, &connectErr):
		return connectErr.Code()
	case errors.Is(err, context.DeadlineExceeded):
		return connect.CodeDeadlineExceeded
	case errors.Is(err, context.Canceled):
		return connect.CodeCanceled
	default:
		return connect.CodeUnknown
	}
}

// contextError turns the error of a finished context into the Connect error
// a client expects for it.
func contextError(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	}
	return connect.NewError(connect.CodeCanceled, err)
}
