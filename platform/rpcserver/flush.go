package rpcserver

import (
	"context"
	"net/http"
)

// CoalesceFlushes lets the handlers of the given procedures (paths such as
// "/flux.kv.v1.KVService/Pipeline") hold back the flush that Connect does
// after every message a stream sends, so that messages sent in a burst
// leave in one write instead of one write each. Handlers opt in with
// Flushes; the others are unaffected.
func CoalesceFlushes(h http.Handler, procedures ...string) http.Handler {
	paths := make(map[string]struct{}, len(procedures))
	for _, p := range procedures {
		paths[p] = struct{}{}
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, ok := w.(http.Flusher)
		if _, coalesce := paths[r.URL.Path]; !coalesce || !ok {
			h.ServeHTTP(w, r)
			return
		}
		fw := &FlushControl{ResponseWriter: w, flusher: f}
		h.ServeHTTP(fw, r.WithContext(context.WithValue(r.Context(), flushKey{}, fw)))
	})
}

type flushKey struct{}

// Flushes returns the flush control of the call ctx belongs to, or nil when
// its procedure is not one CoalesceFlushes covers. A nil control's methods
// do nothing, so handlers need not check.
func Flushes(ctx context.Context) *FlushControl {
	fc, _ := ctx.Value(flushKey{}).(*FlushControl)
	return fc
}

// FlushControl is a response writer whose flushes a handler may hold. It
// must be used from the goroutine that sends the stream's messages, like
// the stream itself.
type FlushControl struct {
	http.ResponseWriter
	flusher http.Flusher
	hold    bool
	pending bool // a flush was held
}

// Hold says whether the flushes that follow wait: true when the handler
// knows more messages follow at once, false for the last of a burst, whose
// flush also sends every held one.
func (c *FlushControl) Hold(hold bool) {
	if c != nil {
		c.hold = hold
	}
}

// Flush flushes unless flushes are held. It is what Connect calls after
// each message.
func (c *FlushControl) Flush() {
	if c.hold {
		c.pending = true
		return
	}
	c.pending = false
	c.flusher.Flush()
}

// Release flushes at once if a flush was held, as a handler must before it
// blocks, so held messages do not wait on it.
func (c *FlushControl) Release() {
	if c != nil && c.pending {
		c.pending = false
		c.flusher.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (c *FlushControl) Unwrap() http.ResponseWriter { return c.ResponseWriter }
