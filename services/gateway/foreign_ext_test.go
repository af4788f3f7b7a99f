package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpcreflect"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	routingv1 "github.com/fluxkv/fluxkv/gen/flux/routing/v1"
	"github.com/fluxkv/fluxkv/platform/discovery"
	"github.com/fluxkv/fluxkv/platform/ring"
	"github.com/fluxkv/fluxkv/services/gateway"
)

// The foreign service: a team's echo service that Flux-KV has never been
// compiled with. Its schema exists only here, built in code, and the gateway
// learns it by reflection from a running instance.
const (
	echoServiceName = "acme.echo.v1.EchoService"
	echoProcedure   = "/" + echoServiceName + "/Echo"
	countProcedure  = "/" + echoServiceName + "/Count"
)

// echoFiles holds the echo file and the files it imports, which is what its
// servers answer reflection from.
var echoFiles = sync.OnceValue(func() *protoregistry.Files {
	shardKey := &descriptorpb.FieldOptions{}
	proto.SetExtension(shardKey, routingv1.E_ShardKey, true)
	newField := func(name string, number int32, typ descriptorpb.FieldDescriptorProto_Type, opts *descriptorpb.FieldOptions) *descriptorpb.FieldDescriptorProto {
		return &descriptorpb.FieldDescriptorProto{
			Name: proto.String(name), JsonName: proto.String(name), Number: proto.Int32(number),
			Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(), Type: typ.Enum(), Options: opts,
		}
	}
	str, i32 := descriptorpb.FieldDescriptorProto_TYPE_STRING, descriptorpb.FieldDescriptorProto_TYPE_INT32
	fdp := &descriptorpb.FileDescriptorProto{
		Name:       proto.String("acme/echo/v1/echo.proto"),
		Package:    proto.String("acme.echo.v1"),
		Syntax:     proto.String("proto3"),
		Dependency: []string{routingv1.File_flux_routing_v1_routing_proto.Path()},
		MessageType: []*descriptorpb.DescriptorProto{
			{Name: proto.String("EchoRequest"), Field: []*descriptorpb.FieldDescriptorProto{
				newField("key", 1, str, shardKey), // routes the request: the ring owner of its value answers
				newField("text", 2, str, nil),
				newField("count", 3, i32, nil), // how many responses Count streams
			}},
			{Name: proto.String("EchoResponse"), Field: []*descriptorpb.FieldDescriptorProto{
				newField("instance", 1, str, nil), // the id of the instance that answered
				newField("key", 2, str, nil),
				newField("text", 3, str, nil),
				newField("seq", 4, i32, nil),
			}},
		},
		Service: []*descriptorpb.ServiceDescriptorProto{{
			Name: proto.String("EchoService"),
			Method: []*descriptorpb.MethodDescriptorProto{
				{
					Name: proto.String("Echo"), InputType: proto.String(".acme.echo.v1.EchoRequest"), OutputType: proto.String(".acme.echo.v1.EchoResponse"),
					Options: &descriptorpb.MethodOptions{IdempotencyLevel: descriptorpb.MethodOptions_NO_SIDE_EFFECTS.Enum()},
				},
				{
					Name: proto.String("Count"), InputType: proto.String(".acme.echo.v1.EchoRequest"), OutputType: proto.String(".acme.echo.v1.EchoResponse"),
					ServerStreaming: proto.Bool(true),
				},
			},
		}},
	}
	fd, err := protodesc.NewFile(fdp, protoregistry.GlobalFiles)
	if err != nil {
		panic(fmt.Sprintf("echo schema: %v", err))
	}
	files := new(protoregistry.Files)
	for _, f := range []protoreflect.FileDescriptor{descriptorpb.File_google_protobuf_descriptor_proto, routingv1.File_flux_routing_v1_routing_proto, fd} {
		if err := files.RegisterFile(f); err != nil {
			panic(fmt.Sprintf("echo schema: %v", err))
		}
	}
	return files
})

