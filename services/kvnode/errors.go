package kvnode

import (
	"errors"
	"fmt"

	validatepb "buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/platform/coord"
	"github.com/fluxkv/fluxkv/platform/store"
)

// conditionFailed is the error of a conditional write whose condition did not
// hold. It carries a ConditionFailure detail so a compare-and-swap loop can
// retry with the current revision.
func conditionFailed(found bool, revision int64) *connect.Error {
	msg := "condition failed: key does not exist"
	if found {
		msg = fmt.Sprintf("condition failed: key exists at revision %d", revision)
	}
	err := connect.NewError(connect.CodeFailedPrecondition, errors.New(msg))
	addDetail(err, &kvv1.ConditionFailure{Found: found, Revision: revision})
	return err
}

// valueTooLarge reports a value over the node's limit the way schema
// violations are reported, naming the field, so clients handle both alike.
func valueTooLarge(n, limit int) *connect.Error {
	msg := fmt.Sprintf("value is %d bytes, over this server's limit of %d bytes", n, limit)
	err := connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("validation error: value: %s", msg))
	field := (&kvv1.PutRequest{}).ProtoReflect().Descriptor().Fields().ByNumber(2)
	addDetail(err, &validatepb.Violations{Violations: []*validatepb.Violation{{
		Field: &validatepb.FieldPath{Elements: []*validatepb.FieldPathElement{{
			FieldNumber: proto.Int32(int32(field.Number())),
			FieldName:   proto.String(string(field.Name())),
			FieldType:   descriptorpb.FieldDescriptorProto_Type(field.Kind()).Enum(),
		}}},
		RuleId:  proto.String("flux.max_value_bytes"),
		Message: proto.String(msg),
	}}})
	return err
}

// validationError turns a protovalidate failure into InvalidArgument with the
// violations attached, as the validation interceptor does for whole requests.
func validationError(err error) *connect.Error {
	connectErr := connect.NewError(connect.CodeInvalidArgument, err)
	var verr *protovalidate.ValidationError
	if errors.As(err, &verr) {
		addDetail(connectErr, verr.ToProto())
	}
	return connectErr
}

// storeError maps engine errors that are not part of an operation's normal
// outcome.
func storeError(err error) *connect.Error {
	if errors.Is(err, store.ErrClosed) {
		return connect.NewError(connect.CodeUnavailable, errors.New("node is shutting down"))
	}
	// Anything else is a bug: say so without leaking internals.
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}

// errorResult converts an operation's error into its Batch/Pipeline result,
// copying the details clients act on.
func errorResult(err error) *kvv1.OperationResult {
	opErr := &kvv1.OperationError{Code: connect.CodeOf(err).String(), Message: err.Error()}
	var connectErr *connect.Error
	if errors.As(err, &connectErr) {
		opErr.Message = connectErr.Message()
		for _, d := range connectErr.Details() {
			v, derr := d.Value()
			if derr != nil {
				continue
			}
			switch v := v.(type) {
			case *kvv1.ConditionFailure:
				opErr.ConditionFailure = v
			case *validatepb.Violations:
				opErr.Violations = v
			case *errdetails.ErrorInfo:
				if v.GetDomain() == coord.ErrorDomain {
					opErr.Reason = v.GetReason()
				}
			}
		}
	}
	return &kvv1.OperationResult{Result: &kvv1.OperationResult_Error{Error: opErr}}
}

func addDetail(err *connect.Error, msg proto.Message) {
	// NewErrorDetail fails only for messages that cannot be marshalled into
	// an Any, which generated messages always can.
	if d, derr := connect.NewErrorDetail(msg); derr == nil {
		err.AddDetail(d)
	}
}
