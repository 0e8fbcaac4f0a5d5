package main

import (
	"bytes"
	"context"
	"reflect"
	"strings"
	"testing"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
)

func TestExplain(t *testing.T) {
	const rules = "testdata/explain.toml"
	tests := []struct {
		name string
		args []string
		want string
	}{{
		// The example of the README and docs/operations.md, on the repository's own rules.toml.
		name: "docs: moving a product invalidates both lists",
		args: []string{"--config", "../../rules.toml", "--table", "products", "--op", "update",
			"--old", "id=1,category_id=3", "--new", "id=1,category_id=5"},
		want: `UNLINK product:1
UNLINK product-list:category:5
UNLINK product-list:category:3
INCR cache:version:products
`,
	}, {
		name: "insert",
		args: []string{"--config", rules, "--table", "public.products", "--op", "insert", "--new", "id=7,category_id=2,name=Kite"},
		want: `UNLINK product:7
UNLINK product-list:category:2
INCR cache:version:products
`,
	}, {
		name: "delete",
		args: []string{"--config", rules, "--table", "products", "--op", "delete", "--old", "id=7,category_id=2"},
		want: `UNLINK product:7
UNLINK product-list:category:2
INCR cache:version:products
`,
	}, {
		name: "update without --old: the key did not change",
		args: []string{"--config", rules, "--table", "products", "--op", "update", "--new", "id=7,category_id=2"},
		want: `UNLINK product:7
UNLINK product-list:category:2
INCR cache:version:products
`,
	}, {
		name: "NULL and columns not given render no key",
		args: []string{"--config", rules, "--table", "products", "--op", "update", "--old", "id=7,category_id=NULL", "--new", "id=7"},
		want: `UNLINK product:7
INCR cache:version:products
# testdata/explain.toml:5: product-list:category:<category_id> renders no key for the new row: category_id is not given, so NULL
# testdata/explain.toml:5: product-list:category:<category_id> renders no key for the old row: category_id is NULL
`,
	}, {
		name: "escapes, the text NULL and the empty string",
		args: []string{"--config", rules, "--table", "products", "--op", "insert", "--new", `id=1\,2,category_id=\NULL,name=`},
		want: `UNLINK product:1,2
UNLINK product-list:category:NULL
INCR cache:version:products
`,
	}, {
		name: "an empty value renders an empty placeholder",
		args: []string{"--config", rules, "--table", "products", "--op", "insert", "--new", `id=,category_id=a\\b`},
		want: `UNLINK product:
UNLINK product-list:category:a\b
INCR cache:version:products
`,
	}, {
		name: "a rule that does not handle the operation",
		args: []string{"--config", rules, "--table", "shop.orders", "--op", "delete", "--old", "id=9,customer_id=4"},
		want: `# testdata/explain.toml:8: rule for shop.orders does not handle delete (on = insert, update, truncate)
`,
	}, {
		name: "truncate turns placeholders into patterns",
		args: []string{"--config", rules, "--table", "shop.orders", "--op", "truncate"},
		want: `SCAN+UNLINK order:*
SCAN+UNLINK customer:*:orders
SCAN+INCR version:customer:*
`,
	}, {
		name: "truncate of a table with plain keys",
		args: []string{"--config", rules, "--table", "products", "--op", "truncate"},
		want: `SCAN+UNLINK product:*
SCAN+UNLINK product-list:category:*
INCR cache:version:products
`,
	}, {
		name: "json",
		args: []string{"--config", rules, "--table", "shop.orders", "--op", "update", "--json",
			"--old", "id=9,customer_id=4", "--new", "id=9,customer_id=NULL"},
		want: `{"action":"del","key":"order:9"}
{"action":"del","key":"customer:4:orders"}
{"action":"incr","key":"version:customer:4"}
{"line":10,"template":"customer:<customer_id>:orders","row":"new","skipped":"customer_id is NULL"}
{"line":11,"template":"version:customer:<customer_id>","row":"new","skipped":"customer_id is NULL"}
`,
	}, {
		name: "version keys",
		args: []string{"--config", "testdata/explain_version.toml", "--table", "products", "--op", "update",
			"--old", "id=1,category_id=3", "--new", "id=1,category_id=NULL"},
		want: `UNLINK product:1
VERSION cache:version:products
VERSION cache:version:category:3
# testdata/explain_version.toml:4: cache:version:category:<category_id> renders no key for the new row: category_id is NULL
`,
	}, {
		name: "version keys on truncate, as json",
		args: []string{"--config", "testdata/explain_version.toml", "--table", "products", "--op", "truncate", "--json"},
		want: `{"action":"del_pattern","key":"product:*"}
{"action":"version","key":"cache:version:products"}
{"action":"version_pattern","key":"cache:version:category:*"}
`,
	}, {
		name: "re-delete",
		args: []string{"--config", "testdata/explain_redelete.toml", "--table", "products", "--op", "delete", "--old", "id=1"},
		want: `UNLINK product:1, again after 500ms
INCR cache:version:products
`,
	}, {
		name: "re-delete on truncate, as json",
		args: []string{"--config", "testdata/explain_redelete.toml", "--table", "products", "--op", "truncate", "--json"},
		want: `{"action":"del_pattern","key":"product:*","redelete_after":"500ms"}
{"action":"incr","key":"cache:version:products"}
`,
	}, {
		name: "json for a rule that does not handle the operation",
		args: []string{"--config", rules, "--table", "shop.orders", "--op", "delete", "--old", "id=9", "--json"},
		want: `{"line":8,"skipped":"rule for shop.orders does not handle delete (on = insert, update, truncate)"}
`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := Main(context.Background(), append([]string{"explain"}, tt.args...), &out, &errOut); code != 0 {
				t.Fatalf("exit %d, stderr:\n%s", code, errOut.String())
			}
			if got := out.String(); got != tt.want {
				t.Errorf("stdout:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

func TestExplainErrors(t *testing.T) {
	const rules = "testdata/explain.toml"
	tests := []struct {
		name string
		args []string
		code int
		want string // the whole of stderr; for exit 2, its first line
	}{{
		name: "unknown table",
		args: []string{"--config", rules, "--table", "prodcts", "--op", "truncate"},
		code: 1,
		want: "pg-invalidator: testdata/explain.toml has no rule for table public.prodcts; its rule tables are: public.products, shop.orders\n",
	}, {
		name: "unknown operation",
		args: []string{"--config", rules, "--table", "products", "--op", "upsert"},
		code: 1,
		want: "pg-invalidator: --op \"upsert\": want insert, update, delete or truncate\n",
	}, {
		name: "a pair without =",
		args: []string{"--config", rules, "--table", "products", "--op", "insert", "--new", "id=1,category_id"},
		code: 1,
		want: "pg-invalidator: --new: \"category_id\" has no \"=\"; write col=value\n",
	}, {
		name: "a column given twice",
		args: []string{"--config", rules, "--table", "products", "--op", "delete", "--old", "id=1,id=2"},
		code: 1,
		want: "pg-invalidator: --old: column id is given twice\n",
	}, {
		name: "a trailing backslash",
		args: []string{"--config", rules, "--table", "products", "--op", "insert", "--new", `id=1\`},
		code: 1,
		want: "pg-invalidator: --new: a \"\\\" at the end escapes nothing; write \"\\\\\" for a backslash\n",
	}, {
		name: "an insert with an old row",
		args: []string{"--config", rules, "--table", "products", "--op", "insert", "--old", "id=1", "--new", "id=1"},
		code: 1,
		want: "pg-invalidator: --old: an insert has no old row; give --new\n",
	}, {
		name: "a delete without an old row",
		args: []string{"--config", rules, "--table", "products", "--op", "delete"},
		code: 1,
		want: "pg-invalidator: a delete needs --old\n",
	}, {
		name: "a truncate with rows",
		args: []string{"--config", rules, "--table", "products", "--op", "truncate", "--new", "id=1"},
		code: 1,
		want: "pg-invalidator: a truncate has no rows; leave out --old and --new\n",
	}, {
		name: "a missing rules file",
		args: []string{"--config", "testdata/nope.toml", "--table", "products", "--op", "truncate"},
		code: 1,
		want: "pg-invalidator: load rules: open testdata/nope.toml: no such file or directory\n",
	}, {
		name: "no --op",
		args: []string{"--config", rules, "--table", "products"},
		code: 2,
		want: "explain needs --table and --op",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Main(context.Background(), append([]string{"explain"}, tt.args...), &out, &errOut)
			if code != tt.code {
				t.Errorf("exit %d, want %d", code, tt.code)
			}
			got := errOut.String()
			if tt.code == 2 {
				got, _, _ = strings.Cut(got, "\n")
			}
			if got != tt.want {
				t.Errorf("stderr:\n%s\nwant:\n%s", got, tt.want)
			}
			if out.Len() > 0 {
				t.Errorf("stdout is not empty:\n%s", out.String())
			}
		})
	}
}

func TestParseRow(t *testing.T) {
	text := func(s string) pginvalidator.Value {
		return pginvalidator.Value{Kind: pginvalidator.ValueText, Data: []byte(s)}
	}
	null := pginvalidator.Value{Kind: pginvalidator.ValueNull}
	tests := []struct {
		in   string
		want []field
	}{
		{"", nil},
		{"id=1", []field{{"id", text("1")}}},
		{"a=1,b=NULL,c=,d=\\NULL", []field{{"a", text("1")}, {"b", null}, {"c", text("")}, {"d", text("NULL")}}},
		{`a=x\,y,b=p\\q,c=k=v`, []field{{"a", text("x,y")}, {"b", text(`p\q`)}, {"c", text("k=v")}}},
		{`we\=ird=1`, []field{{"we=ird", text("1")}}},
		{"a=NULL\\", nil}, // an error, checked below
	}
	for _, tt := range tests[:len(tests)-1] {
		got, err := parseRow(tt.in)
		if err != nil {
			t.Errorf("parseRow(%q): %v", tt.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("parseRow(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
	if _, err := parseRow(tests[len(tests)-1].in); err == nil {
		t.Errorf("parseRow(%q): no error", tests[len(tests)-1].in)
	}
}

func TestExplainAndSetupHelp(t *testing.T) {
	for _, args := range [][]string{{"explain", "--help"}, {"setup", "--help"}} {
		var out, errOut bytes.Buffer
		if code := Main(context.Background(), args, &out, &errOut); code != 0 {
			t.Errorf("%v exited %d, want 0", args, code)
		}
		if !strings.Contains(errOut.String(), "Usage: pg-invalidator "+args[0]) {
			t.Errorf("%v printed:\n%s", args, errOut.String())
		}
	}
	var out, errOut bytes.Buffer
	Main(context.Background(), []string{"help"}, &out, &errOut)
	for _, cmd := range []string{"pg-invalidator explain", "pg-invalidator setup"} {
		if !strings.Contains(out.String(), cmd) {
			t.Errorf("usage lacks %q", cmd)
		}
	}
}
