package rpcserver

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestWorkersReuseGoroutines(t *testing.T) {
	var calls int
	p := newWorkers(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		w.WriteHeader(http.StatusTeapot)
	}))
	defer p.Close()
	for range 100 {
		rec := httptest.NewRecorder()
		p.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
		if rec.Code != http.StatusTeapot {
			t.Fatalf("status %d, want %d", rec.Code, http.StatusTeapot)
		}
	}
	if calls != 100 {
		t.Fatalf("handler ran %d times, want 100", calls)
	}
	// Calls one after another find an earlier worker idle, unless they
	// come before it is back to waiting; not one in a hundred should.
	if n := p.started.Load(); n >= 100 {
		t.Fatalf("started %d workers for 100 sequential calls: none was reused", n)
	}
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

func TestWorkersExitOnClose(t *testing.T) {
	before := runtime.NumGoroutine()
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
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after Close, %d before the workers started", runtime.NumGoroutine(), before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