func echoService() protoreflect.ServiceDescriptor {
	d, err := echoFiles().FindDescriptorByName(echoServiceName)
	if err != nil {
		panic(err)
	}
	return d.(protoreflect.ServiceDescriptor)
}

func echoMethod(name protoreflect.Name) protoreflect.MethodDescriptor {
	return echoService().Methods().ByName(name)
}

// initializer makes connect decode into dynamic messages of desc.
func initializer(desc protoreflect.MessageDescriptor) func(connect.Spec, any) error {
	return func(_ connect.Spec, msg any) error {
		dm, ok := msg.(*dynamicpb.Message)
		if !ok {
			return fmt.Errorf("unexpected message type %T", msg)
		}
		*dm = *dynamicpb.NewMessage(desc)
		return nil
	}
}

func echoRequest(key, text string, count int32) *dynamicpb.Message {
	in := echoMethod("Echo").Input()
	msg := dynamicpb.NewMessage(in)
	if key != "" {
		msg.Set(in.Fields().ByName("key"), protoreflect.ValueOfString(key))
	}
	msg.Set(in.Fields().ByName("text"), protoreflect.ValueOfString(text))
	msg.Set(in.Fields().ByName("count"), protoreflect.ValueOfInt32(count))
	return msg
}

// field reads a field of a dynamic message by name.
func field(msg *dynamicpb.Message, name protoreflect.Name) protoreflect.Value {
	return msg.Get(msg.Descriptor().Fields().ByName(name))
}

// echoClient is a dynamic client of one echo method at baseURL.
func echoClient(t testing.TB, baseURL, procedure string, opts ...connect.ClientOption) *connect.Client[dynamicpb.Message, dynamicpb.Message] {
	t.Helper()
	md := echoMethod(protoreflect.Name(procedure[strings.LastIndexByte(procedure, '/')+1:]))
	opts = append([]connect.ClientOption{connect.WithSchema(md), connect.WithResponseInitializer(initializer(md.Output()))}, opts...)
	return connect.NewClient[dynamicpb.Message, dynamicpb.Message](h2cClient(t), baseURL+procedure, opts...)
}

// echoServer is one instance of the echo service.
type echoServer struct {
	id     string
	addr   string
	srv    *http.Server
	served chan struct{}
	calls  atomic.Int64 // Echo calls answered
}

// startEcho serves the echo service as instance id on addr (port 0 picks
// one), with gRPC reflection, until the test ends or stop is called.
func startEcho(t testing.TB, id, addr string) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{id: id, addr: ln.Addr().String(), served: make(chan struct{})}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	s.srv = &http.Server{Handler: s.handler(), Protocols: &protocols, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(s.served)
		_ = s.srv.Serve(ln)
	}()
	t.Cleanup(s.stop)
	return s
}

// stop kills the instance: its listener and connections close at once.
func (s *echoServer) stop() {
	_ = s.srv.Close()
	<-s.served
}

func (s *echoServer) handler() http.Handler {
	echo, count := echoMethod("Echo"), echoMethod("Count")
	respond := func(req *dynamicpb.Message, seq int32) *dynamicpb.Message {
		out := dynamicpb.NewMessage(echo.Output())
		out.Set(out.Descriptor().Fields().ByName("instance"), protoreflect.ValueOfString(s.id))
		out.Set(out.Descriptor().Fields().ByName("key"), field(req, "key"))
		out.Set(out.Descriptor().Fields().ByName("text"), field(req, "text"))
		out.Set(out.Descriptor().Fields().ByName("seq"), protoreflect.ValueOfInt32(seq))
		return out
	}
	mux := http.NewServeMux()
	mux.Handle(echoProcedure, connect.NewUnaryHandler(echoProcedure,
		func(_ context.Context, req *connect.Request[dynamicpb.Message]) (*connect.Response[dynamicpb.Message], error) {
			s.calls.Add(1)
			return connect.NewResponse(respond(req.Msg, 0)), nil
		},
		connect.WithSchema(echo), connect.WithRequestInitializer(initializer(echo.Input())),
	))
	mux.Handle(countProcedure, connect.NewServerStreamHandler(countProcedure,
		func(_ context.Context, req *connect.Request[dynamicpb.Message], stream *connect.ServerStream[dynamicpb.Message]) error {
			for seq := range field(req.Msg, "count").Int() {
				if err := stream.Send(respond(req.Msg, int32(seq+1))); err != nil {
					return err
				}
			}
			return nil
		},
		connect.WithSchema(count), connect.WithRequestInitializer(initializer(count.Input())),
	))
	reflector := grpcreflect.NewReflector(
		grpcreflect.NamerFunc(func() []string { return []string{echoServiceName} }),
		grpcreflect.WithDescriptorResolver(echoFiles()),
	)
	mux.Handle(grpcreflect.NewHandlerV1(reflector))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector))
	return mux
}

