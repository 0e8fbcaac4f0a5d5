package mapping

import (
	"reflect"
	"strings"
	"testing"
	"time"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
)

const mapperRules = `
[[rule]]
table = "products"
del = ["product:<id>", "product-list:category:<category_id>"]
incr = ["cache:version:products"]

[[rule]]  # names a key the first rule names too
table = "products"
on = ["update"]
del = ["product:<id>"]

[[rule]]
table = "shop.orders"
on = ["insert", "truncate"]
del = ["order:<id>", "orders:*:<customer>"]
incr = ["orders:v", "orders:v:<customer>"]
`

func mustParse(tb testing.TB, src string) *Rules {
	tb.Helper()
	c, err := Parse("rules.toml", []byte(src))
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

var (
	products = &pginvalidator.Relation{ID: 100, Schema: "public", Name: "products", ReplicaIdentity: pginvalidator.IdentityDefault,
		Columns: []pginvalidator.Column{{Name: "id", Key: true}, {Name: "name"}, {Name: "category_id"}, {Name: "description"}}}
	orders = &pginvalidator.Relation{ID: 200, Schema: "shop", Name: "orders", ReplicaIdentity: pginvalidator.IdentityDefault,
		Columns: []pginvalidator.Column{{Name: "id", Key: true}, {Name: "customer"}}}
	users = &pginvalidator.Relation{ID: 300, Schema: "public", Name: "users",
		Columns: []pginvalidator.Column{{Name: "id", Key: true}}}
)

// toast is an unchanged TOASTed value in a row.
var toast = pginvalidator.Value{Kind: pginvalidator.ValueUnchanged}

// row builds a Row: a string is a text value, nil is NULL, and a Value is
// itself.
func row(vals ...any) pginvalidator.Row {
	r := make(pginvalidator.Row, len(vals))
	for i, v := range vals {
		switch v := v.(type) {
		case string:
			r[i] = pginvalidator.Value{Kind: pginvalidator.ValueText, Data: []byte(v)}
		case pginvalidator.Value:
			r[i] = v
		}
	}
	return r
}

func del(key string) pginvalidator.Command {
	return pginvalidator.Command{Action: pginvalidator.Del, Key: key}
}
func incr(key string) pginvalidator.Command {
	return pginvalidator.Command{Action: pginvalidator.Incr, Key: key}
}
func delPattern(key string) pginvalidator.Command {
	return pginvalidator.Command{Action: pginvalidator.DelPattern, Key: key}
}
func incrPattern(key string) pginvalidator.Command {
	return pginvalidator.Command{Action: pginvalidator.IncrPattern, Key: key}
}
func version(key string) pginvalidator.Command {
	return pginvalidator.Command{Action: pginvalidator.Version, Key: key}
}
func versionPattern(key string) pginvalidator.Command {
	return pginvalidator.Command{Action: pginvalidator.VersionPattern, Key: key}
}

// statsOf returns the Stats a Mapper should report after producing cmds,
// with skip's Skipped counters.
func statsOf(skip Stats, cmds []pginvalidator.Command) Stats {
	want := skip
	for _, cmd := range cmds {
		switch cmd.Action {
		case pginvalidator.Del:
			want.Del++
		case pginvalidator.Incr:
			want.Incr++
		case pginvalidator.DelPattern:
			want.DelPattern++
		case pginvalidator.IncrPattern:
			want.IncrPattern++
		case pginvalidator.Version:
			want.Version++
		case pginvalidator.VersionPattern:
			want.VersionPattern++
		}
	}
	return want
}

func TestCommands(t *testing.T) {
	const (
		ins   = pginvalidator.OpInsert
		upd   = pginvalidator.OpUpdate
		dlt   = pginvalidator.OpDelete
		trunc = pginvalidator.OpTruncate
	)
	tests := []struct {
		name string
		ch   pginvalidator.Change
		want []pginvalidator.Command
		skip Stats // only the Skipped counters
	}{
		{
			name: "insert",
			ch:   pginvalidator.Change{Rel: products, Op: ins, New: row("1", "pen", "3", "blue")},
			want: []pginvalidator.Command{del("product:1"), del("product-list:category:3"), incr("cache:version:products")},
		},
		{
			name: "insert with a NULL column",
			ch:   pginvalidator.Change{Rel: products, Op: ins, New: row("1", "pen", nil, "blue")},
			want: []pginvalidator.Command{del("product:1"), incr("cache:version:products")},
			skip: Stats{SkippedNull: 1},
		},
		{
			name: "delete with the full old row",
			ch:   pginvalidator.Change{Rel: products, Op: dlt, Old: row("1", "pen", "3", "blue")},
			want: []pginvalidator.Command{del("product:1"), del("product-list:category:3"), incr("cache:version:products")},
		},
		{
			name: "delete with the old key only",
			ch:   pginvalidator.Change{Rel: products, Op: dlt, Old: row("1", nil, nil, nil), OldKeyOnly: true},
			want: []pginvalidator.Command{del("product:1"), incr("cache:version:products")},
			skip: Stats{SkippedUnavailable: 1},
		},
		{
			name: "delete with a NULL in the full old row",
			ch:   pginvalidator.Change{Rel: products, Op: dlt, Old: row("1", "pen", nil, "blue")},
			want: []pginvalidator.Command{del("product:1"), incr("cache:version:products")},
			skip: Stats{SkippedNull: 1},
		},
		{
			name: "update without an old row renders the new one",
			ch:   pginvalidator.Change{Rel: products, Op: upd, New: row("1", "pen", "3", "blue")},
			want: []pginvalidator.Command{del("product:1"), del("product-list:category:3"), incr("cache:version:products")},
		},
		{
			name: "update moving a product to another category",
			ch: pginvalidator.Change{Rel: products, Op: upd,
				Old: row("1", "pen", "3", "blue"), New: row("1", "pen", "5", "blue")},
			want: []pginvalidator.Command{del("product:1"), del("product-list:category:5"), del("product-list:category:3"), incr("cache:version:products")},
		},
		{
			name: "update with an unchanged TOASTed value taken from the full old row",
			ch: pginvalidator.Change{Rel: products, Op: upd,
				Old: row("1", "pen", "3", "blue"), New: row("1", "pencil", toast, toast)},
			want: []pginvalidator.Command{del("product:1"), del("product-list:category:3"), incr("cache:version:products")},
		},
		{
			name: "update with an unchanged TOASTed value and no old row",
			ch:   pginvalidator.Change{Rel: products, Op: upd, New: row("1", "pencil", toast, toast)},
			want: []pginvalidator.Command{del("product:1"), incr("cache:version:products")},
			skip: Stats{SkippedUnavailable: 1},
		},
		{
			name: "update changing the key, old key only",
			ch: pginvalidator.Change{Rel: products, Op: upd, OldKeyOnly: true,
				Old: row("1", nil, nil, nil), New: row("2", "pen", toast, "blue")},
			want: []pginvalidator.Command{del("product:2"), del("product:1"), incr("cache:version:products")},
			skip: Stats{SkippedUnavailable: 2},
		},
		{
			name: "truncate",
			ch:   pginvalidator.Change{Rel: products, Op: trunc},
			want: []pginvalidator.Command{delPattern("product:*"), delPattern("product-list:category:*"), incr("cache:version:products")},
		},
		{
			name: "truncate escapes glob characters",
			ch:   pginvalidator.Change{Rel: orders, Op: trunc},
			want: []pginvalidator.Command{delPattern("order:*"), delPattern(`orders:\*:*`), incr("orders:v"), incrPattern("orders:v:*")},
		},
		{
			name: "insert in another schema",
			ch:   pginvalidator.Change{Rel: orders, Op: ins, New: row("7", "ann")},
			want: []pginvalidator.Command{del("order:7"), del("orders:*:ann"), incr("orders:v"), incr("orders:v:ann")},
		},
		{
			name: "an operation the rule does not handle",
			ch:   pginvalidator.Change{Rel: orders, Op: dlt, Old: row("7", "ann")},
		},
		{
			name: "a table no rule names",
			ch:   pginvalidator.Change{Rel: users, Op: ins, New: row("1")},
		},
	}
	c := mustParse(t, mapperRules)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMapper(c)
			got := m.Commands(nil, &tt.ch)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %v\nwant %v", got, tt.want)
			}
			if got, want := m.Stats(), statsOf(tt.skip, tt.want); got != want {
				t.Errorf("Stats() = %+v, want %+v", got, want)
			}
		})
	}
}

