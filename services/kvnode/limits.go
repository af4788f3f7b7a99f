package kvnode

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	validatepb "buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/platform/auth"
	"github.com/fluxkv/fluxkv/platform/rpcpolicy"
)

// Defaults of the Limits fields left at zero. The key and batch bounds are
// the schema's (flux/kv/v1/kv.proto), which the API promises every client:
// a node may lower them, never raise them.
const (
	DefaultMaxKeyBytes        = 1024
	DefaultMaxBatchOperations = 1000
	// DefaultMaxPipelineInFlight is what one Pipeline stream may have
	// received and not yet answered. An operation stays in flight for as
	// long as the node takes to answer it: microseconds for a read, an
	// fsync for a write under appendfsync always, a round trip for one
	// forwarded to its owner; a stream needs about its rate times that in
	// flight to run at full speed. In BenchmarkAPIPipeline under
	// appendfsync always, with the client keeping 4096 operations in
	// flight, 1024 runs as fast as the node did before it had this bound
	// (its queue held 1024), 256 about a tenth slower and 64 about two
	// fifths; with the log off every bound from 64 up runs alike. A client
	// that sends this many without reading answers stalls its own stream:
	// the node then holds this many answers (small, unless they carry
	// values: a Get's, or the previous value of a Put that asked for it)
	// and HTTP/2's flow-control windows.
	DefaultMaxPipelineInFlight = 1024

	// maxPipelineInFlight bounds the setting itself: each stream allocates
	// a queue of that many answers when it opens.
	maxPipelineInFlight = 1 << 16
)

// Limits bound what one request may ask of the node, beyond the bounds on
// connections in Config.HTTP and on values in Config.MaxValueBytes. Zero
// fields take the defaults above.
type Limits struct {
	MaxKeyBytes         int // longest key a request may name (Get, Put, Delete, Watch, and in Batch and Pipeline); at most DefaultMaxKeyBytes
	MaxBatchOperations  int // most operations in one Batch; at most DefaultMaxBatchOperations
	MaxPipelineInFlight int // operations of one Pipeline stream received and not yet answered; at this many the node stops reading the stream

	// ClientRate is the calls per second the node admits from each client
	// (0: no limit), ClientBurst how many above it at once (0: one
	// second's worth), as rpcpolicy.Limiter counts them on the gateway: a
	// client is the value of ClientKeyHeader when the call has one, else
	// its IP address. Calls carrying the node's PeerToken are not counted:
	// they come from peers forwarding calls the receiving node has
	// counted already, or from gateways, which have limits of their own.
	ClientRate      float64
	ClientBurst     int
	ClientKeyHeader string
}

// withDefaults returns l with its zero fields set to the defaults.
func (l Limits) withDefaults() Limits {
	if l.MaxKeyBytes == 0 {
		l.MaxKeyBytes = DefaultMaxKeyBytes
	}
	if l.MaxBatchOperations == 0 {
		l.MaxBatchOperations = DefaultMaxBatchOperations
	}
	if l.MaxPipelineInFlight == 0 {
		l.MaxPipelineInFlight = DefaultMaxPipelineInFlight
	}
	return l
}

// setDefaults applies the defaults and refuses bounds the API does not
// allow.
func (l *Limits) setDefaults() error {
	*l = l.withDefaults()
	switch {
	case l.MaxKeyBytes < 0 || l.MaxKeyBytes > DefaultMaxKeyBytes:
		return fmt.Errorf("max key bytes %d: want 1 to %d (the API's bound, which a node may lower but not raise)", l.MaxKeyBytes, DefaultMaxKeyBytes)
	case l.MaxBatchOperations < 0 || l.MaxBatchOperations > DefaultMaxBatchOperations:
		return fmt.Errorf("max batch operations %d: want 1 to %d (the API's bound, which a node may lower but not raise)", l.MaxBatchOperations, DefaultMaxBatchOperations)
	case l.MaxPipelineInFlight < 0 || l.MaxPipelineInFlight > maxPipelineInFlight:
		return fmt.Errorf("max pipeline in flight %d: want 1 to %d", l.MaxPipelineInFlight, maxPipelineInFlight)
	}
	return nil
}

// checkRequest refuses a request whose key or batch is over the limits with
// InvalidArgument, as schema violations are refused. Batch operations'
// keys are checked one by one (checkOperation), so that an operation over
// the limit fails alone.
func (l Limits) checkRequest(msg any) error {
	switch m := msg.(type) {
	case *kvv1.GetRequest:
		return l.checkKey(m.GetKey(), m.ProtoReflect())
	case *kvv1.PutRequest:
		return l.checkKey(m.GetKey(), m.ProtoReflect())
	case *kvv1.DeleteRequest:
		return l.checkKey(m.GetKey(), m.ProtoReflect())
	case *kvv1.WatchRequest:
		// A prefix is not a key: one longer than any key matches nothing.
		if _, ok := m.GetTarget().(*kvv1.WatchRequest_Key); ok {
			return l.checkKey(m.GetKey(), m.ProtoReflect())
		}
	case *kvv1.BatchRequest:
		if n := len(m.GetOperations()); n > l.MaxBatchOperations {
			field := m.ProtoReflect().Descriptor().Fields().ByName("operations")
			return overLimit("flux.max_batch_operations",
				fmt.Sprintf("batch has %d operations, over this server's limit of %d (--max-batch-operations)", n, l.MaxBatchOperations),
				field)
		}
	}
	return nil
}