// register puts the instance in etcd as any service does, until the test
// ends or the registration is closed.
func (s *echoServer) register(t testing.TB, client *clientv3.Client) *discovery.Registration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	reg, err := discovery.Register(ctx, client, echoServiceName,
		discovery.Instance{ID: s.id, Address: s.addr, StartedAt: time.Now().UTC()},
		discovery.WithLogger(discardLogger()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close(context.Background()) })
	return reg
}

// postJSON makes a Connect unary call with plain net/http, as curl would.
func postJSON(t testing.TB, url, body string, header http.Header) (int, map[string]any) {
	t.Helper()
	status, out, err := doJSON(callCtx(t), url, body, header)
	if err != nil {
		t.Fatal(err)
	}
	return status, out
}

// doJSON is postJSON for goroutines other than the test's, which must not
// stop the test.
func doJSON(ctx context.Context, url, body string, header http.Header) (int, map[string]any, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	for k, vs := range header {
		req.Header[k] = vs
	}
	transport := &http.Transport{}
	defer transport.CloseIdleConnections()
	resp, err := (&http.Client{Transport: transport}).Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, err
	}
	var out map[string]any
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &out); err != nil {
			return 0, nil, fmt.Errorf("%s answered %d with bad JSON %q: %w", url, resp.StatusCode, raw, err)
		}
	}
	return resp.StatusCode, out, nil
}

func listServices(t testing.TB, baseURL string) []string {
	t.Helper()
	stream := grpcreflect.NewClient(h2cClient(t), baseURL, connect.WithGRPC()).NewStream(callCtx(t))
	defer stream.Close()
	names, err := stream.ListServices()
	if err != nil {
		t.Fatalf("reflection ListServices: %v", err)
	}
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = string(n)
	}
	return out
}

