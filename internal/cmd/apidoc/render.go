package main

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	validatepb "buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	routingv1 "github.com/fluxkv/fluxkv/gen/flux/routing/v1"
)

// documented selects the files the reference covers: Flux-KV's own, not
// their imports (protovalidate, well-known types).
const documented = "flux/"

// protoDir is proto/ as seen from docs/api.md, for links to the sources.
const protoDir = "../proto/"

// pkg is one protobuf package and what its files declare, in declaration
// order (files by path).
type pkg struct {
	name       protoreflect.FullName
	files      []protoreflect.FileDescriptor
	comment    string
	services   []protoreflect.ServiceDescriptor
	messages   []protoreflect.MessageDescriptor // nested ones follow their parent; map entries left out
	enums      []protoreflect.EnumDescriptor    // top-level, then nested
	extensions []protoreflect.ExtensionDescriptor
}

// render returns the Markdown reference of the documented files in files.
// The output depends only on the descriptors and their comments.
func render(files *protoregistry.Files) ([]byte, error) {
	pkgs := collect(files)
	if len(pkgs) == 0 {
		return nil, fmt.Errorf("no files under %s in the schema image", documented)
	}
	r := &renderer{anchors: map[protoreflect.FullName]string{}, slugs: map[string]int{}}
	for _, p := range pkgs {
		for _, s := range p.services {
			r.anchors[s.FullName()] = slug(string(s.FullName()))
		}
		for _, m := range p.messages {
			r.anchors[m.FullName()] = slug(string(m.FullName()))
		}
		for _, e := range p.enums {
			r.anchors[e.FullName()] = slug(string(e.FullName()))
		}
		for _, x := range p.extensions {
			r.anchors[x.FullName()] = slug(string(x.FullName()))
		}
	}
	r.preamble(pkgs)
	for _, p := range pkgs {
		r.pkg(p)
	}
	if r.err != nil {
		return nil, r.err
	}
	return r.b.Bytes(), nil
}

// collect groups the documented files by package: packages that define
// services first, then by name.
func collect(files *protoregistry.Files) []*pkg {
	var fds []protoreflect.FileDescriptor
	files.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		if strings.HasPrefix(fd.Path(), documented) {
			fds = append(fds, fd)
		}
		return true
	})
	slices.SortFunc(fds, func(a, b protoreflect.FileDescriptor) int { return strings.Compare(a.Path(), b.Path()) })
	byName := map[protoreflect.FullName]*pkg{}
	var pkgs []*pkg
	for _, fd := range fds {
		p, ok := byName[fd.Package()]
		if !ok {
			p = &pkg{name: fd.Package()}
			byName[fd.Package()] = p
			pkgs = append(pkgs, p)
		}
		p.files = append(p.files, fd)
		if p.comment == "" {
			p.comment = comments(fd.SourceLocations().ByPath(protoreflect.SourcePath{2})) // FileDescriptorProto.package
		}
		for i := range fd.Services().Len() {
			p.services = append(p.services, fd.Services().Get(i))
		}
		var nestedEnums []protoreflect.EnumDescriptor
		var walk func(protoreflect.MessageDescriptors)
		walk = func(ms protoreflect.MessageDescriptors) {
			for i := range ms.Len() {
				m := ms.Get(i)
				if m.IsMapEntry() {
					continue
				}
				p.messages = append(p.messages, m)
				for j := range m.Enums().Len() {
					nestedEnums = append(nestedEnums, m.Enums().Get(j))
				}
				for j := range m.Extensions().Len() {
					p.extensions = append(p.extensions, m.Extensions().Get(j))
				}
				walk(m.Messages())
			}
		}
		walk(fd.Messages())
		for i := range fd.Enums().Len() {
			p.enums = append(p.enums, fd.Enums().Get(i))
		}
		p.enums = append(p.enums, nestedEnums...)
		for i := range fd.Extensions().Len() {
			p.extensions = append(p.extensions, fd.Extensions().Get(i))
		}
	}
	slices.SortStableFunc(pkgs, func(a, b *pkg) int {
		if sa, sb := len(a.services) > 0, len(b.services) > 0; sa != sb {
			if sa {
				return -1
			}
			return 1
		}
		return strings.Compare(string(a.name), string(b.name))
	})
	return pkgs
}

