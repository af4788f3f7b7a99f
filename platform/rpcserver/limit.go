package rpcserver

import (
	"net/http"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// LimitRequestBodies caps the size of request bodies at maxBytes before any
// decoding, with http.MaxBytesHandler, for every path except the
// client-streaming and bidi methods of the given services: their bodies are
// streams of messages whose total has no useful bound. Per-message limits
// (connect.WithReadMaxBytes) still apply to those.
func LimitRequestBodies(h http.Handler, maxBytes int64, services ...protoreflect.ServiceDescriptor) http.Handler {
	limited := http.MaxBytesHandler(h, maxBytes)
	streaming := make(map[string]struct{})
	for _, svc := range services {
		methods := svc.Methods()
		for i := range methods.Len() {
			m := methods.Get(i)
			if m.IsStreamingClient() {
				streaming["/"+string(svc.FullName())+"/"+string(m.Name())] = struct{}{}
			}
		}
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := streaming[r.URL.Path]; ok {
			h.ServeHTTP(w, r)
			return
		}
		limited.ServeHTTP(w, r)
	})
}
