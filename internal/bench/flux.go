package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"connectrpc.com/connect"

	"github.com/fluxkv/fluxkv/client"
	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
)

// fluxTarget is Flux-KV, reached through KVService clients for one
// endpoint or through the SDK.
type fluxTarget struct {
	info  TargetInfo
	kv    []kvv1connect.KVServiceClient // one per connection; nil with the SDK
	https []*http.Client
	sdk   []*client.Client // one per connection; nil without the SDK
}

// NewFlux returns a target that sends every request to the Flux-KV node or
// gateway at baseURL. Workers take turns over clients, one per connection:
// give each its own transport. opts choose the protocol and protocol names
// it in the summary. The target owns the clients: Close closes their idle
// connections.
func NewFlux(baseURL, protocol string, clients []*http.Client, opts ...connect.ClientOption) Target {
	t := &fluxTarget{
		info:  TargetInfo{Name: "flux", Endpoint: baseURL, Protocol: protocol, Connections: len(clients)},
		https: clients,
	}
	for _, hc := range clients {
		t.kv = append(t.kv, kvv1connect.NewKVServiceClient(hc, baseURL, opts...))
	}
	return t
}

// NewFluxSDK returns a target that routes each key to the node that owns
// it, through the Go SDK, which discovers the cluster with etcd. It opens
// one SDK client (and so one set of connections) per connection; ctx bounds
// their first load of the membership. opts choose the protocol (the SDK
// speaks gRPC unless told gRPC-Web), TLS and the like; protocol names it.
// The SDK has no Pipeline: the target refuses that workload.
func NewFluxSDK(ctx context.Context, etcd []string, connections int, protocol string, opts ...client.Option) (Target, error) {
	t := &fluxTarget{info: TargetInfo{Name: "flux", Endpoint: "etcd:" + strings.Join(etcd, ","), Protocol: protocol, Connections: connections}}
	for range connections {
		c, err := client.New(ctx, append([]client.Option{client.WithEtcd(etcd...)}, opts...)...)
		if err != nil {
			_ = t.Close()
			return nil, connect.NewError(connect.CodeUnavailable, err)
		}
		t.sdk = append(t.sdk, c)
	}
	return t, nil
}

func (t *fluxTarget) Info() TargetInfo { return t.info }