// TestCommandsVersion checks version templates: rendered like del and incr,
// deduplicated within a change, and turned into VersionPattern by a
// truncate when they have placeholders.
func TestCommandsVersion(t *testing.T) {
	rules := mustParse(t, `
[[rule]]
table = "products"
del = ["product:<id>"]
version = ["cache:version:products", "cache:version:category:<category_id>"]

[[rule]]
table = "shop.orders"
on = ["truncate"]
version = ["orders:v", "orders:v:<customer>", "orders:v:<customer>"]
`)
	const (
		ins   = pginvalidator.OpInsert
		upd   = pginvalidator.OpUpdate
		dlt   = pginvalidator.OpDelete
		trunc = pginvalidator.OpTruncate
	)
	tests := []struct {
		name string
		ch   pginvalidator.Change
		want []pginvalidator.Command
		skip Stats
	}{
		{
			name: "insert",
			ch:   pginvalidator.Change{Rel: products, Op: ins, New: row("1", "pen", "3", "blue")},
			want: []pginvalidator.Command{del("product:1"), version("cache:version:products"), version("cache:version:category:3")},
		},
		{
			name: "update moving a product: both categories, the table's key once",
			ch: pginvalidator.Change{Rel: products, Op: upd, Old: row("1", "pen", "3", "blue"),
				New: row("1", "pen", "5", "blue")},
			want: []pginvalidator.Command{del("product:1"), version("cache:version:products"),
				version("cache:version:category:5"), version("cache:version:category:3")},
		},
		{
			name: "delete with a NULL category",
			ch:   pginvalidator.Change{Rel: products, Op: dlt, Old: row("1", "pen", nil, "blue")},
			want: []pginvalidator.Command{del("product:1"), version("cache:version:products")},
			skip: Stats{SkippedNull: 1},
		},
		{
			name: "truncate",
			ch:   pginvalidator.Change{Rel: products, Op: trunc},
			want: []pginvalidator.Command{delPattern("product:*"), version("cache:version:products"),
				versionPattern("cache:version:category:*")},
		},
		{
			name: "truncate, the same pattern twice in one rule",
			ch:   pginvalidator.Change{Rel: orders, Op: trunc},
			want: []pginvalidator.Command{version("orders:v"), versionPattern("orders:v:*")},
		},
		{
			name: "an operation the rule does not handle",
			ch:   pginvalidator.Change{Rel: orders, Op: ins, New: row("7", "ann")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMapper(rules)
			got := m.Commands(nil, &tt.ch)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %v\nwant %v", got, tt.want)
			}
			if got, want := m.Stats(), statsOf(tt.skip, tt.want); got != want {
				t.Errorf("Stats() = %+v, want %+v", got, want)
			}
		})
	}
}