type renderer struct {
	b       bytes.Buffer
	anchors map[protoreflect.FullName]string // headings that links point to
	slugs   map[string]int                   // anchors taken so far, as GitHub numbers repeats
	err     error
}

func (r *renderer) printf(format string, args ...any) { fmt.Fprintf(&r.b, format, args...) }

// heading writes a heading, numbering its anchor as GitHub does when the
// text repeats. A heading that links point to (target) must get the anchor
// the links were given; if a repeat shifted it, render fails.
func (r *renderer) heading(level int, text string, target protoreflect.FullName) {
	s := slug(text)
	anchor := s
	if n := r.slugs[s]; n > 0 {
		anchor = fmt.Sprintf("%s-%d", s, n)
	}
	r.slugs[s]++
	if target != "" && r.anchors[target] != anchor && r.err == nil {
		r.err = fmt.Errorf("heading %q gets anchor %q, but links use %q", text, anchor, r.anchors[target])
	}
	r.printf("%s %s\n\n", strings.Repeat("#", level), text)
}

func (r *renderer) preamble(pkgs []*pkg) {
	r.printf("<!-- Code generated by internal/cmd/apidoc from proto/. DO NOT EDIT. -->\n\n")
	r.heading(1, "Flux-KV API reference", "")
	r.printf(`This page is generated from the schemas in [` + "`proto/`" + `](../proto/) and their comments by
` + "`go generate .`" + ` (` + "`internal/cmd/apidoc`" + `): to change it, edit the ` + "`.proto`" + ` files and regenerate.
[architecture.md](architecture.md) explains how nodes, the gateway and the SDK serve this API.

Nodes and the gateway serve the API on one port that speaks gRPC, gRPC-Web and the Connect
protocol (JSON or binary). A method's path is ` + "`/<package>.<Service>/<Method>`" + `, for example
` + "`/flux.kv.v1.KVService/Get`" + `. In JSON, field names are lowerCamelCase, ` + "`bytes`" + ` are base64 and
64-bit integers are strings (the standard protobuf JSON mapping).

`)
	r.heading(2, "Conventions", "")
	r.printf(`- **kind**: unary, server stream, client stream or bidirectional stream.
- **idempotency**: the method's ` + "`idempotency_level`" + `. The gateway shares one backend call among identical
  concurrent calls to ` + "`NO_SIDE_EFFECTS`" + ` methods, and retries a call once, on another instance, only
  when it failed with ` + "`UNAVAILABLE`" + `, was balanced round-robin and its method is ` + "`NO_SIDE_EFFECTS`" + ` or
  ` + "`IDEMPOTENT`" + ` ([gateway.md](gateway.md#policies)). ` + "`IDEMPOTENCY_UNKNOWN`" + ` (the default) promises neither.
- **shard key**: a request field marked ` + "`(flux.routing.v1.shard_key)`" + `; the gateway and the Go SDK send the
  request to the node that owns the field's value on the ring ([ring.md](ring.md)).
- **validation**: the field's protovalidate rules (` + "`buf.validate`" + `), which nodes enforce before anything
  runs: a request that breaks one is answered ` + "`INVALID_ARGUMENT`" + ` with a ` + "`buf.validate.Violations`" + ` detail
  naming each field. The operations of a ` + "`Batch`" + ` or ` + "`Pipeline`" + ` are checked one by one, and an invalid one
  fails only its own result.

`)
	r.heading(2, "Contents", "")
	for _, p := range pkgs {
		r.printf("- [%s](#%s)\n", p.name, slug(string(p.name)))
		if len(p.services) > 0 {
			r.printf("  - services: %s\n", r.links(names(p.services)))
		}
		if len(p.messages) > 0 {
			r.printf("  - messages: %s\n", r.links(names(p.messages)))
		}
		if len(p.enums) > 0 {
			r.printf("  - enums: %s\n", r.links(names(p.enums)))
		}
		if len(p.extensions) > 0 {
			r.printf("  - extensions: %s\n", r.links(names(p.extensions)))
		}
	}
	r.printf("\n")
}

