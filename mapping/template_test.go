package mapping

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
)

// parts shows a template's literal text and placeholders: "a:" <id> "".
func parts(t *Template) string {
	var b strings.Builder
	for i, lit := range t.lits {
		fmt.Fprintf(&b, "%q", lit)
		if i < len(t.cols) {
			fmt.Fprintf(&b, " <%s> ", t.cols[i])
		}
	}
	return b.String()
}

func TestParseTemplate(t *testing.T) {
	tests := []struct {
		src     string
		parts   string
		pattern string
		err     string
	}{
		{src: "product:<id>", parts: `"product:" <id> ""`, pattern: "product:*"},
		{src: "cache:version", parts: `"cache:version"`, pattern: "cache:version"},
		{src: "<a><b>", parts: `"" <a> "" <b> ""`, pattern: "**"},
		{src: "l:<category_id>:p:<page>", parts: `"l:" <category_id> ":p:" <page> ""`, pattern: "l:*:p:*"},
		{src: "<<html>>:<id>", parts: `"<html>:" <id> ""`, pattern: "<html>:*"},
		{src: "<<<id>>>", parts: `"<" <id> ">"`, pattern: "<*>"},
		{src: "a<<>>b", parts: `"a<>b"`, pattern: "a<>b"},
		{src: `k*?[x]\:<Id Col>`, parts: `"k*?[x]\\:" <Id Col> ""`, pattern: `k\*\?\[x\]\\:*`},
		{src: "é:<naïve>", parts: `"é:" <naïve> ""`, pattern: "é:*"},
		{src: "", err: `empty template; write a key such as "product:<id>"`},
		{src: "a:<id", err: `template "a:<id": the "<" at byte 3 has no closing ">"; end the column name with ">", or write "<<" for a literal "<"`},
		{src: "a:<id:<x>", err: `template "a:<id:<x>": the "<" at byte 3 has no closing ">"; end the column name with ">", or write "<<" for a literal "<"`},
		{src: "a:<>", err: `template "a:<>": empty placeholder "<>"; put a column name inside, or write "<<>>" for a literal "<>"`},
		{src: "a>", err: `template "a>": the ">" at byte 2 has no opening "<"; write ">>" for a literal ">"`},
		{src: "<id>>", err: `template "<id>>": the ">" at byte 5 has no opening "<"; write ">>" for a literal ">"`},
		{src: "<<id>", err: `template "<<id>": the ">" at byte 5 has no opening "<"; write ">>" for a literal ">"`},
		{src: "a:< id>", err: `template "a:< id>": placeholder "< id>" has spaces around the column name; write "<id>"`},
	}
	for _, tt := range tests {
		got, err := ParseTemplate(tt.src)
		if tt.err != "" {
			if err == nil || err.Error() != tt.err {
				t.Errorf("ParseTemplate(%q) error = %v, want %s", tt.src, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseTemplate(%q): %v", tt.src, err)
			continue
		}
		if p := parts(got); p != tt.parts {
			t.Errorf("ParseTemplate(%q) = %s, want %s", tt.src, p, tt.parts)
		}
		if p := got.Pattern(); p != tt.pattern {
			t.Errorf("ParseTemplate(%q).Pattern() = %q, want %q", tt.src, p, tt.pattern)
		}
		if s := got.String(); s != tt.src {
			t.Errorf("ParseTemplate(%q).String() = %q", tt.src, s)
		}
	}
}

func TestTemplateColumns(t *testing.T) {
	tmpl, err := ParseTemplate("<b>:<a>:<b>")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := tmpl.Columns(), []string{"b", "a"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Columns() = %q, want %q", got, want)
	}
}

// canonical writes a template's source from its parts. The syntax has one
// spelling for each template, so it must equal the source.
func canonical(t *Template) string {
	var b strings.Builder
	for i, lit := range t.lits {
		lit = strings.ReplaceAll(lit, "<", "<<")
		b.WriteString(strings.ReplaceAll(lit, ">", ">>"))
		if i < len(t.cols) {
			b.WriteString("<" + t.cols[i] + ">")
		}
	}
	return b.String()
}

// oneTemplate returns a Mapper whose only rule increments t for public.t,
// and a relation that has t's columns.
func oneTemplate(t *Template) (*Mapper, *pginvalidator.Relation) {
	rel := &pginvalidator.Relation{ID: 1, Schema: "public", Name: "t"}
	for _, c := range t.Columns() {
		rel.Columns = append(rel.Columns, pginvalidator.Column{Name: c})
	}
	c := &Rules{File: "rules.toml", List: []*Rule{{Schema: "public", Table: "t", Incr: []*Template{t}, On: AllOps}}}
	return NewMapper(c), rel
}

func FuzzParseTemplate(f *testing.F) {
	for _, s := range []string{
		"product:<id>", "cache:version", "<a><b>", "<<<id>>>", "a<<>>b", `k*?[x]\:<id>`,
		"", "<", ">", "<>", "<<", ">>", "a:<id", "<id>>", "< id >", "é:<naïve>",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tmpl, err := ParseTemplate(s)
		if err != nil {
			return
		}
		if got := canonical(tmpl); got != s {
			t.Fatalf("canonical(ParseTemplate(%q)) = %q", s, got)
		}
		again, err := ParseTemplate(tmpl.String())
		if err != nil {
			t.Fatalf("ParseTemplate(%q) then String(): %v", s, err)
		}
		if !reflect.DeepEqual(again, tmpl) {
			t.Fatalf("ParseTemplate(%q) = %s, then %s", s, parts(tmpl), parts(again))
		}

		// Render with every column present: value i is "v<i>".
		m, rel := oneTemplate(tmpl)
		row := make(pginvalidator.Row, len(rel.Columns))
		for i := range row {
			row[i] = pginvalidator.Value{Kind: pginvalidator.ValueText, Data: fmt.Appendf(nil, "v%d", i)}
		}
		var want strings.Builder
		for i, lit := range tmpl.lits {
			want.WriteString(lit)
			if i < len(tmpl.cols) {
				fmt.Fprintf(&want, "v%d", indexOf(rel, tmpl.cols[i]))
			}
		}
		got := m.Commands(nil, &pginvalidator.Change{Rel: rel, Op: pginvalidator.OpInsert, New: row})
		if len(got) != 1 || got[0] != (pginvalidator.Command{Action: pginvalidator.Incr, Key: want.String()}) {
			t.Fatalf("template %q rendered %v, want one incr %q", s, got, want.String())
		}
	})
}

func indexOf(rel *pginvalidator.Relation, col string) int {
	for i, c := range rel.Columns {
		if c.Name == col {
			return i
		}
	}
	return -1
}

func BenchmarkRender(b *testing.B) {
	tmpl, err := ParseTemplate("product-list:category:<category_id>:page:<page>")
	if err != nil {
		b.Fatal(err)
	}
	m, rel := oneTemplate(tmpl)
	ch := &pginvalidator.Change{Rel: rel, Op: pginvalidator.OpInsert, New: pginvalidator.Row{
		{Kind: pginvalidator.ValueText, Data: []byte("12345")},
		{Kind: pginvalidator.ValueText, Data: []byte("7")},
	}}
	dst := m.Commands(nil, ch)
	b.ReportAllocs()
	for b.Loop() {
		dst = m.Commands(dst[:0], ch)
	}
	if len(dst) != 1 || dst[0].Key != "product-list:category:12345:page:7" {
		b.Fatalf("rendered %v", dst)
	}
}