// TestCommandsAppends checks that Commands keeps what dst holds and does not
// deduplicate against it: the invalidator does that per batch.
func TestCommandsAppends(t *testing.T) {
	m := NewMapper(mustParse(t, mapperRules))
	dst := []pginvalidator.Command{del("product:1")}
	dst = m.Commands(dst, &pginvalidator.Change{Rel: products, Op: pginvalidator.OpInsert, New: row("1", "pen", "3", "blue")})
	dst = m.Commands(dst, &pginvalidator.Change{Rel: products, Op: pginvalidator.OpInsert, New: row("1", "pen", "3", "blue")})
	want := []pginvalidator.Command{
		del("product:1"),
		del("product:1"), del("product-list:category:3"), incr("cache:version:products"),
		del("product:1"), del("product-list:category:3"), incr("cache:version:products"),
	}
	if !reflect.DeepEqual(dst, want) {
		t.Errorf("got  %v\nwant %v", dst, want)
	}
}

// TestCommandsUnknownColumn checks a relation that lost a column the rules
// use: the problem is reported once per relation and template, and the other
// templates keep working.
func TestCommandsUnknownColumn(t *testing.T) {
	m := NewMapper(mustParse(t, mapperRules))
	type report struct{ table, column, err string }
	var reports []report
	m.OnProblem = func(table, column string, err error) {
		reports = append(reports, report{table, column, err.Error()})
	}
	dropped := func() *pginvalidator.Relation {
		return &pginvalidator.Relation{ID: 100, Schema: "public", Name: "products",
			Columns: []pginvalidator.Column{{Name: "id", Key: true}, {Name: "name"}, {Name: "description"}}}
	}
	rel := dropped()
	insert := &pginvalidator.Change{Rel: rel, Op: pginvalidator.OpInsert, New: row("1", "pen", "blue")}
	for range 2 {
		got := m.Commands(nil, insert)
		want := []pginvalidator.Command{del("product:1"), incr("cache:version:products")}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got  %v\nwant %v", got, want)
		}
	}
	got := m.Commands(nil, &pginvalidator.Change{Rel: rel, Op: pginvalidator.OpTruncate})
	want := []pginvalidator.Command{delPattern("product:*"), delPattern("product-list:category:*"), incr("cache:version:products")}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("truncate: got  %v\nwant %v", got, want)
	}
	insert.Rel = dropped() // the stream announced the relation again
	m.Commands(nil, insert)

	r := report{"public.products", "category_id",
		`rules.toml:4: table public.products has no column "category_id" in the replication stream (dropped or renamed?), so template "product-list:category:<category_id>" is skipped for it; its columns are: id, name, description; fix the rule and restart`}
	if want := []report{r, r}; !reflect.DeepEqual(reports, want) {
		t.Errorf("reports:\n%q\nwant:\n%q", reports, want)
	}
	if got, want := m.Stats().SkippedUnknownColumn, uint64(3); got != want {
		t.Errorf("SkippedUnknownColumn = %d, want %d", got, want)
	}
}

