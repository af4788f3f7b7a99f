package rpcserver

import (
	"fmt"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// maxWorkers bounds the goroutines a server keeps for running handlers.
// Calls beyond it run on the goroutine the HTTP server gave them.
const maxWorkers = 256

// workers runs handler calls on goroutines it keeps, instead of on the
// fresh goroutine the HTTP/2 server starts for every stream.
//
// A fresh goroutine starts with a small stack, and the handler chain
// (CORS, limits, Connect, interceptors, protobuf decoding) outgrows it:
// profiles of a node under load showed about a tenth of its CPU time in
// stack growth (runtime.copystack). A kept goroutine grows its stack once.
// The idea is gRPC-Go's server option NumStreamWorkers.
//
// Workers are started on demand, up to maxWorkers, and handed a call only
// when one is idle; a call that finds none runs where it is, so long
// streams holding workers never queue other calls. A panic in the handler
// is raised again on the calling goroutine, where the HTTP server expects
// it; a handler that calls runtime.Goexit ends its worker, and the caller
// panics with http.ErrAbortHandler, which the HTTP server takes as an
// aborted response.
type workers struct {
	h       http.Handler
	tasks   chan *task // unbuffered: a send succeeds only when a worker waits
	started atomic.Int32
	quit    chan struct{}
	stop    sync.Once
	pool    sync.Pool // of *task
}

// task is one handler call and its outcome.
type task struct {
	w        http.ResponseWriter
	r        *http.Request
	done     chan struct{}
	panicked any
}

func newWorkers(h http.Handler) *workers {
	p := &workers{h: h, tasks: make(chan *task), quit: make(chan struct{})}
	p.pool.New = func() any { return &task{done: make(chan struct{}, 1)} }
	return p
}

func (p *workers) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	t := p.pool.Get().(*task)
	t.w, t.r = w, r
	select {
	case p.tasks <- t:
	default:
		if p.started.Add(1) > maxWorkers {
			p.started.Add(-1)
			t.w, t.r = nil, nil
			p.pool.Put(t)
			p.h.ServeHTTP(w, r)
			return
		}
		go p.work(t)
	}
	<-t.done
	v := t.panicked
	t.w, t.r, t.panicked = nil, nil, nil
	p.pool.Put(t)
	if v != nil {
		panic(v)
	}
}

// work runs first, then every task it receives until Close.
func (p *workers) work(first *task) {
	for t := first; ; {
		p.run(t)
		select {
		case t = <-p.tasks:
		case <-p.quit:
			return
		}
	}
}

func (p *workers) run(t *task) {
	returned := false
	defer func() {
		if !returned {
			switch v := recover(); {
			case v == nil:
				// Not a panic (panic(nil) recovers a *runtime.PanicNilError)
				// but runtime.Goexit: this goroutine ends once the deferred
				// calls are done, so it is no longer a worker. The HTTP
				// server would have ended the response; an abort does.
				p.started.Add(-1)
				t.panicked = http.ErrAbortHandler
			case v == http.ErrAbortHandler:
				t.panicked = v
			default:
				// The stack is the worker's; the HTTP server logs the one
				// of the goroutine that raises the panic again.
				t.panicked = fmt.Errorf("%v\n\nhandler goroutine:\n%s", v, debug.Stack())
			}
		}
		t.done <- struct{}{}
	}()
	p.h.ServeHTTP(t.w, t.r)
	returned = true
}

// Close lets idle workers exit; busy ones exit when their call returns.
func (p *workers) Close() { p.stop.Do(func() { close(p.quit) }) }
