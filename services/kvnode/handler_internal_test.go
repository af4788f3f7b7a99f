package kvnode

import (
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"buf.build/go/protovalidate"
	"connectrpc.com/connect"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/changelog"
	"github.com/fluxkv/fluxkv/platform/rpcserver"
	"github.com/fluxkv/fluxkv/platform/store"
)

// unconfirming is a log that accepts writes but never confirms them.
type unconfirming struct{}

func (unconfirming) Reserve(context.Context) error     { return nil }
func (unconfirming) Wait(context.Context, int64) error { return changelog.ErrStalled }
func (unconfirming) Done(int64) bool                   { return false }

// TestPipelineFailsUnconfirmedWritesAlone: when the log cannot confirm a
// write, that operation gets an error result and the stream goes on, so a
// client waiting for each answer is never left hanging.
func TestPipelineFailsUnconfirmedWritesAlone(t *testing.T) {
	t.Parallel()
	st := store.New()
	defer st.Close()
	validator, err := protovalidate.New()
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(kvv1connect.NewKVServiceHandler(newHandler(st, validator, 1<<20, Limits{}, time.Now, unconfirming{}, nil, &router{self: "solo"})))
	srv, err := rpcserver.Listen("127.0.0.1:0", mux, rpcserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	defer srv.Close()
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	transport := &http.Transport{Protocols: &protocols}
	defer transport.CloseIdleConnections()
	client := kvv1connect.NewKVServiceClient(&http.Client{Transport: transport}, srv.URL(), connect.WithGRPC())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream := client.Pipeline(ctx)
	ops := []*kvv1.Operation{
		{Op: &kvv1.Operation_Put{Put: &kvv1.PutRequest{Key: "k", Value: []byte("v")}}},
		{Op: &kvv1.Operation_Get{Get: &kvv1.GetRequest{Key: "k"}}},
	}
	for i, op := range ops {
		// One at a time, waiting for each answer, as a cautious client does.
		if err := stream.Send(&kvv1.PipelineRequest{Id: uint64(i), Operation: op}); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Receive()
		if err != nil {
			t.Fatalf("#%d: receive: %v", i, err)
		}
		if i == 0 && resp.GetResult().GetError().GetCode() != "unknown" {
			t.Errorf("#0: unconfirmed put: got %v, want an unknown-outcome error", resp.GetResult())
		}
		if i == 1 && !resp.GetResult().GetGet().GetFound() {
			t.Errorf("#1: get after an unconfirmed put: got %v", resp.GetResult())
		}
	}
	if err := stream.CloseRequest(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Receive(); !errors.Is(err, io.EOF) {
		t.Errorf("end of stream: got %v, want EOF", err)
	}
}