// checkOperation is checkRequest for one Batch or Pipeline operation; the
// violation's field path starts at the operation ("put.key").
func (l Limits) checkOperation(op *kvv1.Operation) error {
	var req protoreflect.Message
	switch o := op.GetOp().(type) {
	case *kvv1.Operation_Get:
		req = o.Get.ProtoReflect()
	case *kvv1.Operation_Put:
		req = o.Put.ProtoReflect()
	case *kvv1.Operation_Delete:
		req = o.Delete.ProtoReflect()
	default:
		return nil
	}
	opField := op.ProtoReflect().WhichOneof(op.ProtoReflect().Descriptor().Oneofs().ByName("op"))
	return l.checkKey(req.Get(req.Descriptor().Fields().ByName("key")).String(), req, opField)
}

// checkKey checks the key of req, a message with a field "key"; parents are
// the fields that lead to req, if it is nested.
func (l Limits) checkKey(key string, req protoreflect.Message, parents ...protoreflect.FieldDescriptor) error {
	if len(key) <= l.MaxKeyBytes {
		return nil
	}
	path := append(slices.Clone(parents), req.Descriptor().Fields().ByName("key"))
	return overLimit("flux.max_key_bytes",
		fmt.Sprintf("key is %d bytes, over this server's limit of %d bytes (--max-key-bytes)", len(key), l.MaxKeyBytes),
		path...)
}

// overLimit is InvalidArgument with a violation of the node's rule on the
// field at path, shaped like protovalidate's, so clients handle the node's
// limits and the schema's alike.
func overLimit(rule, msg string, path ...protoreflect.FieldDescriptor) *connect.Error {
	elements := make([]*validatepb.FieldPathElement, len(path))
	names := make([]string, len(path))
	for i, f := range path {
		elements[i] = &validatepb.FieldPathElement{
			FieldNumber: proto.Int32(int32(f.Number())),
			FieldName:   proto.String(string(f.Name())),
			FieldType:   descriptorpb.FieldDescriptorProto_Type(f.Kind()).Enum(),
		}
		names[i] = string(f.Name())
	}
	err := connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("validation error: %s: %s", strings.Join(names, "."), msg))
	addDetail(err, &validatepb.Violations{Violations: []*validatepb.Violation{{
		Field:   &validatepb.FieldPath{Elements: elements},
		RuleId:  proto.String(rule),
		Message: proto.String(msg),
	}}})
	return err
}

// rateLimited returns next behind the per-client rate limit (Limits.
// ClientRate), or next itself when the limit is off. Refused calls get
// ResourceExhausted before their body is read, as on the gateway.
//
// Calls carrying PeerToken pass: a peer forwards a call that the node the
// client called has counted already, and a gateway has limits of its own.
// Nothing else marks a peer: the forwarded-by header is also sent by the Go
// SDK and by anyone who wants to, so a clustered node with a limit needs a
// peer token, or it would count all of a peer's forwarded calls as one
// client's.
func (c *Config) rateLimited(next http.Handler) (http.Handler, error) {
	l := c.Limits
	if l.ClientRate == 0 {
		return next, nil
	}
	if c.PeerToken == "" && len(c.Etcd) > 0 {
		return nil, errors.New("client rate limit: a clustered node needs a peer token (--peer-token, the same on every node) to tell the calls its peers forward, which the node that received them has limited, from clients' calls")
	}
	// No registry: the limiter's metrics are named for the gateway.
	lim, err := rpcpolicy.NewLimiter(rpcpolicy.LimiterConfig{
		ClientRate:      l.ClientRate,
		ClientBurst:     l.ClientBurst,
		ClientKeyHeader: l.ClientKeyHeader,
	}, nil)
	if err != nil {
		return nil, fmt.Errorf("client %w", err)
	}
	limited := lim.Handler(next)
	if c.PeerToken == "" {
		return limited, nil
	}
	peer := sha256.Sum256([]byte(c.PeerToken))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if carriesToken(r.Header, peer) {
			next.ServeHTTP(w, r)
			return
		}
		limited.ServeHTTP(w, r)
	}), nil
}

// carriesToken reports whether h holds a bearer token whose SHA-256 is
// digest. Like the auth package, it compares digests, so the time taken
// says nothing about the token.
func carriesToken(h http.Header, digest [sha256.Size]byte) bool {
	raw, ok := strings.CutPrefix(h.Get(auth.Header), "Bearer ")
	if !ok {
		return false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(raw)))
	return subtle.ConstantTimeCompare(sum[:], digest[:]) == 1
}
