package kvnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"buf.build/go/protovalidate"
	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/changelog"
	"github.com/fluxkv/fluxkv/platform/coord"
	"github.com/fluxkv/fluxkv/platform/rpcserver"
	"github.com/fluxkv/fluxkv/platform/store"
)

// defaultScanLimit is the page size of a Scan that asks for limit 0.
const defaultScanLimit = 100

// handler serves flux.kv.v1.KVService from one node's store. Unary calls,
// Batch items and Pipeline items share one implementation per operation, so
// they answer the same input the same way.
type handler struct {
	store         *store.Store
	dur           durability
	events        changelog.Events // what Watch reads; nil: Watch is unimplemented
	watch         watchConfig
	router        *router
	validator     protovalidate.Validator
	maxValueBytes int
	limits        Limits
	now           func() time.Time
}

// newHandler returns a KVService implementation backed by st. Values longer
// than maxValueBytes are refused with InvalidArgument. validator and limits
// check each Batch and Pipeline operation on its own; whole requests are
// checked by the validation interceptor that the caller installs. limits
// also bound each Pipeline stream's operations in flight; its zero fields
// take the defaults. now must be the clock st uses, so remaining TTLs agree
// with expiry. A write is acknowledged only once dur says it is durable.
// Watch streams the changes events holds.
func newHandler(st *store.Store, validator protovalidate.Validator, maxValueBytes int, limits Limits, now func() time.Time, dur durability, events changelog.Events, r *router) kvv1connect.KVServiceHandler {
	return &handler{
		store: st, dur: dur, events: events, watch: defaultWatchConfig(), router: r,
		validator: validator, maxValueBytes: maxValueBytes, limits: limits.withDefaults(), now: now,
	}
}

func (h *handler) Get(ctx context.Context, req *connect.Request[kvv1.GetRequest]) (*connect.Response[kvv1.GetResponse], error) {
	if client, err := h.router.target(req.Header(), req.Msg.GetKey()); err != nil || client != nil {
		if err != nil {
			return nil, err
		}
		resp, err := client.Get(ctx, forward(h.router.self, req.Msg))
		if err != nil {
			return nil, err
		}
		return connect.NewResponse(resp.Msg), nil
	}
	if err := h.router.readable(req.Msg.GetKey()); err != nil {
		return nil, err
	}
	return connect.NewResponse(h.get(req.Msg)), nil
}

func (h *handler) Put(ctx context.Context, req *connect.Request[kvv1.PutRequest]) (*connect.Response[kvv1.PutResponse], error) {
	if client, err := h.router.target(req.Header(), req.Msg.GetKey()); err != nil || client != nil {
		if err != nil {
			return nil, err
		}
		resp, err := client.Put(ctx, forward(h.router.self, req.Msg))
		if err != nil {
			return nil, err
		}
		return connect.NewResponse(resp.Msg), nil
	}
	if err := h.reserve(ctx, req.Msg.GetKey()); err != nil {
		return nil, err
	}
	release, err := h.router.admit(req.Msg.GetKey())
	if err != nil {
		return nil, err
	}
	resp, err := h.put(req.Msg)
	release()
	if err != nil {
		return nil, err
	}
	if err := h.dur.Wait(ctx, resp.GetRevision()); err != nil {
		return nil, unconfirmedError(err)
	}
	return connect.NewResponse(resp), nil
}

func (h *handler) Delete(ctx context.Context, req *connect.Request[kvv1.DeleteRequest]) (*connect.Response[kvv1.DeleteResponse], error) {
	if client, err := h.router.target(req.Header(), req.Msg.GetKey()); err != nil || client != nil {
		if err != nil {
			return nil, err
		}
		resp, err := client.Delete(ctx, forward(h.router.self, req.Msg))
		if err != nil {
			return nil, err
		}
		return connect.NewResponse(resp.Msg), nil
	}
	if err := h.reserve(ctx, req.Msg.GetKey()); err != nil {
		return nil, err
	}
	release, err := h.router.admit(req.Msg.GetKey())
	if err != nil {
		return nil, err
	}
	resp, err := h.delete(req.Msg)
	release()
	if err != nil {
		return nil, err
	}
	if err := h.dur.Wait(ctx, resp.GetRevision()); err != nil {
		return nil, unconfirmedError(err)
	}
	return connect.NewResponse(resp), nil
}