func (t *fluxTarget) Close() error {
	for _, hc := range t.https {
		hc.CloseIdleConnections()
	}
	var errs []error
	for _, c := range t.sdk {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

func (t *fluxTarget) conns() int { return max(len(t.kv), len(t.sdk)) }

// batch runs ops as one Batch call over connection i.
func (t *fluxTarget) batch(ctx context.Context, i int, ops []*kvv1.Operation) ([]*kvv1.OperationResult, error) {
	if t.sdk != nil {
		return t.sdk[i].Batch(ctx, ops)
	}
	resp, err := t.kv[i].Batch(ctx, connect.NewRequest(&kvv1.BatchRequest{Operations: ops}))
	if err != nil {
		return nil, err
	}
	return resp.Msg.GetResults(), nil
}

// preloadBytes bounds the size of one preload Batch call, well under the
// servers' message limit.
const preloadBytes = 512 << 10

func (t *fluxTarget) Preload(ctx context.Context, keys *Keyspace, value []byte) error {
	chunk := min(1000, max(1, preloadBytes/(keys.width+len(value)+16)))
	return preload(ctx, keys.Len(), chunk, 4*t.conns(), func(i, from, to int) error {
		ops := make([]*kvv1.Operation, 0, to-from)
		for k := from; k < to; k++ {
			ops = append(ops, &kvv1.Operation{Op: &kvv1.Operation_Put{Put: &kvv1.PutRequest{Key: keys.Key(k), Value: value}}})
		}
		results, err := t.batch(ctx, i%t.conns(), ops)
		if err != nil {
			return err
		}
		for j, r := range results {
			if e := r.GetError(); e != nil {
				return fmt.Errorf("put %s: %s: %s", keys.Key(from+j), e.GetCode(), e.GetMessage())
			}
		}
		if len(results) != len(ops) {
			return fmt.Errorf("batch of %d puts answered %d results", len(ops), len(results))
		}
		return nil
	})
}

// preload calls put(worker, from, to) for consecutive chunks of n keys
// from parallel workers, and returns the first error.
func preload(ctx context.Context, n, chunk, parallel int, put func(worker, from, to int) error) error {
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		once sync.Once
		err  error
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for w := range min(parallel, (n+chunk-1)/chunk) {
		wg.Go(func() {
			for ctx.Err() == nil {
				from := int(next.Add(int64(chunk))) - chunk
				if from >= n {
					return
				}
				if e := put(w, from, min(from+chunk, n)); e != nil {
					once.Do(func() { err = e; cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	if err == nil {
		err = ctx.Err()
	}
	return err
}

// FluxMaxKeySize is the longest key, in bytes, the Flux-KV API accepts.
const FluxMaxKeySize = 1024

func (t *fluxTarget) NewWorker(i int, cfg *Config, value []byte) (Worker, error) {
	if cfg.KeySize > FluxMaxKeySize {
		return nil, fmt.Errorf("keys of %d bytes: Flux-KV takes keys of at most %d bytes", cfg.KeySize, FluxMaxKeySize)
	}
	w := &fluxWorker{cfg: cfg}
	conn := i % t.conns()
	if t.sdk != nil {
		if cfg.Workload == Pipeline {
			return nil, errors.New("the Go SDK has no Pipeline: send the pipeline workload to one endpoint instead of through etcd")
		}
		w.sdk = t.sdk[conn]
	} else {
		w.kv = t.kv[conn]
	}
	// A worker sends one request at a time, so it builds each kind of
	// message once and only changes the keys.
	w.get = connect.NewRequest(&kvv1.GetRequest{})
	w.put = connect.NewRequest(&kvv1.PutRequest{Value: value})
	w.gets.req = connect.NewRequest(&kvv1.BatchRequest{})
	w.puts.req = connect.NewRequest(&kvv1.BatchRequest{})
	for range cfg.Batch {
		g := &kvv1.GetRequest{}
		w.gets.keys = append(w.gets.keys, &g.Key)
		w.gets.req.Msg.Operations = append(w.gets.req.Msg.Operations, &kvv1.Operation{Op: &kvv1.Operation_Get{Get: g}})
		p := &kvv1.PutRequest{Value: value}
		w.puts.keys = append(w.puts.keys, &p.Key)
		w.puts.req.Msg.Operations = append(w.puts.req.Msg.Operations, &kvv1.Operation{Op: &kvv1.Operation_Put{Put: p}})
	}
	return w, nil
}

// fluxWorker holds one worker's connection and reusable messages.
type fluxWorker struct {
	cfg        *Config
	kv         kvv1connect.KVServiceClient // nil with the SDK
	sdk        *client.Client              // nil without it
	get        *connect.Request[kvv1.GetRequest]
	put        *connect.Request[kvv1.PutRequest]
	gets, puts batchMsg
}

// batchMsg is a Batch request and the key fields of its operations.
type batchMsg struct {
	req  *connect.Request[kvv1.BatchRequest]
	keys []*string
}

func (w *fluxWorker) Run(ctx context.Context, gen *Generator, rec *Recorder) {
	if w.cfg.Workload == Pipeline {
		w.pipeline(ctx, gen, rec)
		return
	}
	for {
		start, ok := rec.Next()
		if !ok {
			return
		}
		var err error
		ops := 1
		switch w.cfg.Workload {
		case Get:
			err = w.doGet(ctx, gen.Key())
		case Put:
			err = w.doPut(ctx, gen.Key())
		case Mixed:
			if gen.Read() {
				err = w.doGet(ctx, gen.Key())
			} else {
				err = w.doPut(ctx, gen.Key())
			}
		case Batch:
			ops, err = w.doBatch(ctx, gen, rec, start)
		}
		switch {
		case err != nil:
			rec.Fail(start, codeName(err))
		case ops > 0:
			rec.Done(start, ops)
		default:
			// Every operation of the Batch call failed: doBatch counted
			// them, and the call is neither a successful request nor timed.
		}
	}
}

// The connect requests are reused: a worker's calls never overlap, and
// the protocol headers connect writes into them are set, not appended.

func (w *fluxWorker) doGet(ctx context.Context, key string) error {
	if w.sdk != nil {
		_, err := w.sdk.Get(ctx, key)
		return err
	}
	w.get.Msg.Key = key
	_, err := w.kv.Get(ctx, w.get)
	return err
}

func (w *fluxWorker) doPut(ctx context.Context, key string) error {
	w.put.Msg.Key = key
	if w.sdk != nil {
		_, err := w.sdk.Put(ctx, w.put.Msg)
		return err
	}
	_, err := w.kv.Put(ctx, w.put)
	return err
}

// doBatch sends one Batch call of gets or puts and returns the number of
// operations that succeeded; those that failed are counted with rec. An
// error means the call itself failed.
func (w *fluxWorker) doBatch(ctx context.Context, gen *Generator, rec *Recorder, start int64) (int, error) {
	b := &w.puts
	if gen.Read() {
		b = &w.gets
	}
	for _, k := range b.keys {
		*k = gen.Key()
	}
	var results []*kvv1.OperationResult
	if w.sdk != nil {
		var err error
		if results, err = w.sdk.Batch(ctx, b.req.Msg.Operations); err != nil {
			return 0, err
		}
	} else {
		resp, err := w.kv.Batch(ctx, b.req)
		if err != nil {
			return 0, err
		}
		results = resp.Msg.GetResults()
	}
	ok := 0
	for _, r := range results {
		if e := r.GetError(); e != nil {
			rec.FailOps(start, wireCodeName(e.GetCode()), 1)
			continue
		}
		ok++
	}
	if missing := len(b.keys) - len(results); missing > 0 {
		rec.FailOps(start, codeNames[connect.CodeInternal], missing)
	}
	return ok, nil
}

// pipeline keeps Depth operations in flight on one Pipeline stream,
// opening a new stream whenever one breaks, until the run is over.
func (w *fluxWorker) pipeline(ctx context.Context, gen *Generator, rec *Recorder) {
	p := &pipe{
		w:      w,
		starts: make([]atomic.Int64, w.cfg.Depth),
		free:   make(chan uint64, w.cfg.Depth),
		getMsg: &kvv1.GetRequest{},
		putMsg: &kvv1.PutRequest{Value: w.put.Msg.Value},
		msg:    &kvv1.PipelineRequest{},
	}
	p.getOp = &kvv1.Operation{Op: &kvv1.Operation_Get{Get: p.getMsg}}
	p.putOp = &kvv1.Operation{Op: &kvv1.Operation_Put{Put: p.putMsg}}
	for !rec.Over() {
		p.stream(ctx, gen, rec)
	}
}

// pipe is the state of a worker's pipeline. Request ids are slot numbers,
// 0 to Depth-1: a slot is free again once its response has arrived.
type pipe struct {
	w            *fluxWorker
	starts       []atomic.Int64 // by slot; written by the sender, read by the receiver
	free         chan uint64    // free slots
	getMsg       *kvv1.GetRequest
	putMsg       *kvv1.PutRequest
	getOp, putOp *kvv1.Operation
	msg          *kvv1.PipelineRequest
	inFlight     []bool // scratch: slots whose operation got no answer
}

// stream runs one Pipeline stream until the run is over or the stream
// breaks; operations still in flight when it breaks count as failed.
func (p *pipe) stream(ctx context.Context, gen *Generator, rec *Recorder) {
	depth := cap(p.free)
	for len(p.free) > 0 {
		<-p.free
	}
	for i := range depth {
		p.free <- uint64(i)
	}
	stream := p.w.kv.Pipeline(ctx)
	recvErr := make(chan error, 1)
	go func() {
		for {
			resp, err := stream.Receive()
			if err != nil {
				recvErr <- err
				return
			}
			id := resp.GetId()
			if id >= uint64(depth) {
				recvErr <- connect.NewError(connect.CodeInternal, fmt.Errorf("response to unknown pipeline id %d", id))
				return
			}
			start := p.starts[id].Load()
			if e := resp.GetResult().GetError(); e != nil {
				rec.Fail(start, wireCodeName(e.GetCode()))
			} else {
				rec.Done(start, 1)
			}
			p.free <- id
		}
	}()

	var err error
	received := false
send:
	for {
		var id uint64
		select {
		case id = <-p.free:
		case err = <-recvErr:
			received = true
			break send
		}
		start, ok := rec.Next()
		if !ok {
			p.free <- id
			break
		}
		p.starts[id].Store(start)
		p.msg.Id = id
		if gen.Read() {
			p.getMsg.Key = gen.Key()
			p.msg.Operation = p.getOp
		} else {
			p.putMsg.Key = gen.Key()
			p.msg.Operation = p.putOp
		}
		if stream.Send(p.msg) != nil {
			// The stream is broken; the receiver learns why. The slot
			// stays taken, so the operation counts as lost below.
			break
		}
	}
	_ = stream.CloseRequest()
	if !received {
		err = <-recvErr
	}
	_ = stream.CloseResponse()

	// The receiver has stopped: slots not free are operations that got no
	// answer.
	if p.inFlight == nil {
		p.inFlight = make([]bool, depth)
	}
	for i := range p.inFlight {
		p.inFlight[i] = true
	}
	for len(p.free) > 0 {
		p.inFlight[<-p.free] = false
	}
	name := codeName(err)
	if errors.Is(err, io.EOF) {
		// The server ended the stream: an error only if it left
		// operations unanswered.
		name = codeNames[connect.CodeInternal]
	}
	lost := 0
	for id, taken := range p.inFlight {
		if taken {
			rec.Fail(p.starts[id].Load(), name)
			lost++
		}
	}
	if lost == 0 && !errors.Is(err, io.EOF) {
		// A stream that broke with nothing in flight counts as one failed
		// request, so that a target refusing every stream shows in the
		// errors and a run bounded by requests still ends.
		if start, ok := rec.Next(); ok {
			rec.Fail(start, name)
		}
	}
}
