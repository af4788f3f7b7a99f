package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// slug is the anchor GitHub gives a heading with this text (before it
// numbers repeats): lower case, letters, digits, '-' and '_' kept, spaces
// turned into '-', everything else dropped.
func slug(text string) string {
	var b strings.Builder
	for _, c := range strings.ToLower(text) {
		switch {
		case c == ' ':
			b.WriteByte('-')
		case c == '-' || c == '_' || unicode.IsLetter(c) || unicode.IsDigit(c):
			b.WriteRune(c)
		}
	}
	return b.String()
}

// comments returns a declaration's leading and trailing comments as
// Markdown source: the text after "//", paragraphs kept.
func comments(loc protoreflect.SourceLocation) string {
	var parts []string
	for _, c := range []string{loc.LeadingComments, loc.TrailingComments} {
		lines := strings.Split(c, "\n")
		for i, l := range lines {
			lines[i] = strings.TrimRight(strings.TrimPrefix(l, " "), " \t")
		}
		if s := strings.Trim(strings.Join(lines, "\n"), "\n"); s != "" {
			parts = append(parts, s)
		}
	}
	return escape(strings.Join(parts, "\n\n"))
}

// escape keeps '<' and '>' in comments as text rather than HTML, except in
// code spans, where Markdown shows them as they are.
func escape(s string) string {
	parts := strings.Split(s, "`")
	for i := 0; i < len(parts); i += 2 {
		parts[i] = strings.NewReplacer("<", "&lt;", ">", "&gt;").Replace(parts[i])
	}
	return strings.Join(parts, "`")
}

// block writes s as paragraphs.
func (r *renderer) block(s string) {
	if s != "" {
		r.printf("%s\n\n", s)
	}
}

// inline joins the lines of each paragraph of s, and the paragraphs with a
// line break, for places that hold one line of Markdown.
func inline(s string) string {
	paras := strings.Split(s, "\n\n")
	for i, p := range paras {
		paras[i] = strings.Join(strings.Fields(p), " ")
	}
	return strings.Join(paras, "<br><br>")
}

// cell is inline for a table cell, where '|' would end the cell.
func cell(s string) string { return strings.ReplaceAll(inline(s), "|", `\|`) }

// code is s as a code span.
func code(s string) string {
	if strings.Contains(s, "`") {
		return "`` " + s + " ``"
	}
	return "`" + s + "`"
}

// codeList is items as code spans on separate lines of a table cell.
func codeList(items []string) string {
	out := make([]string, len(items))
	for i, s := range items {
		out[i] = strings.ReplaceAll(code(s), "|", `\|`)
	}
	return strings.Join(out, "<br>")
}

// flatten lists the fields set in m as "path: value", in declaration
// order: {string: {min_bytes: 1}} becomes "string.min_bytes: 1".
func flatten(m protoreflect.Message, prefix string) []string {
	var out []string
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if !m.Has(fd) {
			continue
		}
		name := prefix + string(fd.Name())
		v := m.Get(fd)
		switch {
		case fd.IsList():
			list := v.List()
			items := make([]string, list.Len())
			for j := range list.Len() {
				items[j] = value(fd, list.Get(j))
			}
			out = append(out, name+": ["+strings.Join(items, ", ")+"]")
		case fd.IsMap():
			out = append(out, name+": "+mapValue(fd, v.Map()))
		case fd.Message() != nil && !isTimeMessage(fd.Message()):
			if sub := flatten(v.Message(), name+"."); len(sub) > 0 {
				out = append(out, sub...)
			} else {
				out = append(out, name+": {}")
			}
		default:
			out = append(out, name+": "+value(fd, v))
		}
	}
	return out
}

func isTimeMessage(md protoreflect.MessageDescriptor) bool {
	switch md.FullName() {
	case "google.protobuf.Duration", "google.protobuf.Timestamp":
		return true
	}
	return false
}

// value renders one value of field fd the way protobuf text or JSON would.
func value(fd protoreflect.FieldDescriptor, v protoreflect.Value) string {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		m := v.Message()
		secs, nanos := m.Descriptor().Fields().ByName("seconds"), m.Descriptor().Fields().ByName("nanos")
		switch m.Descriptor().FullName() {
		case "google.protobuf.Duration":
			return durationText(m.Get(secs).Int(), m.Get(nanos).Int())
		case "google.protobuf.Timestamp":
			return time.Unix(m.Get(secs).Int(), m.Get(nanos).Int()).UTC().Format(time.RFC3339Nano)
		}
		return "{" + strings.Join(flatten(m, ""), ", ") + "}"
	case protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return string(ev.Name())
		}
		return strconv.Itoa(int(v.Enum()))
	case protoreflect.StringKind:
		return strconv.Quote(v.String())
	case protoreflect.BytesKind:
		return strconv.Quote(string(v.Bytes()))
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		return strconv.FormatFloat(v.Float(), 'g', -1, 64)
	}
	return fmt.Sprint(v.Interface())
}

// durationText writes a Duration as protobuf JSON does: "1.5s".
func durationText(secs, nanos int64) string {
	s := strconv.FormatInt(secs, 10)
	if nanos != 0 {
		frac := strings.TrimRight(fmt.Sprintf("%09d", abs(nanos)), "0")
		if secs == 0 && nanos < 0 {
			s = "-0"
		}
		s += "." + frac
	}
	return s + "s"
}

func abs(n int64) int64 {
	if n < 0 {
		return -n
	}
	return n
}

// mapValue renders a map field with its keys sorted.
func mapValue(fd protoreflect.FieldDescriptor, m protoreflect.Map) string {
	var items []string
	m.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
		items = append(items, value(fd.MapKey(), k.Value())+": "+value(fd.MapValue(), v))
		return true
	})
	slices.Sort(items)
	return "{" + strings.Join(items, ", ") + "}"
}
