package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	validatepb "buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/platform/schema"
)

// apiDoc is docs/api.md, from this package's directory.
var apiDoc = filepath.Join("..", "..", "..", "docs", "api.md")

func renderImage(t *testing.T) []byte {
	t.Helper()
	files, err := schema.Files()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := render(files)
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// TestAPIDocIsUpToDate makes `go test ./...` catch a docs/api.md left
// behind by a schema change, as CI's clean-tree check after `go generate .`
// does.
func TestAPIDocIsUpToDate(t *testing.T) {
	t.Parallel()
	want := renderImage(t)
	got, err := os.ReadFile(apiDoc)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(got, want) {
		return
	}
	gotLines, wantLines := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	for i := range max(len(gotLines), len(wantLines)) {
		var g, w string
		if i < len(gotLines) {
			g = gotLines[i]
		}
		if i < len(wantLines) {
			w = wantLines[i]
		}
		if g != w {
			t.Fatalf("docs/api.md is stale (run `go generate .`); first difference at line %d:\n got: %q\nwant: %q", i+1, g, w)
		}
	}
}

func TestRenderIsDeterministic(t *testing.T) {
	t.Parallel()
	first := renderImage(t)
	for i := range 5 {
		if again := renderImage(t); !bytes.Equal(again, first) {
			t.Fatalf("#%d: a second rendering differs from the first", i)
		}
	}
}

// TestAPIDocCoversKVService checks the reference against the compiled
// schema: every method of KVService and every message of its file has a
// section.
func TestAPIDocCoversKVService(t *testing.T) {
	t.Parallel()
	doc := string(renderImage(t))
	file := kvv1.File_flux_kv_v1_kv_proto
	methods := file.Services().ByName("KVService").Methods()
	if methods.Len() == 0 {
		t.Fatal("KVService has no methods")
	}
	for i := range methods.Len() {
		m := methods.Get(i)
		for _, want := range []string{
			"\n##### KVService." + string(m.Name()) + "\n",
			"`/flux.kv.v1.KVService/" + string(m.Name()) + "`",
		} {
			if !strings.Contains(doc, want) {
				t.Errorf("method %s: no %q", m.Name(), want)
			}
		}
	}
	messages := file.Messages()
	for i := range messages.Len() {
		if want := "\n#### " + string(messages.Get(i).FullName()) + "\n"; !strings.Contains(doc, want) {
			t.Errorf("message %s: no %q", messages.Get(i).FullName(), want)
		}
	}
	for _, want := range []string{
		"| `key` | 1 | `string` | **shard key** |",                                        // GetRequest, from the routing option
		"`string.min_bytes: 1`<br>`string.max_bytes: 1024`",                               // protovalidate rules
		"| [Get](#kvserviceget) | [`GetRequest`](#fluxkvv1getrequest) |",                  // method table
		"| unary | `NO_SIDE_EFFECTS` |",                                                   // idempotency option
		"`put.ttl_keep_ttl`: ttl and keep_ttl cannot both be set",                         // message CEL rule
		"\n#### flux.routing.v1.shard_key\n",                                              // extension
		"| `OP_EXPIRE` | 3 | OP_EXPIRE: the key's TTL ran out and the node removed it. |", // enum value
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("no %q", want)
		}
	}
}

// TestAPIDocLinksResolve checks that every in-page link names the anchor
// GitHub gives one of the page's headings.
func TestAPIDocLinksResolve(t *testing.T) {
	t.Parallel()
	doc := string(renderImage(t))
	anchors := map[string]bool{}
	seen := map[string]int{}
	for _, line := range strings.Split(doc, "\n") {
		text, ok := strings.CutPrefix(strings.TrimLeft(line, "#"), " ")
		if !ok || !strings.HasPrefix(line, "#") {
			continue
		}
		s := slug(text)
		if n := seen[s]; n > 0 {
			anchors[fmt.Sprintf("%s-%d", s, n)] = true
		} else {
			anchors[s] = true
		}
		seen[s]++
	}
	links := regexp.MustCompile(`\]\(#([^)]+)\)`).FindAllStringSubmatch(doc, -1)
	if len(links) == 0 {
		t.Fatal("no in-page links")
	}
	for _, l := range links {
		if !anchors[l[1]] {
			t.Errorf("link to #%s: no such heading", l[1])
		}
	}
}

func TestSlug(t *testing.T) {
	t.Parallel()
	tests := []struct{ text, want string }{
		{"flux.kv.v1.GetRequest", "fluxkvv1getrequest"},
		{"flux.routing.v1.shard_key", "fluxroutingv1shard_key"},
		{"Flux-KV API reference", "flux-kv-api-reference"},
		{"KVService.Get", "kvserviceget"},
	}
	for i, tt := range tests {
		if got := slug(tt.text); got != tt.want {
			t.Errorf("#%d: got %q, want %q", i, got, tt.want)
		}
	}
}

func TestFlattenRules(t *testing.T) {
	t.Parallel()
	tests := []struct {
		rules *validatepb.FieldRules
		want  []string
	}{
		{&validatepb.FieldRules{Type: &validatepb.FieldRules_String_{String_: &validatepb.StringRules{
			MinBytes: proto.Uint64(1), In: []string{"a", "b"},
		}}}, []string{`string.min_bytes: 1`, `string.in: ["a", "b"]`}},
		{&validatepb.FieldRules{Type: &validatepb.FieldRules_Duration{Duration: &validatepb.DurationRules{
			GreaterThan: &validatepb.DurationRules_Gt{Gt: durationpb.New(1500 * time.Millisecond)},
		}}}, []string{`duration.gt: 1.5s`}},
		{&validatepb.FieldRules{Required: proto.Bool(true)}, []string{`required: true`}},
		{&validatepb.FieldRules{Type: &validatepb.FieldRules_Repeated{Repeated: &validatepb.RepeatedRules{
			Items: &validatepb.FieldRules{Ignore: validatepb.Ignore_IGNORE_ALWAYS.Enum()},
		}}}, []string{`repeated.items.ignore: IGNORE_ALWAYS`}},
		{&validatepb.FieldRules{Type: &validatepb.FieldRules_Bytes{Bytes: &validatepb.BytesRules{}}}, []string{`bytes: {}`}},
	}
	for i, tt := range tests {
		if got := flatten(tt.rules.ProtoReflect(), ""); !slices.Equal(got, tt.want) {
			t.Errorf("#%d: got %q, want %q", i, got, tt.want)
		}
	}
}

func TestDurationText(t *testing.T) {
	t.Parallel()
	tests := []struct {
		secs, nanos int64
		want        string
	}{
		{0, 0, "0s"},
		{315360000, 0, "315360000s"},
		{1, 500_000_000, "1.5s"},
		{0, -1000, "-0.000001s"},
	}
	for i, tt := range tests {
		if got := durationText(tt.secs, tt.nanos); got != tt.want {
			t.Errorf("#%d: got %q, want %q", i, got, tt.want)
		}
	}
}
