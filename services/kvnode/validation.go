package kvnode

import (
	"context"

	"buf.build/go/protovalidate"
	"connectrpc.com/connect"
	"connectrpc.com/validate"
)

// requestValidation applies protovalidate to every request message and
// answers InvalidArgument with the violations, except on the procedures it is
// told to skip: Pipeline validates each operation itself, because one invalid
// operation must fail only its own result and not the whole stream. A
// request that passes is then held to the node's limits, which may be
// stricter than the schema (Limits.checkRequest).
type requestValidation struct {
	*validate.Interceptor
	limits Limits
	skip   map[string]struct{}
}

func newRequestValidation(v protovalidate.Validator, limits Limits, skipProcedures ...string) *requestValidation {
	skip := make(map[string]struct{}, len(skipProcedures))
	for _, p := range skipProcedures {
		skip[p] = struct{}{}
	}
	return &requestValidation{Interceptor: validate.NewInterceptor(validate.WithValidator(v)), limits: limits, skip: skip}
}

func (r *requestValidation) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return r.Interceptor.WrapUnary(func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if err := r.limits.checkRequest(req.Any()); err != nil {
			return nil, err
		}
		return next(ctx, req)
	})
}

func (r *requestValidation) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	validated := r.Interceptor.WrapStreamingHandler(func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		return next(ctx, limitedConn{StreamingHandlerConn: conn, limits: r.limits})
	})
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if _, ok := r.skip[conn.Spec().Procedure]; ok {
			return next(ctx, conn)
		}
		return validated(ctx, conn)
	}
}

// limitedConn checks each message received, once validated, against the
// node's limits.
type limitedConn struct {
	connect.StreamingHandlerConn
	limits Limits
}

func (c limitedConn) Receive(msg any) error {
	if err := c.StreamingHandlerConn.Receive(msg); err != nil {
		return err
	}
	return c.limits.checkRequest(msg)
}