// TestForeignService: a service that is not Flux-KV's, registered in etcd
// while the gateway runs, is served with the schema it answers reflection
// with: Connect JSON, routing by its shard key, server streams and the
// gateway's own reflection; deregistered, it is gone, without a restart.
func TestForeignService(t *testing.T) {
	t.Parallel()
	endpoint := startEtcd(t)
	gw := startGateway(t, gateway.Config{Etcd: []string{endpoint}})
	if got := listServices(t, gw.APIURL()); slices.Contains(got, echoServiceName) {
		t.Fatalf("reflection lists %s before it is registered: %v", echoServiceName, got)
	}
	client := etcdClient(t, endpoint)
	echoes := []*echoServer{startEcho(t, "echo-1", "127.0.0.1:0"), startEcho(t, "echo-2", "127.0.0.1:0")}
	var regs []*discovery.Registration
	for _, e := range echoes {
		regs = append(regs, e.register(t, client))
	}

	// Requests without a shard key go round-robin: both instances answer
	// once the gateway has seen both.
	seen := map[string]bool{}
	waitUntil(t, "the gateway to route to both echo instances", func() bool {
		status, body := postJSON(t, gw.APIURL()+echoProcedure, `{"text":"hi"}`, nil)
		if status == http.StatusOK {
			seen[fmt.Sprint(body["instance"])] = true
		}
		return len(seen) == 2
	})
	status, body := postJSON(t, gw.APIURL()+echoProcedure, `{"key":"user-7","text":"hello"}`, nil)
	if status != http.StatusOK || body["text"] != "hello" || body["key"] != "user-7" {
		t.Fatalf("Connect JSON call: got %d %v, want 200 echoing the request", status, body)
	}

	// The same shard key always reaches the same instance: the ring owner of
	// the key over the live instances.
	r, err := ring.New([]string{"echo-1", "echo-2"})
	if err != nil {
		t.Fatal(err)
	}
	owners := map[string]bool{}
	for i := range 20 {
		key := fmt.Sprintf("user-%d", i)
		want := r.Owner(key)
		owners[want] = true
		for range 3 {
			status, body := postJSON(t, gw.APIURL()+echoProcedure, fmt.Sprintf(`{"key":%q}`, key), nil)
			if status != http.StatusOK || body["instance"] != want {
				t.Fatalf("key %s: got %d from %v, want its owner %s", key, status, body["instance"], want)
			}
		}
	}
	if len(owners) != 2 {
		t.Fatalf("the ring gives every key to %v: the check proves little", owners)
	}

	// A server stream, over gRPC, from the key's owner.
	stream, err := echoClient(t, gw.APIURL(), countProcedure, connect.WithGRPC()).CallServerStream(callCtx(t), connect.NewRequest(echoRequest("user-3", "n", 3)))
	if err != nil {
		t.Fatal(err)
	}
	var seqs []int64
	for stream.Receive() {
		if got := field(stream.Msg(), "instance").String(); got != r.Owner("user-3") {
			t.Errorf("stream message from %s, want the owner %s", got, r.Owner("user-3"))
		}
		seqs = append(seqs, field(stream.Msg(), "seq").Int())
	}
	if err := errors.Join(stream.Err(), stream.Close()); err != nil || !slices.Equal(seqs, []int64{1, 2, 3}) {
		t.Errorf("server stream: got %v (%v), want [1 2 3]", seqs, err)
	}

	// The gateway's reflection describes the service, so grpcurl works.
	if got := listServices(t, gw.APIURL()); !slices.Contains(got, echoServiceName) {
		t.Errorf("reflection ListServices: got %v, want %s among them", got, echoServiceName)
	}
	refl := grpcreflect.NewClient(h2cClient(t), gw.APIURL(), connect.WithGRPC()).NewStream(callCtx(t))
	files, err := refl.FileContainingSymbol(echoServiceName)
	_, _ = refl.Close()
	if err != nil || len(files) == 0 || files[0].GetName() != "acme/echo/v1/echo.proto" {
		t.Errorf("reflection FileContainingSymbol: got %d files (%v), want acme/echo/v1/echo.proto first", len(files), err)
	}

	for _, reg := range regs {
		if err := reg.Close(callCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, "the deregistered service to leave the gateway", func() bool {
		status, _ := postJSON(t, gw.APIURL()+echoProcedure, `{"text":"hi"}`, nil)
		return status == http.StatusNotFound
	})
	for _, p := range protocols[:2] {
		_, err := echoClient(t, gw.APIURL(), echoProcedure, p.opts...).CallUnary(callCtx(t), connect.NewRequest(echoRequest("k", "", 0)))
		if got := connect.CodeOf(err); got != connect.CodeUnimplemented {
			t.Errorf("%s call after deregistration: got %v (%v), want %v", p.name, got, err, connect.CodeUnimplemented)
		}
	}
	if got := listServices(t, gw.APIURL()); slices.Contains(got, echoServiceName) {
		t.Errorf("reflection still lists %s after deregistration: %v", echoServiceName, got)
	}
	// The instances still run: only the gateway's view changed.
	if _, err := echoClient(t, "http://"+echoes[0].addr, echoProcedure).CallUnary(callCtx(t), connect.NewRequest(echoRequest("k", "", 0))); err != nil {
		t.Errorf("echo-1 directly after deregistration: %v", err)
	}
}