func names[D protoreflect.Descriptor](ds []D) []protoreflect.FullName {
	out := make([]protoreflect.FullName, len(ds))
	for i, d := range ds {
		out[i] = d.FullName()
	}
	return out
}

// links lists declarations by their name within the package.
func (r *renderer) links(full []protoreflect.FullName) string {
	out := make([]string, len(full))
	for i, name := range full {
		out[i] = fmt.Sprintf("[%s](#%s)", relName(name), r.anchors[name])
	}
	return strings.Join(out, ", ")
}

// relName is a declaration's name inside its package: Outer.Inner for a
// nested one.
func relName(name protoreflect.FullName) string {
	// Packages are lower case by convention (buf lint enforces it), and
	// declarations start with an upper-case letter or are extensions.
	parts := strings.Split(string(name), ".")
	for i, p := range parts {
		if p != "" && p[0] >= 'A' && p[0] <= 'Z' {
			return strings.Join(parts[i:], ".")
		}
	}
	return parts[len(parts)-1]
}

func (r *renderer) pkg(p *pkg) {
	r.heading(2, string(p.name), "")
	paths := make([]string, len(p.files))
	for i, fd := range p.files {
		paths[i] = fmt.Sprintf("[`proto/%s`](%s%s)", fd.Path(), protoDir, fd.Path())
	}
	r.printf("Defined in %s.\n\n", strings.Join(paths, ", "))
	r.block(p.comment)
	if len(p.services) > 0 {
		r.heading(3, "Services", "")
		for _, s := range p.services {
			r.service(p, s)
		}
	}
	if len(p.messages) > 0 {
		r.heading(3, "Messages", "")
		for _, m := range p.messages {
			r.message(p, m)
		}
	}
	if len(p.enums) > 0 {
		r.heading(3, "Enums", "")
		for _, e := range p.enums {
			r.enum(e)
		}
	}
	if len(p.extensions) > 0 {
		r.heading(3, "Extensions", "")
		for _, x := range p.extensions {
			r.extension(p, x)
		}
	}
}

func (r *renderer) service(p *pkg, s protoreflect.ServiceDescriptor) {
	r.heading(4, string(s.FullName()), s.FullName())
	r.block(comments(s.ParentFile().SourceLocations().ByDescriptor(s)))
	methods := s.Methods()
	r.printf("| method | request | response | kind | idempotency |\n|---|---|---|---|---|\n")
	for i := range methods.Len() {
		m := methods.Get(i)
		r.printf("| [%s](#%s) | %s | %s | %s | `%s` |\n", m.Name(), slug(methodHeading(m)),
			r.messageRef(p, m.Input()), r.messageRef(p, m.Output()), kind(m), idempotency(m))
	}
	r.printf("\n")
	for i := range methods.Len() {
		m := methods.Get(i)
		r.heading(5, methodHeading(m), "")
		r.printf("`/%s/%s`: %s, %s → %s.\n\n", s.FullName(), m.Name(), kind(m), r.messageRef(p, m.Input()), r.messageRef(p, m.Output()))
		r.block(comments(m.ParentFile().SourceLocations().ByDescriptor(m)))
	}
}

// methodHeading names a method with its service, so that methods of the
// same name in different services get different anchors.
func methodHeading(m protoreflect.MethodDescriptor) string {
	return string(m.Parent().Name()) + "." + string(m.Name())
}

func kind(m protoreflect.MethodDescriptor) string {
	switch {
	case m.IsStreamingClient() && m.IsStreamingServer():
		return "bidirectional stream"
	case m.IsStreamingClient():
		return "client stream"
	case m.IsStreamingServer():
		return "server stream"
	}
	return "unary"
}

