package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	routingv1 "github.com/fluxkv/fluxkv/gen/flux/routing/v1"
	"github.com/fluxkv/fluxkv/platform/auth"
	"github.com/fluxkv/fluxkv/platform/coord"
)

// method is one method the gateway serves, with what routing and the
// policies need to know about it.
type method struct {
	procedure   string
	service     string
	desc        protoreflect.MethodDescriptor
	shardKey    protoreflect.FieldDescriptor // nil when the input has none
	idempotency descriptorpb.MethodOptions_IdempotencyLevel
	handler     http.Handler
}

// newMethod describes md and builds the Connect handler that proxies it.
func (g *Gateway) newMethod(md protoreflect.MethodDescriptor) *method {
	svc := md.Parent().(protoreflect.ServiceDescriptor)
	m := &method{
		procedure: "/" + string(svc.FullName()) + "/" + string(md.Name()),
		service:   string(svc.FullName()),
		desc:      md,
		shardKey:  shardKeyField(md.Input()),
	}
	if opts, ok := md.Options().(*descriptorpb.MethodOptions); ok && opts != nil {
		m.idempotency = opts.GetIdempotencyLevel()
	}
	init := func(desc protoreflect.MessageDescriptor) func(connect.Spec, any) error {
		return func(_ connect.Spec, msg any) error {
			dm, ok := msg.(*dynamicpb.Message)
			if !ok {
				return fmt.Errorf("gateway: unexpected message type %T", msg)
			}
			*dm = *dynamicpb.NewMessage(desc)
			return nil
		}
	}
	opts := append([]connect.HandlerOption{
		connect.WithSchema(md),
		connect.WithRequestInitializer(init(md.Input())),
		connect.WithReadMaxBytes(g.cfg.MaxMessageBytes),
		connect.WithCompressMinBytes(compressMinBytes),
		connect.WithCodec(proxyCodec{}),
		// Methods without side effects also answer Connect GET requests,
		// which browsers and CDNs can cache.
		connect.WithIdempotency(connect.IdempotencyLevel(m.idempotency)),
	}, g.handlerOptions...)
	switch {
	case md.IsStreamingClient() && md.IsStreamingServer():
		m.handler = connect.NewBidiStreamHandler(m.procedure, g.bidi(m), opts...)
	case md.IsStreamingClient():
		m.handler = connect.NewClientStreamHandler(m.procedure, g.clientStream(m), opts...)
	case md.IsStreamingServer():
		m.handler = connect.NewServerStreamHandler(m.procedure, g.serverStream(m), opts...)
	default:
		m.handler = connect.NewUnaryHandler(m.procedure, g.unary(m), opts...)
		// A unary body is one message: cap it before anything is read.
		m.handler = http.MaxBytesHandler(m.handler, int64(g.cfg.MaxMessageBytes)+bodyOverhead)
	}
	return m
}

// shardKeyField returns the field of msg marked (flux.routing.v1.shard_key),
// if any.
func shardKeyField(msg protoreflect.MessageDescriptor) protoreflect.FieldDescriptor {
	fields := msg.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		opts, ok := fd.Options().(*descriptorpb.FieldOptions)
		if !ok || opts == nil || fd.IsList() || fd.IsMap() || fd.Message() != nil {
			continue
		}
		if on, _ := proto.GetExtension(opts, routingv1.E_ShardKey).(bool); on {
			return fd
		}
	}
	return nil
}

// shardKey returns the routing key of a request, if the method has a shard
// key field and the request sets it.
func (m *method) shardKeyOf(msg *dynamicpb.Message) (string, bool) {
	if m.shardKey == nil {
		return "", false
	}
	// An unset string or bytes key means "no key" (a prefix Watch); a
	// number or bool without presence is a key even at its zero value.
	kind := m.shardKey.Kind()
	if !msg.Has(m.shardKey) && (m.shardKey.HasPresence() || kind == protoreflect.StringKind || kind == protoreflect.BytesKind) {
		return "", false
	}
	v := msg.Get(m.shardKey)
	if m.shardKey.Kind() == protoreflect.BytesKind {
		return string(v.Bytes()), true
	}
	return v.String(), true
}

