package mapping

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
)

// describe prints rules one per line, with the line of each rule and
// template, so that tests can compare them as text.
func describe(rs *Rules) string {
	var b strings.Builder
	for _, r := range rs.List {
		fmt.Fprintf(&b, "%d %s on=%s", r.Line, r.QualifiedName(), r.On)
		for _, t := range r.Del {
			fmt.Fprintf(&b, " del:%d:%s", t.Line, t)
		}
		for _, t := range r.Incr {
			fmt.Fprintf(&b, " incr:%d:%s", t.Line, t)
		}
		for _, t := range r.Version {
			fmt.Fprintf(&b, " version:%d:%s", t.Line, t)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

func TestParse(t *testing.T) {
	src := `[postgres]   # not the rules' business: left to the config package
slot = 1

[[rule]]
table = "products"
del = ["product:<id>", "product-list:<category_id>"]

[[rule]]
table = "shop.orders"
incr = ["orders"]
on = ["truncate"]

[[rule]]
table = "products"   # a key in del of one rule and version of another
version = [
  "cache:version:products",
  "product:<id>:v",
]
del = ["product:<id>:v"]
`
	rs, err := Parse("f.toml", []byte(src))
	if err == nil || !strings.Contains(err.Error(), `f.toml:17: template "product:<id>:v" is in version here and in del at line 19;`) {
		t.Errorf("Parse with a key in del and version: got %v", err)
	}
	rs, err = Parse("f.toml", []byte(strings.Replace(src, `del = ["product:<id>:v"]`, "", 1)))
	if err != nil {
		t.Fatal(err)
	}
	want := "4 public.products on=insert, update, delete, truncate del:6:product:<id> del:6:product-list:<category_id>\n" +
		"8 shop.orders on=truncate incr:10:orders\n" +
		"13 public.products on=insert, update, delete, truncate version:16:cache:version:products version:17:product:<id>:v\n"
	if got := describe(rs); got != want {
		t.Errorf("rules:\n%s\nwant:\n%s", got, want)
	}
	if got, want := rs.File, "f.toml"; got != want {
		t.Errorf("File = %q, want %q", got, want)
	}
	if _, err := Parse("f.toml", []byte("[postgres]\n")); err == nil || err.Error() != "f.toml: no [[rule]] found; add at least one, with a table and del, incr or version" {
		t.Errorf("Parse without rules: got %v, want no [[rule]] found", err)
	}
}

// TestParseInlineRules checks rules written as an array of inline tables.
func TestParseInlineRules(t *testing.T) {
	src := `rule = [
  { table = "t1", del = ["a:<id>"] },
  { table = "t2", incr = ["b:<id>"], on = ["insert"] },
  { table = "t3", dell = ["c"] },
]
`
	_, err := Parse("f.toml", []byte(src))
	want := `f.toml:4: unknown key "dell" in [[rule]]; allowed keys: table, del, incr, version, on, redelete_after
f.toml:4: rule has no del, incr or version; add del = ["key:<column>"], incr = ["key"] or version = ["key"]`
	if err == nil || err.Error() != want {
		t.Errorf("got:\n%v\nwant:\n%s", err, want)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		file string
		want string
	}{
		{"unknown_rule.toml", `testdata/unknown_rule.toml:7: unknown key "delete" in [[rule]]; allowed keys: table, del, incr, version, on, redelete_after`},
		{"no_templates.toml", `testdata/no_templates.toml:6: rule has no del, incr or version; add del = ["key:<column>"], incr = ["key"] or version = ["key"]`},
		{"version_bad_template.toml", `testdata/version_bad_template.toml:6: template "cache:version:category:<category_id": the "<" at byte 24 has no closing ">"; end the column name with ">", or write "<<" for a literal "<"`},
		{"version_wrong_type.toml", `testdata/version_wrong_type.toml:3: version must be an array of strings, like ["a", "b"]; got a string`},
		{"version_conflict.toml", `testdata/version_conflict.toml:8: template "cache:version:products" is in incr here and in version at line 4; INCR fails on a key that holds an LSN, and an LSN overwrites a counter; keep it in one of them
testdata/version_conflict.toml:11: template "cache:version:products" is in del here and in version at line 4; a version key that is deleted starts over, and entries cached under an old version become reachable again; remove it from del`},
		{"redelete_bad.toml", `testdata/redelete_bad.toml:4: redelete_after "500" is not a duration from 1ms to 1m; write one longer than the application's slowest read-to-SET, like "500ms"`},
		{"redelete_no_del.toml", `testdata/redelete_no_del.toml:5: redelete_after applies to del keys, and this rule has none; add del = [...] or remove redelete_after`},
		{"no_table.toml", `testdata/no_table.toml:1: rule has no table; add table = "schema.table" (or just "table" for the public schema)`},
		{"bad_table.toml", `testdata/bad_table.toml:2: table "shop.public.products" has more than one dot; write "schema.table", or just "table" for the public schema`},
		{"empty_table_part.toml", `testdata/empty_table_part.toml:2: table "shop." has an empty name; write "schema.table", or just "table" for the public schema`},
		{"bad_on.toml", `testdata/bad_on.toml:6: on: "upsert" is not an operation; use insert, update, delete or truncate`},
		{"unclosed.toml", `testdata/unclosed.toml:5: template "product-list:category:<category_id": the "<" at byte 23 has no closing ">"; end the column name with ">", or write "<<" for a literal "<"`},
		{"empty_placeholder.toml", `testdata/empty_placeholder.toml:3: template "cache:<>": empty placeholder "<>"; put a column name inside, or write "<<>>" for a literal "<>"`},
		{"lone_gt.toml", `testdata/lone_gt.toml:3: template "a->b": the ">" at byte 3 has no opening "<"; write ">>" for a literal ">"`},
		{"empty_template.toml", `testdata/empty_template.toml:4: empty template; write a key such as "product:<id>"`},
		{"wrong_type.toml", `testdata/wrong_type.toml:3: del must be an array of strings, like ["a", "b"]; got a string`},
		{"wrong_element.toml", `testdata/wrong_element.toml:5: del[1] must be a string, in double quotes; got an integer`},
		{"rule_not_array.toml", `testdata/rule_not_array.toml:1: rule must be an array of tables: write each rule under its own [[rule]] header, with double brackets`},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			data, err := os.ReadFile("testdata/" + tt.file)
			if err != nil {
				t.Fatal(err)
			}
			rs, err := Parse("testdata/"+tt.file, data)
			if err == nil {
				t.Fatalf("got no error and rules:\n%s", describe(rs))
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tt.want)
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error is a %T, want Errors", err)
			}
			for _, e := range errs {
				var p *Problem
				if !errors.As(e, &p) || p.File != "testdata/"+tt.file {
					t.Errorf("problem %q is not a *Problem in %s", e, tt.file)
				}
			}
		})
	}
}

