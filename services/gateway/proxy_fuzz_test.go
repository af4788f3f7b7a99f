package gateway

import (
	"slices"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/durationpb"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	routingv1 "github.com/fluxkv/fluxkv/gen/flux/routing/v1"
	"github.com/fluxkv/fluxkv/platform/schema"
)

// keyedFile is a service Flux-KV was not compiled with, whose requests
// carry shard keys of every kind the gateway reads: a number and an enum
// without presence, a bool with presence, bytes, and a string in a oneof.
func keyedFile() (protoreflect.FileDescriptor, error) {
	shardKey := &descriptorpb.FieldOptions{}
	proto.SetExtension(shardKey, routingv1.E_ShardKey, true)
	field := func(name string, number int32, typ descriptorpb.FieldDescriptorProto_Type, opts *descriptorpb.FieldOptions) *descriptorpb.FieldDescriptorProto {
		return &descriptorpb.FieldDescriptorProto{
			Name: proto.String(name), JsonName: proto.String(name), Number: proto.Int32(number),
			Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(), Type: typ.Enum(), Options: opts,
		}
	}
	request := func(name string, key *descriptorpb.FieldDescriptorProto) *descriptorpb.DescriptorProto {
		return &descriptorpb.DescriptorProto{Name: proto.String(name), Field: []*descriptorpb.FieldDescriptorProto{
			key, field("note", 15, descriptorpb.FieldDescriptorProto_TYPE_STRING, nil),
		}}
	}
	flag := field("flag", 1, descriptorpb.FieldDescriptorProto_TYPE_BOOL, shardKey)
	flag.Proto3Optional, flag.OneofIndex = proto.Bool(true), proto.Int32(0)
	color := field("color", 1, descriptorpb.FieldDescriptorProto_TYPE_ENUM, shardKey)
	color.TypeName = proto.String(".acme.keyed.v1.Color")
	name := field("name", 1, descriptorpb.FieldDescriptorProto_TYPE_STRING, shardKey)
	name.OneofIndex = proto.Int32(0)
	other := field("other", 2, descriptorpb.FieldDescriptorProto_TYPE_STRING, nil)
	other.OneofIndex = proto.Int32(0)
	messages := []*descriptorpb.DescriptorProto{
		request("ByNumber", field("id", 1, descriptorpb.FieldDescriptorProto_TYPE_SINT64, shardKey)),
		request("ByFlag", flag),
		request("ByColor", color),
		request("ByBytes", field("raw", 1, descriptorpb.FieldDescriptorProto_TYPE_BYTES, shardKey)),
		{Name: proto.String("ByName"), Field: []*descriptorpb.FieldDescriptorProto{name, other}, OneofDecl: []*descriptorpb.OneofDescriptorProto{{Name: proto.String("target")}}},
	}
	messages[1].OneofDecl = []*descriptorpb.OneofDescriptorProto{{Name: proto.String("_flag")}}
	svc := &descriptorpb.ServiceDescriptorProto{Name: proto.String("KeyedService")}
	for _, m := range messages {
		svc.Method = append(svc.Method, &descriptorpb.MethodDescriptorProto{
			Name: proto.String("Call" + m.GetName()), InputType: proto.String(".acme.keyed.v1." + m.GetName()), OutputType: proto.String(".acme.keyed.v1." + m.GetName()),
		})
	}
	return protodesc.NewFile(&descriptorpb.FileDescriptorProto{
		Name:        proto.String("acme/keyed/v1/keyed.proto"),
		Package:     proto.String("acme.keyed.v1"),
		Syntax:      proto.String("proto3"),
		Dependency:  []string{routingv1.File_flux_routing_v1_routing_proto.Path()},
		MessageType: messages,
		EnumType: []*descriptorpb.EnumDescriptorProto{{Name: proto.String("Color"), Value: []*descriptorpb.EnumValueDescriptorProto{
			{Name: proto.String("COLOR_UNSPECIFIED"), Number: proto.Int32(0)}, {Name: proto.String("COLOR_RED"), Number: proto.Int32(1)},
		}}},
		Service: []*descriptorpb.ServiceDescriptorProto{svc},
	}, protoregistry.GlobalFiles)
}

// fuzzMethods are the methods the fuzz targets proxy: every method of
// Flux-KV's services as the gateway describes them, then the keyed
// service's, in a fixed order.
var fuzzMethods = sync.OnceValues(func() ([]*method, error) {
	files, err := schema.Files()
	if err != nil {
		return nil, err
	}
	var services []protoreflect.ServiceDescriptor
	files.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		if strings.HasPrefix(string(fd.Package()), "flux.") {
			for i := range fd.Services().Len() {
				services = append(services, fd.Services().Get(i))
			}
		}
		return true
	})
	slices.SortFunc(services, func(a, b protoreflect.ServiceDescriptor) int {
		return strings.Compare(string(a.FullName()), string(b.FullName()))
	})
	keyed, err := keyedFile()
	if err != nil {
		return nil, err
	}
	services = append(services, keyed.Services().Get(0))
	var out []*method
	for _, svc := range services {
		for i := range svc.Methods().Len() {
			md := svc.Methods().Get(i)
			out = append(out, &method{procedure: "/" + string(svc.FullName()) + "/" + string(md.Name()), service: string(svc.FullName()), desc: md, shardKey: shardKeyField(md.Input())})
		}
	}
	return out, nil
})