// retryable says whether a call may be sent again after Unavailable: only
// methods declared free of side effects or idempotent.
func (m *method) retryable() bool {
	return m.idempotency == descriptorpb.MethodOptions_NO_SIDE_EFFECTS ||
		m.idempotency == descriptorpb.MethodOptions_IDEMPOTENT
}

func (g *Gateway) unary(m *method) func(context.Context, *connect.Request[dynamicpb.Message]) (*connect.Response[dynamicpb.Message], error) {
	return func(ctx context.Context, req *connect.Request[dynamicpb.Message]) (*connect.Response[dynamicpb.Message], error) {
		ctx, cancel := g.withDefaultTimeout(ctx)
		defer cancel()
		call := func(ctx context.Context) (*connect.Response[dynamicpb.Message], error) {
			return g.callUnary(ctx, m, req)
		}
		if m.idempotency != descriptorpb.MethodOptions_NO_SIDE_EFFECTS || g.flight == nil {
			return call(ctx)
		}
		key, ok := flightKey(m, req)
		if !ok {
			return call(ctx)
		}
		v, shared, err := g.flight.Do(ctx, key, func(ctx context.Context) (any, error) { return call(ctx) })
		if err != nil {
			return nil, err
		}
		resp := v.(*connect.Response[dynamicpb.Message])
		if !shared {
			return resp, nil
		}
		// Every caller gets its own copy: the response is written by each
		// caller's handler, concurrently.
		out := connect.NewResponse(proto.Clone(resp.Msg).(*dynamicpb.Message))
		copyHeaders(out.Header(), resp.Header())
		copyHeaders(out.Trailer(), resp.Trailer())
		return out, nil
	}
}