func TestOps(t *testing.T) {
	tests := []struct {
		ops  Ops
		want string
	}{
		{0, ""},
		{AllOps, "insert, update, delete, truncate"},
		{Ops(0).With(pginvalidator.OpDelete).With(pginvalidator.OpInsert), "insert, delete"},
	}
	for _, tt := range tests {
		if got := tt.ops.String(); got != tt.want {
			t.Errorf("Ops(%d).String() = %q, want %q", tt.ops, got, tt.want)
		}
	}
	if AllOps.Has(pginvalidator.Op(200)) {
		t.Error("AllOps.Has(200) = true, want false")
	}
}

// FuzzParse checks that Parse never panics nor hangs, whatever the file, and
// that it finds a line for every problem.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.toml")
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("rule = [{table = 't', del = ['''a:<id>''']}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := Parse("f.toml", data)
		if err == nil {
			if len(rs.List) == 0 {
				t.Fatal("Parse accepted a file without rules")
			}
			return
		}
		lines := strings.Count(string(data), "\n") + 1
		for _, e := range err.(Errors) {
			p := e.(*Problem)
			if p.Line > lines || p.Line == 0 && !strings.HasPrefix(p.Msg, "no [[rule]]") && !strings.HasPrefix(p.Msg, "TOML") {
				t.Fatalf("problem %q is not on one of the %d lines of %q", p, lines, data)
			}
		}
	})
}
