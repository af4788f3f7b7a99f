package rpcserver_test

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/fluxkv/fluxkv/platform/rpcserver"
)

func TestCoalesceFlushes(t *testing.T) {
	var steps []bool // whether the writer had flushed after each step
	var rec *httptest.ResponseRecorder
	h := rpcserver.CoalesceFlushes(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fc := rpcserver.Flushes(r.Context())
		if r.URL.Path != "/svc/Stream" {
			if fc != nil {
				t.Errorf("%s has a flush control", r.URL.Path)
			}
			fc.Hold(true) // a nil control does nothing
			w.(http.Flusher).Flush()
			steps = append(steps, rec.Flushed)
			return
		}
		if fc == nil {
			t.Fatal("the coalesced procedure has no flush control")
		}
		fc.Hold(true)
		_, _ = w.Write([]byte("a"))
		w.(http.Flusher).Flush() // held
		steps = append(steps, rec.Flushed)
		fc.Release() // sends the held flush
		steps = append(steps, rec.Flushed)
		rec.Flushed = false
		fc.Release() // nothing held: no flush
		steps = append(steps, rec.Flushed)
		fc.Hold(false)
		w.(http.Flusher).Flush()
		steps = append(steps, rec.Flushed)
		if http.NewResponseController(w).Flush() != nil {
			t.Error("ResponseController cannot reach the writer")
		}
	}), "/svc/Stream")

	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/svc/Stream", nil))
	if want := []bool{false, true, false, true}; !slices.Equal(steps, want) {
		t.Errorf("flushed after each step: %v, want %v", steps, want)
	}
	steps = nil
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/svc/Other", nil))
	if want := []bool{true}; !slices.Equal(steps, want) {
		t.Errorf("another procedure flushed: %v, want %v", steps, want)
	}
}