// Batch runs the operations in order and waits once, for the last write, so
// a batch costs one durability wait however many writes it holds. Each
// operation fails alone; the call fails only if the outcome of a write
// cannot be known.
func (h *handler) Batch(ctx context.Context, req *connect.Request[kvv1.BatchRequest]) (*connect.Response[kvv1.BatchResponse], error) {
	ops := req.Msg.GetOperations()
	if c := h.router.coordinating(req.Header()); c != nil {
		results, err := h.coordinateBatch(ctx, c, ops)
		if err != nil {
			return nil, err
		}
		return connect.NewResponse(&kvv1.BatchResponse{Results: results}), nil
	}
	results := make([]*kvv1.OperationResult, len(ops))
	var last int64
	for i, op := range ops {
		// A batch forwarded by a peer holds only keys that peer's ring
		// places here; one this node's ring places elsewhere is refused,
		// not applied to the wrong store.
		if _, err := h.router.target(req.Header(), coord.OperationKey(op)); err != nil {
			results[i] = errorResult(err)
			continue
		}
		if err := h.reserveFor(ctx, op); err != nil {
			results[i] = errorResult(err)
			continue
		}
		var rev int64
		results[i], rev = h.applyAdmitted(op)
		last = max(last, rev)
	}
	if err := h.dur.Wait(ctx, last); err != nil {
		return nil, unconfirmedError(err)
	}
	return connect.NewResponse(&kvv1.BatchResponse{Results: results}), nil
}

func (h *handler) Scan(ctx context.Context, req *connect.Request[kvv1.ScanRequest]) (*connect.Response[kvv1.ScanResponse], error) {
	limit := int(req.Msg.GetLimit())
	if limit == 0 {
		limit = defaultScanLimit
	}
	if c := h.router.coordinating(req.Header()); c != nil {
		resp, err := h.coordinateScan(ctx, c, req.Msg, limit)
		if err != nil {
			return nil, err
		}
		return connect.NewResponse(resp), nil
	}
	resp, err := h.scanLocal(req.Msg, limit)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(resp), nil
}

// scanLocal scans this node's store.
func (h *handler) scanLocal(msg *kvv1.ScanRequest, limit int) (*kvv1.ScanResponse, error) {
	res, err := h.store.Scan(store.ScanOptions{Prefix: msg.GetPrefix(), Cursor: msg.GetCursor(), Limit: limit})
	if errors.Is(err, store.ErrInvalidCursor) {
		return nil, connect.NewError(connect.CodeInvalidArgument,
			errors.New("cursor: not a next_cursor returned by Scan for this prefix"))
	}
	if err != nil {
		return nil, storeError(err)
	}
	now := h.now()
	items := make([]*kvv1.KeyValue, 0, len(res.Entries))
	for _, e := range res.Entries {
		// Keys this node holds but no longer owns (left behind when a
		// member joined) are not its to answer for; the cursor still
		// reports how far it scanned (coord.MergeScan relies on both).
		if h.router.owns(e.Key) {
			items = append(items, keyValue(e, now, msg.GetKeysOnly()))
		}
	}
	return &kvv1.ScanResponse{Items: items, NextCursor: res.NextCursor}, nil
}