// flightKey identifies identical requests: the procedure, the request's
// deterministic encoding and the headers that could change the answer.
func flightKey(m *method, req *connect.Request[dynamicpb.Message]) (string, bool) {
	b, err := proto.MarshalOptions{Deterministic: true, AllowPartial: true}.Marshal(req.Msg)
	if err != nil {
		return "", false
	}
	var sb strings.Builder
	sb.WriteString(m.procedure)
	sb.WriteByte(0)
	sb.Write(b)
	// Every header that reaches the backend may change its answer (who
	// asks, for which tenant): only callers that agree on all of them share.
	names := make([]string, 0, len(req.Header()))
	for k := range req.Header() {
		if !isRequestHopHeader(k) {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	for _, k := range names {
		sb.WriteByte(0)
		sb.WriteString(k)
		for _, v := range req.Header()[k] {
			sb.WriteByte(1)
			sb.WriteString(v)
		}
	}
	return sb.String(), true
}

// callUnary sends a unary call to the instance routing picks, and once more
// to another instance when the method allows a retry and the first one was
// unavailable.
func (g *Gateway) callUnary(ctx context.Context, m *method, req *connect.Request[dynamicpb.Message]) (*connect.Response[dynamicpb.Message], error) {
	var (
		tried   []string
		lastErr error
		start   = time.Now()
		moves   int // refusals because the key was moving
	)
	for attempt := 0; ; attempt++ {
		b, err := g.route(m, req.Msg, tried)
		if err != nil {
			if lastErr != nil {
				// Nowhere else to go: the first failure says more.
				return nil, forwardError(lastErr)
			}
			return nil, err
		}
		tried = append(tried, b.id)
		out := connect.NewRequest(req.Msg)
		copyRequestHeaders(out.Header(), req.Header())
		var resp *connect.Response[dynamicpb.Message]
		var callErr error
		err = g.breakers.Do(b.breaker, func() error {
			resp, callErr = g.client(m, b.url).CallUnary(ctx, out)
			callErr = backendError(ctx, callErr)
			return breakerError(callErr)
		})
		if err == nil {
			err = callErr
		}
		if err == nil {
			// The response is this call's own: strip it for the caller
			// rather than copy it.
			stripHopHeaders(resp.Header())
			stripHopHeaders(resp.Trailer())
			return resp, nil
		}
		if !b.roundRobin && g.awaitMove(ctx, err, moves, start) {
			// The key is moving between nodes: the request had no effect,
			// and the ring (or the owner's freeze) settles shortly.
			moves++
			attempt--
			continue
		}
		if attempt > 0 || !m.retryable() || !b.roundRobin || connect.CodeOf(err) != connect.CodeUnavailable || ctx.Err() != nil {
			return nil, forwardError(err)
		}
		lastErr = err
	}
}

// awaitMove reports whether a shard-keyed call refused with err may be sent
// again because its key is moving between nodes, after waiting for that:
// MOVING (the owner takes writes to the key again shortly) or NOT_OWNER
// (the gateway's ring or the node's is behind: wait for the gateway's to
// reach the node's epoch, or give the node a moment). It gives up once
// coord.RerouteBudget has passed since start.
func (g *Gateway) awaitMove(ctx context.Context, err error, moves int, start time.Time) bool {
	reason := coord.Reason(err)
	if (reason != coord.ReasonMoving && reason != coord.ReasonNotOwner) || time.Since(start) > coord.RerouteBudget {
		return false
	}
	snap, changed := g.watcher.Current()
	wait := coord.MovingBackoff(moves)
	if reason == coord.ReasonNotOwner && coord.Epoch(err) > snap.Epoch() {
		wait = time.Second // for the gateway's ring, which the change wakes
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-changed:
		return true
	case <-ctx.Done():
		return false
	}
}

func (g *Gateway) serverStream(m *method) func(context.Context, *connect.Request[dynamicpb.Message], *connect.ServerStream[dynamicpb.Message]) error {
	return func(ctx context.Context, req *connect.Request[dynamicpb.Message], stream *connect.ServerStream[dynamicpb.Message]) error {
		b, err := g.route(m, req.Msg, nil)
		if err != nil {
			return err
		}
		done, err := g.breakers.Allow(b.breaker)
		if err != nil {
			return err
		}
		out := connect.NewRequest(req.Msg)
		copyRequestHeaders(out.Header(), req.Header())
		upstream, err := g.client(m, b.url).CallServerStream(ctx, out)
		if err != nil {
			err = backendError(ctx, err)
			done(breakerError(err))
			return err
		}
		defer upstream.Close()
		headersSent := false
		for upstream.Receive() {
			if !headersSent {
				copyHeaders(stream.ResponseHeader(), upstream.ResponseHeader())
				headersSent = true
			}
			if err := stream.Send(upstream.Msg()); err != nil {
				done(nil) // the client went away, not the backend
				return err
			}
		}
		err = backendError(ctx, upstream.Err())
		done(breakerError(err))
		if !headersSent {
			copyHeaders(stream.ResponseHeader(), upstream.ResponseHeader())
		}
		copyHeaders(stream.ResponseTrailer(), upstream.ResponseTrailer())
		return err
	}
}

func (g *Gateway) clientStream(m *method) func(context.Context, *connect.ClientStream[dynamicpb.Message]) (*connect.Response[dynamicpb.Message], error) {
	return func(ctx context.Context, stream *connect.ClientStream[dynamicpb.Message]) (*connect.Response[dynamicpb.Message], error) {
		b, err := g.route(m, nil, nil)
		if err != nil {
			return nil, err
		}
		done, err := g.breakers.Allow(b.breaker)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		upstream := g.client(m, b.url).CallClientStream(ctx)
		copyRequestHeaders(upstream.RequestHeader(), stream.RequestHeader())
		for stream.Receive() {
			if err := upstream.Send(stream.Msg()); err != nil {
				break // the backend's answer says why
			}
		}
		if err := stream.Err(); err != nil {
			// Abort, never half-close: a clean end would let the backend act
			// on a stream the client never finished. Cancelling resets the
			// backend's stream and releases the call; closing the request
			// first (CloseAndReceive) could race the reset and end the
			// stream cleanly.
			cancel()
			done(nil)
			return nil, err
		}
		resp, err := upstream.CloseAndReceive()
		err = backendError(ctx, err)
		done(breakerError(err))
		if err != nil {
			return nil, forwardError(err)
		}
		res := connect.NewResponse(resp.Msg)
		copyHeaders(res.Header(), resp.Header())
		copyHeaders(res.Trailer(), resp.Trailer())
		return res, nil
	}
}

func (g *Gateway) bidi(m *method) func(context.Context, *connect.BidiStream[dynamicpb.Message, dynamicpb.Message]) error {
	return func(ctx context.Context, stream *connect.BidiStream[dynamicpb.Message, dynamicpb.Message]) error {
		b, err := g.route(m, nil, nil)
		if err != nil {
			return err
		}
		done, err := g.breakers.Allow(b.breaker)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		upstream := g.client(m, b.url).CallBidiStream(ctx)
		copyRequestHeaders(upstream.RequestHeader(), stream.RequestHeader())
		// Requests flow up in their own goroutine, so neither direction
		// waits for the other (a Pipeline answers while it receives). It
		// reports how the client's side ended: nil for a half-close.
		recvDone := make(chan error, 1)
		go func() {
			defer func() { _ = upstream.CloseRequest() }()
			for {
				msg, err := stream.Receive()
				if errors.Is(err, io.EOF) {
					recvDone <- nil
					return
				}
				if err != nil {
					recvDone <- err
					cancel()
					return
				}
				if err := upstream.Send(msg); err != nil {
					recvDone <- nil // the backend's answer says why
					return
				}
			}
		}()
		headersSent := false
		var sendErr error
		for {
			msg, err := upstream.Receive()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					sendErr = backendError(ctx, err)
				}
				break
			}
			if !headersSent {
				copyHeaders(stream.ResponseHeader(), upstream.ResponseHeader())
				headersSent = true
			}
			if err := stream.Send(msg); err != nil {
				cancel()
				_ = upstream.CloseResponse()
				done(nil)
				return err
			}
		}
		// The backend has finished. The request goroutine may still be
		// reading the client, which nothing but returning unblocks: do not
		// wait for it (returning ends the request body it reads).
		_ = upstream.CloseResponse()
		select {
		case recvErr := <-recvDone:
			if recvErr != nil {
				done(nil)
				return recvErr
			}
		default:
		}
		done(breakerError(sendErr))
		if !headersSent {
			copyHeaders(stream.ResponseHeader(), upstream.ResponseHeader())
		}
		copyHeaders(stream.ResponseTrailer(), upstream.ResponseTrailer())
		return sendErr
	}
}

