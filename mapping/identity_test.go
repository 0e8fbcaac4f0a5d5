package mapping

import (
	"reflect"
	"testing"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
)

func TestFullIdentityNeeds(t *testing.T) {
	rules, err := Parse("rules.toml", []byte(`
[[rule]]
table = "products"
del = ["product:<id>", "list:<category_id>", "total:<total>"]

[[rule]]
table = "inserts_only"
on = ["insert"]
del = ["x:<category_id>"]

[[rule]]
table = "nokey"
del = ["nokey:<id>"]

[[rule]]
table = "nothing"
del = ["nothing:<id>"]

[[rule]]
table = "full"
del = ["full:<category_id>"]

[[rule]]
table = "keyed"
del = ["keyed:<id>"]
`))
	if err != nil {
		t.Fatal(err)
	}
	table := func(name string, identity byte, pk bool, identityCols ...string) pginvalidator.TableInfo {
		return pginvalidator.TableInfo{Schema: "public", Name: name, Exists: true, ReplicaIdentity: identity, HasPrimaryKey: pk,
			Columns: []string{"id", "category_id", "total"}, Generated: []string{"total"}, IdentityColumns: identityCols}
	}
	tables := map[string]pginvalidator.TableInfo{
		"public.products":     table("products", pginvalidator.IdentityDefault, true, "id"),
		"public.inserts_only": table("inserts_only", pginvalidator.IdentityDefault, true, "id"),
		"public.nokey":        table("nokey", pginvalidator.IdentityDefault, false),
		"public.nothing":      table("nothing", pginvalidator.IdentityNothing, true),
		"public.full":         table("full", pginvalidator.IdentityFull, true, "id", "category_id"),
		"public.keyed":        table("keyed", pginvalidator.IdentityIndex, false, "id"),
		"public.missing":      {Schema: "public", Name: "missing"},
	}
	got := rules.FullIdentityNeeds(tables)
	want := []IdentityNeed{
		{"public.nokey", "has no primary key for REPLICA IDENTITY DEFAULT, so once published its UPDATE and DELETE would fail (SQLSTATE 55000)"},
		{"public.nothing", "has REPLICA IDENTITY NOTHING, so once published its UPDATE and DELETE would fail (SQLSTATE 55000)"},
		// total is generated: FULL would not send it either, and CheckSchema says so.
		{"public.products", "rules use category_id on update or delete, outside REPLICA IDENTITY DEFAULT"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%q\nwant\n%q", got, want)
	}
}

func TestOldColumns(t *testing.T) {
	rules, err := Parse("rules.toml", []byte(`
[[rule]]
table = "a"
on = ["insert", "truncate"]
del = ["a:<id>"]

[[rule]]
table = "b"
on = ["delete"]
del = ["b:<id>:<x>"]
incr = ["b:<x>"]
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := rules.List[0].OldColumns(); got != nil {
		t.Errorf("insert and truncate only: got %q, want none", got)
	}
	if got, want := rules.List[1].OldColumns(), []string{"id", "x"}; !reflect.DeepEqual(got, want) {
		t.Errorf("delete: got %q, want %q", got, want)
	}
}
