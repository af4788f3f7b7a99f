package gateway

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	routingv1 "github.com/fluxkv/fluxkv/gen/flux/routing/v1"
)

// FuzzLinkSchema: whatever files an instance of a discovered service
// answers reflection with, linking them never panics; linked, every file
// is found under its name, every shard key the gateway would route by is
// a singular scalar field of the request, and the files, described again,
// link to the same files.
func FuzzLinkSchema(f *testing.F) {
	// Small seeds: the fuzzer minimizes every input that finds new code,
	// which takes time growing with the square of its size.
	shardKey := &descriptorpb.FieldOptions{}
	proto.SetExtension(shardKey, routingv1.E_ShardKey, true)
	file := func(name string, deps ...string) *descriptorpb.FileDescriptorProto {
		return &descriptorpb.FileDescriptorProto{Name: proto.String(name), Package: proto.String("p"), Syntax: proto.String("proto3"), Dependency: deps}
	}
	keyed := file("k.proto", routingv1.File_flux_routing_v1_routing_proto.Path(), "m.proto")
	keyed.MessageType = []*descriptorpb.DescriptorProto{{Name: proto.String("R"), Field: []*descriptorpb.FieldDescriptorProto{{
		Name: proto.String("k"), Number: proto.Int32(1), Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(),
		Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum(), Options: shardKey,
	}}}}
	keyed.Service = []*descriptorpb.ServiceDescriptorProto{{Name: proto.String("S"), Method: []*descriptorpb.MethodDescriptorProto{
		{Name: proto.String("M"), InputType: proto.String(".p.R"), OutputType: proto.String(".p.O")},
	}}}
	output := file("m.proto")
	output.MessageType = []*descriptorpb.DescriptorProto{{Name: proto.String("O")}}
	set := func(files ...*descriptorpb.FileDescriptorProto) []byte {
		b, err := proto.Marshal(&descriptorpb.FileDescriptorSet{File: files})
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add(set(keyed, output))
	f.Add(set(keyed))
	f.Add(set(file("a.proto", "b.proto"), file("b.proto", "a.proto")))
	f.Add(set(file("a.proto", "b.proto", "b.proto"), file("b.proto")))
	f.Fuzz(func(t *testing.T, b []byte) {
		var set descriptorpb.FileDescriptorSet
		if err := proto.Unmarshal(b, &set); err != nil {
			return
		}
		protos := map[string]*descriptorpb.FileDescriptorProto{}
		for _, fd := range set.GetFile() {
			protos[fd.GetName()] = fd
		}
		s := &schemaSource{global: protoregistry.GlobalFiles}
		files, err := s.link(protos)
		if err != nil {
			return
		}
		for name := range protos {
			if fd, err := files.FindFileByPath(name); err != nil || fd.Path() != name {
				t.Fatalf("linked, file %s is not found: %v", name, err)
			}
		}
		var own []string
		again := map[string]*descriptorpb.FileDescriptorProto{}
		files.own.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
			own = append(own, fd.Path())
			again[fd.Path()] = protodesc.ToFileDescriptorProto(fd)
			for i := range fd.Services().Len() {
				methods := fd.Services().Get(i).Methods()
				for j := range methods.Len() {
					in := methods.Get(j).Input()
					if key := shardKeyField(in); key != nil && (key.ContainingMessage() != in || key.IsList() || key.IsMap() || key.Message() != nil) {
						t.Fatalf("%s routes by %s", methods.Get(j).FullName(), key.FullName())
					}
				}
			}
			return true
		})
		relinked, err := s.link(again)
		if err != nil {
			t.Fatalf("files %q, described again, do not link: %v", own, err)
		}
		var ownAgain []string
		relinked.own.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
			ownAgain = append(ownAgain, fd.Path())
			return true
		})
		slices.Sort(own)
		slices.Sort(ownAgain)
		if !slices.Equal(own, ownAgain) {
			t.Fatalf("files %q link again as %q", own, ownAgain)
		}
	})
}
