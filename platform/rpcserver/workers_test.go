package rpcserver

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

func TestWorkersReuseGoroutines(t *testing.T) {
	// In a bubble, synctest.Wait returns once every worker is blocked
	// waiting for a task, so each call below finds the first worker idle
	// whatever the scheduler does.
	synctest.Test(t, func(t *testing.T) {
		var calls int
		p := newWorkers(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			calls++
			w.WriteHeader(http.StatusTeapot)
		}))
		defer p.Close()
		for i := range 100 {
			rec := httptest.NewRecorder()
			p.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
			if rec.Code != http.StatusTeapot {
				t.Fatalf("#%d: status %d, want %d", i, rec.Code, http.StatusTeapot)
			}
			synctest.Wait()
			if n := p.started.Load(); n != 1 {
				t.Fatalf("#%d: %d workers started for sequential calls, each after the last worker was idle; want 1", i, n)
			}
		}
		if calls != 100 {
			t.Fatalf("handler ran %d times, want 100", calls)
		}
	})
}

func TestWorkersAtMostMaxWorkers(t *testing.T) {
	release := make(chan struct{})
	var running sync.WaitGroup
	p := newWorkers(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		running.Done()
		<-release
	}))
	defer p.Close()
	const calls = 2 * maxWorkers
	var done sync.WaitGroup
	running.Add(calls)
	for range calls {
		done.Go(func() { p.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil)) })
	}
	running.Wait()
	if n := p.started.Load(); n > maxWorkers || n < 1 {
		t.Errorf("started %d workers for %d concurrent calls, want 1 to %d", n, calls, maxWorkers)
	}
	close(release)
	done.Wait()
}

func TestWorkersRunInlineWhenAllBusy(t *testing.T) {
	release := make(chan struct{})
	var running sync.WaitGroup
	p := newWorkers(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			running.Done()
			<-release
		}
	}))
	defer p.Close()
	var done sync.WaitGroup
	running.Add(maxWorkers)
	for range maxWorkers {
		done.Go(func() { p.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/block", nil)) })
	}
	running.Wait()
	// Every worker is busy and none may be added: this call runs on its own
	// goroutine rather than waiting for one.
	finished := make(chan struct{})
	go func() {
		p.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/quick", nil))
		close(finished)
	}()
	select {
	case <-finished:
	case <-time.After(10 * time.Second):
		t.Fatal("a call waited for a busy worker")
	}
	if n := p.started.Load(); n != maxWorkers {
		t.Fatalf("started %d workers, want %d", n, maxWorkers)
	}
	close(release)
	done.Wait()
}

func TestWorkersRaisePanicsOnTheCaller(t *testing.T) {
	p := newWorkers(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/abort" {
			panic(http.ErrAbortHandler)
		}
		panic("boom")
	}))
	defer p.Close()
	recovered := func(path string) (v any) {
		defer func() { v = recover() }()
		p.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", path, nil))
		return nil
	}
	v := recovered("/boom")
	err, ok := v.(error)
	if !ok || !strings.HasPrefix(err.Error(), "boom") || !strings.Contains(err.Error(), "handler goroutine:") {
		t.Fatalf("panic value %v, want boom with the handler's stack", v)
	}
	// The HTTP server treats ErrAbortHandler specially, so it stays itself.
	if v := recovered("/abort"); v != http.ErrAbortHandler {
		t.Fatalf("panic value %v, want http.ErrAbortHandler", v)
	}
	if v, ok := recovered("/boom").(error); !ok || errors.Is(v, http.ErrAbortHandler) {
		t.Fatalf("a worker that recovered a panic serves again: got %v", v)
	}
}

func TestWorkersGoexit(t *testing.T) {
	p := newWorkers(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/exit" {
			runtime.Goexit()
		}
		w.WriteHeader(http.StatusTeapot)
	}))
	defer p.Close()
	recovered := func(path string) (code int, v any) {
		defer func() { v = recover() }()
		rec := httptest.NewRecorder()
		p.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec.Code, nil
	}
	// The handler's goroutine is gone: the caller aborts the response, as
	// the HTTP server does when a handler on its own goroutine exits.
	if _, v := recovered("/exit"); v != http.ErrAbortHandler {
		t.Fatalf("panic value %v after runtime.Goexit, want http.ErrAbortHandler", v)
	}
	if n := p.started.Load(); n != 0 {
		t.Fatalf("%d workers counted after the only one exited, want 0", n)
	}
	if code, v := recovered("/"); v != nil || code != http.StatusTeapot {
		t.Fatalf("next call: status %d, panic %v; want %d", code, v, http.StatusTeapot)
	}
}

func TestWorkersExitOnClose(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	release := make(chan struct{})
	var running sync.WaitGroup
	p := newWorkers(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		running.Done()
		<-release
	}))
	var done sync.WaitGroup
	running.Add(8)
	for range 8 {
		done.Go(func() { p.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil)) })
	}
	running.Wait()
	close(release)
	done.Wait()
	p.Close()
}