// forwardError returns a backend's error as the gateway's own, with its
// code, message, details and metadata: connect does not write the metadata
// of an error that came off the wire.
func forwardError(err error) error {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return err
	}
	out := connect.NewError(ce.Code(), errors.New(ce.Message()))
	for _, d := range ce.Details() {
		out.AddDetail(d)
	}
	copyHeaders(out.Meta(), ce.Meta())
	return out
}

// breakerError is what a backend's answer tells its circuit breaker: an
// error a Flux-KV node attaches a routing reason to (a key whose owner is
// down, say) is an answer from a healthy node, not its failure.
func breakerError(err error) error {
	if coord.Reason(err) != "" {
		return nil
	}
	return err
}

// backendError corrects the code of a failed call to a backend. Connect
// reports a connection reset (ECONNRESET, EPIPE) as Canceled, the code of a
// caller that went away; while ctx is live it was the backend that went
// away, which is Unavailable: the breaker counts it and a retry may follow.
func backendError(ctx context.Context, err error) error {
	var connectErr *connect.Error
	if ctx.Err() != nil || !errors.As(err, &connectErr) || connectErr.Code() != connect.CodeCanceled {
		return err
	}
	return connect.NewError(connect.CodeUnavailable, connectErr.Unwrap())
}

// client returns the connect client for m on the instance at baseURL.
func (g *Gateway) client(m *method, baseURL string) *connect.Client[dynamicpb.Message, dynamicpb.Message] {
	key := m.procedure + "@" + baseURL
	if c, ok := g.clients.Load(key); ok {
		return c.(*connect.Client[dynamicpb.Message, dynamicpb.Message])
	}
	out := m.desc.Output()
	opts := append([]connect.ClientOption{
		connect.WithGRPC(),
		connect.WithSchema(m.desc),
		connect.WithResponseInitializer(func(_ connect.Spec, msg any) error {
			dm, ok := msg.(*dynamicpb.Message)
			if !ok {
				return fmt.Errorf("gateway: unexpected message type %T", msg)
			}
			*dm = *dynamicpb.NewMessage(out)
			return nil
		}),
		connect.WithReadMaxBytes(g.cfg.MaxMessageBytes),
		connect.WithCodec(proxyCodec{}),
	}, g.clientOptions...)
	c := connect.NewClient[dynamicpb.Message, dynamicpb.Message](g.backendHTTP, baseURL+m.procedure, opts...)
	actual, _ := g.clients.LoadOrStore(key, c)
	return actual.(*connect.Client[dynamicpb.Message, dynamicpb.Message])
}