// Pipeline answers each operation as it arrives, in arrival order. This
// goroutine receives and applies; a second one waits until each write is
// durable and sends its result, so the log's group commit covers many
// operations at once instead of one round trip each. A write the log
// refuses or cannot confirm fails alone, like any other operation: only a
// broken stream ends the call. The client must read responses while it
// writes, as HTTP/2 flow control bounds what either side can buffer.
//
// Responses ready together leave together: while more are queued, the
// sender holds the flush that follows each message, and it releases the
// held ones before it waits for anything.
//
// At most Limits.MaxPipelineInFlight operations are received and not yet
// answered: at that many the receiver reads no more until the sender has
// answered one, so a client that does not read its answers stalls its own
// stream (HTTP/2 flow control then stops its writes) instead of growing the
// node's memory.
func (h *handler) Pipeline(ctx context.Context, stream *connect.BidiStream[kvv1.PipelineRequest, kvv1.PipelineResponse]) error {
	type pending struct {
		resp   *kvv1.PipelineResponse
		rev    int64                      // a local write to wait for
		remote chan *kvv1.OperationResult // the result of an operation another node runs
	}
	// One slot per operation in flight, taken before it is received and
	// given back once it is answered; the queue never holds more.
	slots := make(chan struct{}, h.limits.MaxPipelineInFlight)
	queue := make(chan pending, h.limits.MaxPipelineInFlight)
	senderDone := make(chan struct{})
	var sendErr error
	flushes := rpcserver.Flushes(ctx)
	go func() {
		defer close(senderDone)
		defer flushes.Release()
		for {
			var p pending
			select {
			case p = <-queue:
			default:
				flushes.Release() // nothing queued: send what is held
				p = <-queue
			}
			if p.resp == nil {
				return // queue closed
			}
			if p.remote != nil {
				if len(p.remote) == 0 {
					flushes.Release()
				}
				p.resp.Result = <-p.remote
			}
			if p.rev > 0 {
				if !h.dur.Done(p.rev) {
					flushes.Release()
				}
				if err := h.dur.Wait(ctx, p.rev); err != nil {
					p.resp.Result = errorResult(unconfirmedError(err))
				}
			}
			flushes.Hold(len(queue) > 0)
			if sendErr = stream.Send(p.resp); sendErr != nil {
				return
			}
			<-slots
		}
	}()

	remote := newRemoteOps(h.router.self)
	recvErr := func() error {
		defer close(queue)
		defer remote.close()
		for {
			select {
			case slots <- struct{}{}:
			case <-senderDone:
				return nil // the stream is broken; sendErr says why
			}
			req, err := stream.Receive()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			p := pending{resp: &kvv1.PipelineResponse{Id: req.GetId()}}
			op := req.GetOperation()
			client, err := h.router.target(stream.RequestHeader(), coord.OperationKey(op))
			if err == nil && client == nil {
				err = h.reserveFor(ctx, op)
			}
			switch {
			case err != nil:
				p.resp.Result = errorResult(err)
			case client != nil:
				// Another node owns the key: its operations go to it in order,
				// batched, without holding up the rest; the sender answers in
				// arrival order.
				p.remote = make(chan *kvv1.OperationResult, 1)
				remote.send(ctx, client, op, p.remote)
			default:
				p.resp.Result, p.rev = h.applyAdmitted(op)
			}
			select {
			case queue <- p:
			case <-senderDone:
				return nil // the stream is broken; sendErr says why
			}
		}
	}()
	<-senderDone
	if sendErr != nil {
		return sendErr
	}
	return recvErr
}

// reserveFor prepares for op like reserve when it is a write; reads need
// nothing.
func (h *handler) reserveFor(ctx context.Context, op *kvv1.Operation) error {
	if op.GetGet() != nil {
		return nil
	}
	return h.reserve(ctx, coord.OperationKey(op))
}

// reserve prepares this node to apply a write to key: the cluster records
// that it holds data, and the log makes room. The error is the call's
// answer.
func (h *handler) reserve(ctx context.Context, key string) error {
	if err := h.router.beforeWrite(ctx, key); err != nil {
		return err
	}
	if err := h.dur.Reserve(ctx); err != nil {
		return refusedError(err)
	}
	return nil
}

// applyAdmitted runs op like apply once the router admits it: a write to a
// key frozen for a move, or that this node no longer owns, fails alone, and
// so does a read of a frozen key.
func (h *handler) applyAdmitted(op *kvv1.Operation) (*kvv1.OperationResult, int64) {
	if op == nil {
		return h.apply(op)
	}
	if op.GetGet() != nil {
		if err := h.router.readable(op.GetGet().GetKey()); err != nil {
			return errorResult(err), 0
		}
		return h.apply(op)
	}
	release, err := h.router.admit(coord.OperationKey(op))
	if err != nil {
		return errorResult(err), 0
	}
	defer release()
	return h.apply(op)
}

// apply validates and runs one Batch or Pipeline operation. Failures become
// the operation's result rather than an error, so they never end the call.
// rev is the revision the caller must wait for before acknowledging the
// result (0 when there is nothing to wait for).
func (h *handler) apply(op *kvv1.Operation) (_ *kvv1.OperationResult, rev int64) {
	if op == nil {
		return errorResult(connect.NewError(connect.CodeInvalidArgument, errors.New("operation: value is required"))), 0
	}
	if err := h.validator.Validate(op); err != nil {
		return errorResult(validationError(err)), 0
	}
	if err := h.limits.checkOperation(op); err != nil {
		return errorResult(err), 0
	}
	switch o := op.GetOp().(type) {
	case *kvv1.Operation_Get:
		return &kvv1.OperationResult{Result: &kvv1.OperationResult_Get{Get: h.get(o.Get)}}, 0
	case *kvv1.Operation_Put:
		resp, err := h.put(o.Put)
		if err != nil {
			return errorResult(err), 0
		}
		return &kvv1.OperationResult{Result: &kvv1.OperationResult_Put{Put: resp}}, resp.GetRevision()
	case *kvv1.Operation_Delete:
		resp, err := h.delete(o.Delete)
		if err != nil {
			return errorResult(err), 0
		}
		return &kvv1.OperationResult{Result: &kvv1.OperationResult_Delete{Delete: resp}}, resp.GetRevision()
	default:
		// Validation requires one of the known operations, so this is an
		// operation added to the schema but not to this switch.
		return errorResult(connect.NewError(connect.CodeUnimplemented, fmt.Errorf("operation %T is not supported", o))), 0
	}
}

