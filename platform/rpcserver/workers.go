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
// it.
type workers struct {
	h       http.Handler
	tasks   chan *task // unbuffered: a send succeeds only when a worker waits
	started atomic.Int32
	quit    chan struct{}
	stop    sync.Once
}

// task is one handler call and its outcome.
type task struct {
	w        http.ResponseWriter
	r        *http.Request
	done     chan struct{}
	panicked any
}

var taskPool = sync.Pool{New: func() any { return &task{done: make(chan struct{}, 1)} }}

func newWorkers(h http.Handler) *workers {
	return &workers{h: h, tasks: make(chan *task), quit: make(chan struct{})}
}

func (p *workers) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	t := taskPool.Get().(*task)
	t.w, t.r = w, r
	select {
	case p.tasks <- t:
	default:
		if p.started.Add(1) > maxWorkers {
			p.started.Add(-1)
			t.w, t.r = nil, nil
			taskPool.Put(t)
			p.h.ServeHTTP(w, r)
			return
		}
		go p.work(t)
	}
	<-t.done
	v := t.panicked
	t.w, t.r, t.panicked = nil, nil, nil
	taskPool.Put(t)
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
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				t.panicked = v
			} else {
				// The stack is the worker's; the HTTP server logs the one
				// of the goroutine that raises the panic again.
				t.panicked = fmt.Errorf("%v\n\nhandler goroutine:\n%s", v, debug.Stack())
			}
		}
		t.done <- struct{}{}
	}()
	p.h.ServeHTTP(t.w, t.r)
}

// Close lets idle workers exit; busy ones exit when their call returns.
func (p *workers) Close() { p.stop.Do(func() { close(p.quit) }) }