func idempotency(m protoreflect.MethodDescriptor) string {
	opts, _ := m.Options().(*descriptorpb.MethodOptions)
	return opts.GetIdempotencyLevel().String()
}

func (r *renderer) message(p *pkg, m protoreflect.MessageDescriptor) {
	r.heading(4, string(m.FullName()), m.FullName())
	r.block(comments(m.ParentFile().SourceLocations().ByDescriptor(m)))
	if rules := messageRules(m); len(rules) > 0 {
		r.printf("Rules:\n\n")
		for _, rule := range rules {
			r.printf("- %s\n", rule)
		}
		r.printf("\n")
	}
	fields := m.Fields()
	if fields.Len() == 0 {
		r.printf("No fields.\n\n")
		return
	}
	type row struct{ name, number, typ, label, desc, rules string }
	rows := make([]row, fields.Len())
	var hasLabel, hasRules bool
	for i := range fields.Len() {
		fd := fields.Get(i)
		rows[i] = row{
			name:   "`" + string(fd.Name()) + "`",
			number: fmt.Sprint(fd.Number()),
			typ:    r.typeRef(p, fd),
			label:  label(fd),
			desc:   cell(comments(fd.ParentFile().SourceLocations().ByDescriptor(fd))),
			rules:  codeList(fieldRules(fd)),
		}
		hasLabel = hasLabel || rows[i].label != ""
		hasRules = hasRules || rows[i].rules != ""
	}
	header, rule := "| field | number | type |", "|---|---|---|"
	if hasLabel {
		header, rule = header+" label |", rule+"---|"
	}
	header, rule = header+" description |", rule+"---|"
	if hasRules {
		header, rule = header+" validation |", rule+"---|"
	}
	r.printf("%s\n%s\n", header, rule)
	for _, row := range rows {
		line := "| " + row.name + " | " + row.number + " | " + row.typ + " |"
		if hasLabel {
			line += " " + row.label + " |"
		}
		line += " " + row.desc + " |"
		if hasRules {
			line += " " + row.rules + " |"
		}
		r.printf("%s\n", line)
	}
	r.printf("\n")
	oneofs := m.Oneofs()
	listed := false
	for i := range oneofs.Len() {
		o := oneofs.Get(i)
		if o.IsSynthetic() {
			continue
		}
		listed = true
		desc := comments(o.ParentFile().SourceLocations().ByDescriptor(o))
		r.printf("- oneof `%s`", o.Name())
		if desc != "" {
			r.printf(": %s", inline(desc))
		}
		if rules := oneofRules(o); len(rules) > 0 {
			r.printf(" Validation: %s.", codeList(rules))
		}
		r.printf("\n")
	}
	if listed {
		r.printf("\n")
	}
}

// label says how a field is declared: repeated, optional, part of a oneof,
// and whether it is the request's shard key.
func label(fd protoreflect.FieldDescriptor) string {
	var parts []string
	switch {
	case fd.IsMap():
	case fd.IsList():
		parts = append(parts, "repeated")
	case fd.HasOptionalKeyword():
		parts = append(parts, "optional")
	}
	if o := fd.ContainingOneof(); o != nil && !o.IsSynthetic() {
		parts = append(parts, "oneof `"+string(o.Name())+"`")
	}
	if opts, ok := fd.Options().(*descriptorpb.FieldOptions); ok && opts != nil {
		if on, _ := proto.GetExtension(opts, routingv1.E_ShardKey).(bool); on {
			parts = append(parts, "**shard key**")
		}
		if opts.GetDeprecated() {
			parts = append(parts, "deprecated")
		}
	}
	return strings.Join(parts, ", ")
}

// typeRef is a field's type, linked when this page documents it.
func (r *renderer) typeRef(p *pkg, fd protoreflect.FieldDescriptor) string {
	if fd.IsMap() {
		key, val := r.singleRef(p, fd.MapKey()), r.singleRef(p, fd.MapValue())
		if !strings.Contains(val, "](") {
			// Keys are scalars: one code span reads best.
			return "`map<" + strings.Trim(key, "`") + ", " + strings.Trim(val, "`") + ">`"
		}
		return "`map<" + strings.Trim(key, "`") + ",` " + val + "`>`"
	}
	return r.singleRef(p, fd)
}

