package gateway_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpcreflect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/fluxkv/fluxkv/platform/discovery"
	"github.com/fluxkv/fluxkv/services/gateway"
)

const chatSvc = "acme.chat.v1.ChatService"

var chatFiles = sync.OnceValue(func() *protoregistry.Files {
	str := descriptorpb.FieldDescriptorProto_TYPE_STRING
	fdp := &descriptorpb.FileDescriptorProto{
		Name: proto.String("acme/chat/v1/chat.proto"), Package: proto.String("acme.chat.v1"), Syntax: proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{Name: proto.String("Msg"), Field: []*descriptorpb.FieldDescriptorProto{{
			Name: proto.String("text"), JsonName: proto.String("text"), Number: proto.Int32(1),
			Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(), Type: str.Enum()}}}},
		Service: []*descriptorpb.ServiceDescriptorProto{{Name: proto.String("ChatService"), Method: []*descriptorpb.MethodDescriptorProto{
			{Name: proto.String("Chat"), InputType: proto.String(".acme.chat.v1.Msg"), OutputType: proto.String(".acme.chat.v1.Msg"), ClientStreaming: proto.Bool(true), ServerStreaming: proto.Bool(true)},
			{Name: proto.String("Upload"), InputType: proto.String(".acme.chat.v1.Msg"), OutputType: proto.String(".acme.chat.v1.Msg"), ClientStreaming: proto.Bool(true)},
			{Name: proto.String("Fail"), InputType: proto.String(".acme.chat.v1.Msg"), OutputType: proto.String(".acme.chat.v1.Msg")},
		}}},
	}
	fd, err := protodesc.NewFile(fdp, protoregistry.GlobalFiles)
	if err != nil {
		panic(err)
	}
	files := new(protoregistry.Files)
	_ = files.RegisterFile(fd)
	return files
})

func chatMethod(name string) protoreflect.MethodDescriptor {
	d, _ := chatFiles().FindDescriptorByName(chatSvc)
	return d.(protoreflect.ServiceDescriptor).Methods().ByName(protoreflect.Name(name))
}

func chatMsg(text string) *dynamicpb.Message {
	m := dynamicpb.NewMessage(chatMethod("Fail").Input())
	m.Set(m.Descriptor().Fields().ByName("text"), protoreflect.ValueOfString(text))
	return m
}

type chatBackend struct{ committed atomic.Int64 }

func (b *chatBackend) handler() http.Handler {
	mux := http.NewServeMux()
	opt := func(n string) []connect.HandlerOption {
		md := chatMethod(n)
		return []connect.HandlerOption{connect.WithSchema(md), connect.WithRequestInitializer(initializer(md.Input()))}
	}
	p := "/" + chatSvc + "/"
	mux.Handle(p+"Chat", connect.NewBidiStreamHandler(p+"Chat", func(ctx context.Context, s *connect.BidiStream[dynamicpb.Message, dynamicpb.Message]) error {
		if _, err := s.Receive(); err != nil {
			return err
		}
		s.ResponseHeader().Set("X-Hdr", "h")
		s.ResponseTrailer().Set("X-Trl", "t")
		return connect.NewError(connect.CodeInvalidArgument, errors.New("bad first message"))
	}, opt("Chat")...))
	mux.Handle(p+"Upload", connect.NewClientStreamHandler(p+"Upload", func(ctx context.Context, s *connect.ClientStream[dynamicpb.Message]) (*connect.Response[dynamicpb.Message], error) {
		n := int64(0)
		for s.Receive() {
			n++
		}
		if s.Err() != nil {
			return nil, s.Err()
		}
		b.committed.Add(n) // clean end of stream: apply the batch
		return connect.NewResponse(chatMsg("ok")), nil
	}, opt("Upload")...))
	mux.Handle(p+"Fail", connect.NewUnaryHandler(p+"Fail", func(ctx context.Context, r *connect.Request[dynamicpb.Message]) (*connect.Response[dynamicpb.Message], error) {
		err := connect.NewError(connect.CodeFailedPrecondition, errors.New("nope"))
		err.Meta().Set("X-Err", "e")
		return nil, err
	}, opt("Fail")...))
	ref := grpcreflect.NewReflector(grpcreflect.NamerFunc(func() []string { return []string{chatSvc} }), grpcreflect.WithDescriptorResolver(chatFiles()))
	mux.Handle(grpcreflect.NewHandlerV1(ref))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(ref))
	return mux
}

