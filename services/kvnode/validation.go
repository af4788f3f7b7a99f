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
// operation must fail only its own result and not the whole stream.
type requestValidation struct {
	*validate.Interceptor
	skip map[string]struct{}
}

func newRequestValidation(v protovalidate.Validator, skipProcedures ...string) *requestValidation {
	skip := make(map[string]struct{}, len(skipProcedures))
	for _, p := range skipProcedures {
		skip[p] = struct{}{}
	}
	return &requestValidation{Interceptor: validate.NewInterceptor(validate.WithValidator(v)), skip: skip}
}

func (r *requestValidation) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	validated := r.Interceptor.WrapStreamingHandler(next)
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if _, ok := r.skip[conn.Spec().Procedure]; ok {
			return next(ctx, conn)
		}
		return validated(ctx, conn)
	}
}