func (r *renderer) singleRef(p *pkg, fd protoreflect.FieldDescriptor) string {
	switch {
	case fd.Message() != nil:
		return r.ref(p, fd.Message().FullName())
	case fd.Enum() != nil:
		return r.ref(p, fd.Enum().FullName())
	}
	return "`" + fd.Kind().String() + "`"
}

func (r *renderer) messageRef(p *pkg, m protoreflect.MessageDescriptor) string {
	return r.ref(p, m.FullName())
}

// ref names a message or enum: relative to p when it is p's, linked when
// this page documents it.
func (r *renderer) ref(p *pkg, name protoreflect.FullName) string {
	anchor, ok := r.anchors[name]
	if !ok {
		return "`" + string(name) + "`"
	}
	shown := string(name)
	if strings.HasPrefix(shown, string(p.name)+".") {
		shown = relName(name)
	}
	return fmt.Sprintf("[`%s`](#%s)", shown, anchor)
}

func (r *renderer) enum(e protoreflect.EnumDescriptor) {
	r.heading(4, string(e.FullName()), e.FullName())
	r.block(comments(e.ParentFile().SourceLocations().ByDescriptor(e)))
	r.printf("| name | number | description |\n|---|---|---|\n")
	values := e.Values()
	for i := range values.Len() {
		v := values.Get(i)
		r.printf("| `%s` | %d | %s |\n", v.Name(), v.Number(), cell(comments(v.ParentFile().SourceLocations().ByDescriptor(v))))
	}
	r.printf("\n")
}

func (r *renderer) extension(p *pkg, x protoreflect.ExtensionDescriptor) {
	r.heading(4, string(x.FullName()), x.FullName())
	r.printf("Extends `%s` with field %d of type %s.\n\n", x.ContainingMessage().FullName(), x.Number(), r.typeRef(p, x))
	r.block(comments(x.ParentFile().SourceLocations().ByDescriptor(x)))
}

// fieldRules lists a field's protovalidate rules, one "path: value" each.
func fieldRules(fd protoreflect.FieldDescriptor) []string {
	opts, ok := fd.Options().(*descriptorpb.FieldOptions)
	if !ok || opts == nil || !proto.HasExtension(opts, validatepb.E_Field) {
		return nil
	}
	rules, _ := proto.GetExtension(opts, validatepb.E_Field).(*validatepb.FieldRules)
	return flatten(rules.ProtoReflect(), "")
}

func oneofRules(o protoreflect.OneofDescriptor) []string {
	opts, ok := o.Options().(*descriptorpb.OneofOptions)
	if !ok || opts == nil || !proto.HasExtension(opts, validatepb.E_Oneof) {
		return nil
	}
	rules, _ := proto.GetExtension(opts, validatepb.E_Oneof).(*validatepb.OneofRules)
	return flatten(rules.ProtoReflect(), "")
}

// messageRules lists a message's protovalidate rules as Markdown: each CEL
// rule with its id, message and expression, anything else as "path: value".
func messageRules(m protoreflect.MessageDescriptor) []string {
	opts, ok := m.Options().(*descriptorpb.MessageOptions)
	if !ok || opts == nil || !proto.HasExtension(opts, validatepb.E_Message) {
		return nil
	}
	rules, _ := proto.GetExtension(opts, validatepb.E_Message).(*validatepb.MessageRules)
	var out []string
	for _, c := range rules.GetCel() {
		line := code(c.GetId()) + ": " + inline(c.GetMessage())
		if c.GetExpression() != "" {
			line += " (" + code(c.GetExpression()) + ")"
		}
		out = append(out, line)
	}
	rest := proto.CloneOf(rules)
	rest.Cel = nil
	for _, s := range flatten(rest.ProtoReflect(), "") {
		out = append(out, code(s))
	}
	return out
}
