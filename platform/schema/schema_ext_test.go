package schema_test

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/platform/schema"
)

func TestImageHasComments(t *testing.T) {
	t.Parallel()
	resolver, err := schema.Resolver()
	if err != nil {
		t.Fatal(err)
	}
	d, err := resolver.FindDescriptorByName("flux.kv.v1.PutRequest")
	if err != nil {
		t.Fatal(err)
	}
	loc := d.ParentFile().SourceLocations().ByDescriptor(d)
	if !strings.Contains(loc.LeadingComments, "writes one key") {
		t.Errorf("PutRequest comment: got %q", loc.LeadingComments)
	}
	if _, err := resolver.FindDescriptorByName("grpc.health.v1.Health"); err != nil {
		t.Errorf("fallback to the global registry: %v", err)
	}
}

// TestImageMatchesGeneratedCode guards against an image left stale after a
// schema change: every message compiled into gen/ must look the same in it.
func TestImageMatchesGeneratedCode(t *testing.T) {
	t.Parallel()
	reg, err := schema.Files()
	if err != nil {
		t.Fatal(err)
	}
	compiled := kvv1.File_flux_kv_v1_kv_proto
	fd, err := reg.FindFileByPath(compiled.Path())
	if err != nil {
		t.Fatal(err)
	}
	var check func(a, b protoreflect.MessageDescriptors)
	check = func(a, b protoreflect.MessageDescriptors) {
		if a.Len() != b.Len() {
			t.Fatalf("image has %d messages, generated code %d", b.Len(), a.Len())
		}
		for i := range a.Len() {
			ma, mb := a.Get(i), b.Get(i)
			if ma.FullName() != mb.FullName() || ma.Fields().Len() != mb.Fields().Len() {
				t.Errorf("%s: image and generated code differ", ma.FullName())
			}
			check(ma.Messages(), mb.Messages())
		}
	}
	check(compiled.Messages(), fd.Messages())
}