func BenchmarkCommands(b *testing.B) {
	c := mustParse(b, `
[[rule]]
table = "items"
del = ["item:<id>", "items:cat:<cat>"]
`)
	rel := &pginvalidator.Relation{ID: 1, Schema: "public", Name: "items", ReplicaIdentity: pginvalidator.IdentityFull,
		Columns: []pginvalidator.Column{{Name: "id", Key: true}, {Name: "name", Key: true}, {Name: "cat", Key: true}}}
	ch := &pginvalidator.Change{Rel: rel, Op: pginvalidator.OpUpdate,
		Old: row("12345", "a pen", "3"), New: row("12345", "a pen", "5")}
	m := NewMapper(c)
	dst := m.Commands(nil, ch)
	b.ReportAllocs()
	for b.Loop() {
		dst = m.Commands(dst[:0], ch)
	}
	want := []pginvalidator.Command{del("item:12345"), del("items:cat:5"), del("items:cat:3")}
	if !reflect.DeepEqual(dst, want) {
		b.Fatalf("got %v, want %v", dst, want)
	}
}

func TestFlushCommands(t *testing.T) {
	c, err := Parse("rules.toml", []byte(`
[[rule]]
table = "products"
del  = ["product:<id>", "product-list:category:<category_id>", "products:all"]
incr = ["cache:version:products", "version:product:<id>"]
on   = ["delete"]

[[rule]]
table = "categories"
del  = ["product-list:category:<id>", "odd*key:<id>"]
version = ["lsn:categories", "lsn:category:<id>", "lsn:categories"]

[[rule]]
table = "brands"
version = ["lsn:categories"]
on = ["insert"]
`))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, cmd := range c.FlushCommands() {
		got = append(got, cmd.Action.String()+" "+cmd.Key)
	}
	want := []string{
		"del_pattern product:*",
		"del_pattern product-list:category:*",
		"del products:all",
		"incr cache:version:products",
		"incr_pattern version:product:*",
		`del_pattern odd\*key:*`,
		"version lsn:categories",
		"version_pattern lsn:category:*",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("FlushCommands:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestTableFlushCommands(t *testing.T) {
	c, err := Parse("rules.toml", []byte(`
[[rule]]
table = "products"
del  = ["product:<id>", "products:all"]
on   = ["insert"]

[[rule]]
table = "categories"
del  = ["product-list:category:<id>"]

[[rule]]
table = "public.products"
incr = ["version:product:<id>"]
del  = ["products:all"]
`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		table string
		want  []string
	}{
		{"public.products", []string{"del_pattern product:*", "del products:all", "incr_pattern version:product:*"}},
		{"public.categories", []string{"del_pattern product-list:category:*"}},
		{"public.brands", nil},
		{"", nil},
	}
	for _, tt := range tests {
		var got []string
		for _, cmd := range c.TableFlushCommands(tt.table) {
			got = append(got, cmd.Action.String()+" "+cmd.Key)
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("TableFlushCommands(%q) = %q, want %q", tt.table, got, tt.want)
		}
	}
}

func TestSetRulesKeepsCounters(t *testing.T) {
	first, err := Parse("a.toml", []byte("[[rule]]\ntable = \"t\"\ndel = [\"a:<id>\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	second, err := Parse("b.toml", []byte("[[rule]]\ntable = \"t\"\ndel = [\"b:<id>\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	rel := &pginvalidator.Relation{ID: 1, Schema: "public", Name: "t", Columns: []pginvalidator.Column{{Name: "id", Key: true}}}
	ch := &pginvalidator.Change{Rel: rel, Op: pginvalidator.OpInsert,
		New: pginvalidator.Row{{Kind: pginvalidator.ValueText, Data: []byte("7")}}}
	m := NewMapper(first)
	if got := m.Commands(nil, ch); len(got) != 1 || got[0].Key != "a:7" {
		t.Fatalf("before SetRules: %v", got)
	}
	m.SetRules(second) // same *Relation: the cached plan must not survive
	if got := m.Commands(nil, ch); len(got) != 1 || got[0].Key != "b:7" {
		t.Fatalf("after SetRules: %v", got)
	}
	if got := m.Stats().Del; got != 2 {
		t.Fatalf("Stats().Del = %d after SetRules, want 2", got)
	}
}

// TestRedelete checks that a rule's redelete_after rides on the Del and
// DelPattern commands it renders, on nothing else, and that a key two rules
// delete keeps the longer delay.
func TestRedelete(t *testing.T) {
	rs := mustParse(t, `
[[rule]]
table = "products"
del = ["product:<id>", "product-list:category:<category_id>"]
incr = ["cache:counter:products"]
redelete_after = "500ms"

[[rule]]
table = "products"
del = ["product:<id>", "product-name:<name>"]
redelete_after = "2s"

[[rule]]
table = "products"
del = ["product-page:<id>"]
`)
	m := NewMapper(rs)
	got := m.Commands(nil, &pginvalidator.Change{Rel: products, Op: pginvalidator.OpInsert, New: row("1", "pen", "3", "d")})
	want := []pginvalidator.Command{
		{Action: pginvalidator.Del, Key: "product:1", Redelete: 2 * time.Second},
		{Action: pginvalidator.Del, Key: "product-list:category:3", Redelete: 500 * time.Millisecond},
		{Action: pginvalidator.Incr, Key: "cache:counter:products"},
		{Action: pginvalidator.Del, Key: "product-name:pen", Redelete: 2 * time.Second},
		{Action: pginvalidator.Del, Key: "product-page:1"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("insert:\ngot  %v\nwant %v", got, want)
	}
	got = m.Commands(nil, &pginvalidator.Change{Rel: products, Op: pginvalidator.OpTruncate})
	want = []pginvalidator.Command{
		{Action: pginvalidator.DelPattern, Key: "product:*", Redelete: 2 * time.Second},
		{Action: pginvalidator.DelPattern, Key: "product-list:category:*", Redelete: 500 * time.Millisecond},
		{Action: pginvalidator.Incr, Key: "cache:counter:products"},
		{Action: pginvalidator.DelPattern, Key: "product-name:*", Redelete: 2 * time.Second},
		{Action: pginvalidator.DelPattern, Key: "product-page:*"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("truncate:\ngot  %v\nwant %v", got, want)
	}
}