func (h *handler) get(req *kvv1.GetRequest) *kvv1.GetResponse {
	e, ok := h.store.Get(req.GetKey())
	if !ok {
		return &kvv1.GetResponse{}
	}
	ttl, expire := ttlOf(e.ExpireTime, h.now())
	return &kvv1.GetResponse{
		Found:      true,
		Value:      e.Value,
		Revision:   e.ModRevision,
		Ttl:        ttl,
		ExpireTime: expire,
	}
}

func (h *handler) put(req *kvv1.PutRequest) (*kvv1.PutResponse, error) {
	if n := len(req.GetValue()); n > h.maxValueBytes {
		return nil, valueTooLarge(n, h.maxValueBytes)
	}
	opts := store.PutOptions{KeepTTL: req.GetKeepTtl()}
	if req.GetTtl() != nil {
		opts.TTL = req.GetTtl().AsDuration()
	}
	switch c := req.GetCondition().(type) {
	case *kvv1.PutRequest_IfAbsent:
		opts.Condition = store.IfAbsent()
	case *kvv1.PutRequest_IfPresent:
		opts.Condition = store.IfPresent()
	case *kvv1.PutRequest_IfRevision:
		opts.Condition = store.IfRevision(c.IfRevision)
	}
	res, err := h.store.Put(req.GetKey(), req.GetValue(), opts)
	if errors.Is(err, store.ErrConditionFailed) {
		return nil, conditionFailed(res.HadPrevious, res.Previous.ModRevision)
	}
	if err != nil {
		return nil, storeError(err)
	}
	resp := &kvv1.PutResponse{Revision: res.Revision}
	if req.GetReturnPrevious() && res.HadPrevious {
		resp.Previous = keyValue(res.Previous, h.now(), false)
	}
	return resp, nil
}

func (h *handler) delete(req *kvv1.DeleteRequest) (*kvv1.DeleteResponse, error) {
	var cond store.Condition
	switch c := req.GetCondition().(type) {
	case *kvv1.DeleteRequest_IfPresent:
		cond = store.IfPresent()
	case *kvv1.DeleteRequest_IfRevision:
		cond = store.IfRevision(c.IfRevision)
	}
	res, err := h.store.Delete(req.GetKey(), cond)
	if errors.Is(err, store.ErrConditionFailed) {
		return nil, conditionFailed(res.Previous.ModRevision != 0, res.Previous.ModRevision)
	}
	if err != nil {
		return nil, storeError(err)
	}
	resp := &kvv1.DeleteResponse{Found: res.Deleted, Revision: res.Revision}
	if req.GetReturnPrevious() && res.Deleted {
		resp.Previous = keyValue(res.Previous, h.now(), false)
	}
	return resp, nil
}

// keyValue converts a store entry for the wire. Remaining TTLs are computed
// against now, which must not be earlier than the instant the entry was read.
func keyValue(e store.Entry, now time.Time, keysOnly bool) *kvv1.KeyValue {
	kv := &kvv1.KeyValue{Key: e.Key, Revision: e.ModRevision}
	if !keysOnly {
		kv.Value = e.Value
	}
	kv.Ttl, kv.ExpireTime = ttlOf(e.ExpireTime, now)
	return kv
}

// ttlOf returns the remaining TTL and the expiry of a key, both nil when the
// key has no TTL.
func ttlOf(expire, now time.Time) (*durationpb.Duration, *timestamppb.Timestamp) {
	if expire.IsZero() {
		return nil, nil
	}
	// The store hides expired keys, but the clock may have moved since the
	// read; report zero rather than a negative time left.
	return durationpb.New(max(expire.Sub(now), 0)), timestamppb.New(expire)
}
