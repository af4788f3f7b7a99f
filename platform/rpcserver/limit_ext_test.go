package rpcserver_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/rpcserver"
)

func TestLimitRequestBodies(t *testing.T) {
	t.Parallel()
	const limit = 1024
	// The handler reports how much body it could read.
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte{byte(n >> 8), byte(n)})
	})
	h := rpcserver.LimitRequestBodies(echo, limit, kvv1.File_flux_kv_v1_kv_proto.Services().ByName("KVService"))
	tests := []struct {
		path string
		size int
		want int
	}{
		{kvv1connect.KVServicePutProcedure, limit, http.StatusOK},
		{kvv1connect.KVServicePutProcedure, limit + 1, http.StatusRequestEntityTooLarge},
		{kvv1connect.KVServiceWatchProcedure, limit + 1, http.StatusRequestEntityTooLarge}, // server stream: one request message
		{kvv1connect.KVServicePipelineProcedure, 10 * limit, http.StatusOK},                // client stream: no total bound
		{"/other.v1.Service/Method", limit + 1, http.StatusRequestEntityTooLarge},
	}
	for i, tt := range tests {
		req := httptest.NewRequest(http.MethodPost, tt.path, bytes.NewReader(make([]byte, tt.size)))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tt.want {
			t.Errorf("#%d %s with %d bytes: got status %d, want %d", i, tt.path, tt.size, rec.Code, tt.want)
		}
	}
}