func startChat(t *testing.T) (*chatBackend, string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &chatBackend{}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: b.handler(), Protocols: &protocols}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return b, ln.Addr().String()
}

func chatClient(t *testing.T, base, name string, opts ...connect.ClientOption) *connect.Client[dynamicpb.Message, dynamicpb.Message] {
	md := chatMethod(name)
	opts = append([]connect.ClientOption{connect.WithSchema(md), connect.WithResponseInitializer(initializer(md.Output()))}, opts...)
	return connect.NewClient[dynamicpb.Message, dynamicpb.Message](h2cClient(t), base+"/"+chatSvc+"/"+name, opts...)
}

func setupChat(t *testing.T) (*chatBackend, *gateway.Gateway) {
	endpoint := startEtcd(t)
	gw := startGateway(t, gateway.Config{Etcd: []string{endpoint}, MaxMessageBytes: 1024})
	b, addr := startChat(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	reg, err := discovery.Register(ctx, etcdClient(t, endpoint), chatSvc, discovery.Instance{ID: "chat-1", Address: addr, StartedAt: time.Now().UTC()}, discovery.WithLogger(discardLogger()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close(context.Background()) })
	waitUntil(t, "chat served", func() bool {
		_, err := chatClient(t, gw.APIURL(), "Fail").CallUnary(context.Background(), connect.NewRequest(chatMsg("x")))
		return connect.CodeOf(err) == connect.CodeFailedPrecondition
	})
	return b, gw
}

// TestStreamEdges covers what streams and errors must carry through the
// gateway: error metadata on unary calls, a bidi stream the backend ends
// first (its code, header and trailer reach the client at once), and a
// client stream the client breaks off, which the backend must not commit.
func TestStreamEdges(t *testing.T) {
	t.Parallel()
	b, gw := setupChat(t)

	t.Run("unary error metadata", func(t *testing.T) {
		for _, p := range protocols {
			_, err := chatClient(t, gw.APIURL(), "Fail", p.opts...).CallUnary(context.Background(), connect.NewRequest(chatMsg("x")))
			var ce *connect.Error
			if !errors.As(err, &ce) || ce.Code() != connect.CodeFailedPrecondition || ce.Meta().Get("X-Err") != "e" {
				t.Errorf("%s: got %v with metadata %v, want failed_precondition with X-Err: e", p.name, err, ce.Meta())
			}
		}
	})

	t.Run("bidi backend ends first", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s := chatClient(t, gw.APIURL(), "Chat", connect.WithGRPC()).CallBidiStream(ctx)
		if err := s.Send(chatMsg("hello")); err != nil {
			t.Fatal(err)
		}
		_, err := s.Receive()
		var ce *connect.Error
		// Before the fix the gateway held the stream until the client's
		// deadline: the code would be deadline_exceeded.
		if !errors.As(err, &ce) || ce.Code() != connect.CodeInvalidArgument {
			t.Fatalf("got %v, want the backend's invalid_argument", err)
		}
		if got := s.ResponseHeader().Get("X-Hdr"); got != "h" {
			t.Errorf("response header X-Hdr: got %q, want h", got)
		}
		if got := s.ResponseTrailer().Get("X-Trl"); got != "t" {
			t.Errorf("response trailer X-Trl: got %q, want t", got)
		}
		_ = s.CloseRequest()
		_ = s.CloseResponse()
	})

	t.Run("client stream aborted", func(t *testing.T) {
		s := chatClient(t, gw.APIURL(), "Upload", connect.WithGRPC()).CallClientStream(context.Background())
		_ = s.Send(chatMsg("one"))
		_ = s.Send(chatMsg(strings.Repeat("x", 4096))) // over the gateway's MaxMessageBytes
		if _, err := s.CloseAndReceive(); connect.CodeOf(err) != connect.CodeResourceExhausted {
			t.Fatalf("got %v, want resource_exhausted for the oversized message", err)
		}
		// Give a wrongly half-closed backend time to commit.
		time.Sleep(200 * time.Millisecond)
		if n := b.committed.Load(); n != 0 {
			t.Errorf("the backend committed %d messages of a stream the client broke off", n)
		}
	})
}