// FuzzProxyCodec: whatever body a client sends to a proxied method, the
// gateway's codec decodes it or refuses it without panicking; it refuses
// exactly what the node's generated code refuses; what it forwards, the
// node decodes to the message the client sent; it finds the shard key the
// node reads, and the same key in what it forwards; and equal requests
// share one flight key however they were encoded.
func FuzzProxyCodec(f *testing.F) {
	methods, err := fuzzMethods()
	if err != nil {
		f.Fatal(err)
	}
	index := func(procedure string) uint16 {
		i := slices.IndexFunc(methods, func(m *method) bool { return m.procedure == procedure })
		if i < 0 {
			f.Fatalf("no method %s", procedure)
		}
		return uint16(i)
	}
	for _, seed := range []struct {
		procedure string
		msg       proto.Message
	}{
		{"/flux.kv.v1.KVService/Get", &kvv1.GetRequest{Key: "user/42"}},
		{"/flux.kv.v1.KVService/Put", &kvv1.PutRequest{Key: "k", Value: []byte("v"), Ttl: durationpb.New(90e9), Condition: &kvv1.PutRequest_IfRevision{IfRevision: 3}}},
		{"/flux.kv.v1.KVService/Delete", &kvv1.DeleteRequest{Key: "k", Condition: &kvv1.DeleteRequest_IfPresent{IfPresent: true}}},
		{"/flux.kv.v1.KVService/Watch", &kvv1.WatchRequest{Target: &kvv1.WatchRequest_Key{Key: ""}}},
		{"/flux.kv.v1.KVService/Watch", &kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: "p/"}, ResumeToken: "CgoKBm5vZGUtMRAH"}},
		{"/flux.kv.v1.KVService/Batch", &kvv1.BatchRequest{Operations: []*kvv1.Operation{{Op: &kvv1.Operation_Get{Get: &kvv1.GetRequest{Key: "a"}}}}}},
		{"/flux.kv.v1.KVService/Scan", &kvv1.ScanRequest{Prefix: "a", Limit: 10}},
	} {
		b, err := proto.Marshal(seed.msg)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(index(seed.procedure), b)
	}
	f.Add(index("/acme.keyed.v1.KeyedService/CallByNumber"), []byte{0x08, 0x01, 0x7a, 0x01, 'n'})
	f.Add(index("/acme.keyed.v1.KeyedService/CallByFlag"), []byte{0x08, 0x00})
	f.Add(index("/acme.keyed.v1.KeyedService/CallByColor"), []byte{0x08, 0x07})
	f.Add(index("/acme.keyed.v1.KeyedService/CallByBytes"), []byte{0x0a, 0x02, 0xff, 0x00})
	f.Add(index("/acme.keyed.v1.KeyedService/CallByName"), []byte{0x0a, 0x01, 'a', 0x12, 0x01, 'b', 0x0a, 0x00})
	f.Fuzz(func(t *testing.T, pick uint16, body []byte) {
		m := methods[int(pick)%len(methods)]
		in := dynamicpb.NewMessage(m.desc.Input())
		err := proxyCodec{}.Unmarshal(body, in)

		mt, generated := protoregistry.GlobalTypes.FindMessageByName(m.desc.Input().FullName())
		var sent proto.Message
		if generated == nil {
			sent = mt.New().Interface()
			if nodeErr := proto.Unmarshal(body, sent); (err == nil) != (nodeErr == nil) {
				t.Fatalf("%s: the gateway decodes %x with %v, the node with %v", m.procedure, body, err, nodeErr)
			}
		}
		if err != nil {
			return
		}
		key, hasKey := m.shardKeyOf(in)
		if getter, ok := sent.(interface{ GetKey() string }); ok && m.shardKey != nil {
			if nodeKey := getter.GetKey(); hasKey && key != nodeKey || !hasKey && nodeKey != "" {
				t.Fatalf("%s: %x routes by %q (%v); the node reads key %q", m.procedure, body, key, hasKey, nodeKey)
			}
		}

		out, err := proxyCodec{}.Marshal(in)
		if err != nil {
			t.Fatalf("%s: forward %x: %v", m.procedure, body, err)
		}
		if sent != nil {
			received := mt.New().Interface()
			if err := proto.Unmarshal(out, received); err != nil || !proto.Equal(received, sent) {
				t.Fatalf("%s: the client sent %v; the node receives %v, %v", m.procedure, sent, received, err)
			}
		}
		forwarded := dynamicpb.NewMessage(m.desc.Input())
		if err := (proxyCodec{}).Unmarshal(out, forwarded); err != nil || !proto.Equal(forwarded, in) {
			t.Fatalf("%s: %x forwards as %x, which decodes to %v, %v", m.procedure, body, out, forwarded, err)
		}
		if again, againOK := m.shardKeyOf(forwarded); again != key || againOK != hasKey {
			t.Fatalf("%s: %x routes by %q (%v), what it forwards by %q (%v)", m.procedure, body, key, hasKey, again, againOK)
		}
		flight, ok := flightKey(m, connect.NewRequest(in))
		flightAgain, okAgain := flightKey(m, connect.NewRequest(forwarded))
		if flight != flightAgain || ok != okAgain {
			t.Fatalf("%s: %x and its forwarded form %x have different flight keys", m.procedure, body, out)
		}
	})
}