// Headers that belong to one hop's protocol and must not be copied across
// the proxy; everything else (metadata, auth, trace context) travels.
var hopHeaders = map[string]bool{
	"Accept-Encoding": true, "Connection": true, "Content-Encoding": true, "Content-Length": true,
	"Content-Type": true, "Host": true, "Keep-Alive": true, "Proxy-Connection": true, "Te": true,
	"Trailer": true, "Transfer-Encoding": true, "Upgrade": true, "User-Agent": true,
	"Connect-Accept-Encoding": true, "Connect-Content-Encoding": true, "Connect-Protocol-Version": true,
	"Connect-Timeout-Ms": true, "Grpc-Accept-Encoding": true, "Grpc-Encoding": true, "Grpc-Timeout": true,
	"Grpc-Message": true, "Grpc-Status": true, "Grpc-Status-Details-Bin": true, "X-Grpc-Web": true,
	"X-User-Agent": true, "Origin": true, "Access-Control-Request-Method": true, "Access-Control-Request-Headers": true,
}

// copyRequestHeaders copies a caller's metadata to the backend call. The
// deadline travels in the context, not as a header. The caller's
// Authorization replaces any the call had: the node must check the
// caller's token, and nothing else.
func copyRequestHeaders(dst, src http.Header) {
	for k, vs := range src {
		switch {
		case isRequestHopHeader(k):
		case k == auth.Header:
			dst[k] = slices.Clone(vs)
		default:
			dst[k] = append(dst[k], vs...)
		}
	}
}

func isRequestHopHeader(k string) bool {
	return hopHeaders[k] || strings.HasPrefix(k, "Connect-") || strings.HasPrefix(k, "Grpc-") || strings.HasPrefix(k, "Sec-")
}

// copyHeaders copies a backend's response metadata to the caller.
func copyHeaders(dst, src http.Header) {
	for k, vs := range src {
		if isResponseHopHeader(k) {
			continue
		}
		dst[k] = append(dst[k], vs...)
	}
}

// stripHopHeaders removes from a backend's response metadata what
// copyHeaders would not copy.
func stripHopHeaders(h http.Header) {
	for k := range h {
		if isResponseHopHeader(k) {
			delete(h, k)
		}
	}
}

func isResponseHopHeader(k string) bool {
	return hopHeaders[k] || strings.HasPrefix(k, "Connect-") || strings.HasPrefix(k, "Grpc-")
}

// proxyCodec is connect's binary protobuf codec without what a proxy does
// not need. It leaves required fields (proto2) to the backend to check,
// as a proxy should, and decodes into the fresh message connect has just
// initialised without first resetting it, which for a dynamic message
// would allocate it all over again.
type proxyCodec struct{}

func (proxyCodec) Name() string { return "proto" }

func (c proxyCodec) Marshal(msg any) ([]byte, error) { return c.MarshalAppend(nil, msg) }

func (proxyCodec) MarshalAppend(dst []byte, msg any) ([]byte, error) {
	pm, ok := msg.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("gateway: cannot marshal %T: not a protobuf message", msg)
	}
	return proto.MarshalOptions{AllowPartial: true}.MarshalAppend(dst, pm)
}

func (proxyCodec) Unmarshal(data []byte, msg any) error {
	pm, ok := msg.(proto.Message)
	if !ok {
		return fmt.Errorf("gateway: cannot unmarshal into %T: not a protobuf message", msg)
	}
	return proto.UnmarshalOptions{AllowPartial: true, Merge: true}.Unmarshal(data, pm)
}
