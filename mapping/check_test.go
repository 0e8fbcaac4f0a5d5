package mapping

import (
	"reflect"
	"testing"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
)

func TestCheckSchema(t *testing.T) {
	products := pginvalidator.TableInfo{Schema: "public", Name: "products", Exists: true,
		ReplicaIdentity: pginvalidator.IdentityDefault, HasPrimaryKey: true,
		Columns: []string{"id", "name", "category_id", "total"}, Generated: []string{"total"},
		IdentityColumns: []string{"id"}}
	fullProducts := products
	fullProducts.ReplicaIdentity = pginvalidator.IdentityFull
	fullProducts.IdentityColumns = fullProducts.Columns

	tests := []struct {
		name   string
		rules  string
		tables []pginvalidator.TableInfo
		want   []string
	}{
		{
			name: "everything fine",
			rules: `[[rule]]
table = "products"
del = ["product:<id>", "product-list:category:<category_id>"]
`,
			tables: []pginvalidator.TableInfo{fullProducts},
		},
		{
			name: "one problem per rule and column",
			rules: `[[rule]]
table = "products"
del = ["product:<id>", "product-list:category:<category_id>", "p:<category_id>:<total>:<colour>"]
incr = ["v:<colour>"]
`,
			tables: []pginvalidator.TableInfo{products},
			want: []string{
				`rules.toml:1: table public.products: rule uses column category_id on update/delete, but its old value is not sent under REPLICA IDENTITY DEFAULT; fix: ALTER TABLE public.products REPLICA IDENTITY FULL;`,
				`rules.toml:1: table public.products: column "total" is generated, and pgoutput never sends the values of generated columns; use the columns it is computed from`,
				`rules.toml:1: table public.products has no column "colour"; its columns are: id, name, category_id, total`,
			},
		},
		{
			name: "identity matters only for the operations the rule handles",
			rules: `[[rule]]
table = "products"
on = ["insert", "truncate"]
del = ["product-list:category:<category_id>"]

[[rule]]
table = "products"
on = ["insert", "delete"]
del = ["product-list:category:<category_id>"]
`,
			tables: []pginvalidator.TableInfo{products},
			want: []string{
				`rules.toml:6: table public.products: rule uses column category_id on delete, but its old value is not sent under REPLICA IDENTITY DEFAULT; fix: ALTER TABLE public.products REPLICA IDENTITY FULL;`,
			},
		},
		{
			name: "missing table",
			rules: `[[rule]]
table = "prodcts"
del = ["product:<id>"]
`,
			tables: []pginvalidator.TableInfo{products, {Schema: "public", Name: "items"}},
			want: []string{
				`rules.toml:1: table public.prodcts does not exist, or the connecting role cannot see it; check the schema and table name (write "schema.table" when it is not in public; names are matched as PostgreSQL stores them, usually lowercase)`,
			},
		},
		{
			name: "a table that reports Exists false",
			rules: `[[rule]]
table = "items"
del = ["item:<id>"]
`,
			tables: []pginvalidator.TableInfo{{Schema: "public", Name: "items"}},
			want: []string{
				`rules.toml:1: table public.items does not exist, or the connecting role cannot see it; check the schema and table name (write "schema.table" when it is not in public; names are matched as PostgreSQL stores them, usually lowercase)`,
			},
		},
		{
			name: "tables without a usable identity",
			rules: `[[rule]]
table = "logs"
on = ["insert"]
incr = ["logs:<level>"]

[[rule]]
table = "events"
del = ["event:<id>", "events:<kind>"]

[[rule]]
table = "Audit.order"
on = ["truncate"]
del = ["order:<id>"]
`,
			tables: []pginvalidator.TableInfo{
				{Schema: "public", Name: "logs", Exists: true, ReplicaIdentity: pginvalidator.IdentityNothing, Columns: []string{"id", "level"}},
				{Schema: "public", Name: "events", Exists: true, ReplicaIdentity: pginvalidator.IdentityDefault, Columns: []string{"id", "kind"}},
				{Schema: "Audit", Name: "order", Exists: true, Partitioned: true, ReplicaIdentity: pginvalidator.IdentityNothing, HasPrimaryKey: true, Columns: []string{"id"}},
			},
			want: []string{
				`rules.toml:1: table public.logs has REPLICA IDENTITY NOTHING: once the publication publishes its updates and deletes, the application's own UPDATE and DELETE on it fail with SQLSTATE 55000; fix: add a primary key, or ALTER TABLE public.logs REPLICA IDENTITY FULL;`,
				`rules.toml:6: table public.events has REPLICA IDENTITY DEFAULT but no primary key: once the publication publishes its updates and deletes, the application's own UPDATE and DELETE on it fail with SQLSTATE 55000; fix: add a primary key, or ALTER TABLE public.events REPLICA IDENTITY FULL;`,
				`rules.toml:10: table Audit.order has REPLICA IDENTITY NOTHING: once the publication publishes its updates and deletes, the application's own UPDATE and DELETE on it fail with SQLSTATE 55000; fix: add a primary key, or run ALTER TABLE <partition> REPLICA IDENTITY FULL; on each leaf partition of "Audit"."order" (PostgreSQL does not pass a partitioned table's replica identity down to its partitions)`,
			},
		},
		{
			name: "an insert-only rule needs an identity too: the publication publishes updates",
			rules: `[[rule]]
table = "logs"
on = ["insert", "truncate"]
incr = ["logs:<level>"]
`,
			tables: []pginvalidator.TableInfo{
				{Schema: "public", Name: "logs", Exists: true, ReplicaIdentity: pginvalidator.IdentityNothing, Columns: []string{"id", "level"}},
			},
			want: []string{
				`rules.toml:1: table public.logs has REPLICA IDENTITY NOTHING: once the publication publishes its updates and deletes, the application's own UPDATE and DELETE on it fail with SQLSTATE 55000; fix: add a primary key, or ALTER TABLE public.logs REPLICA IDENTITY FULL;`,
			},
		},
		{
			name: "an index identity, and a name that needs quotes",
			rules: `[[rule]]
table = "user"
del = ["user:<email>", "user:<id>"]
`,
			tables: []pginvalidator.TableInfo{
				{Schema: "public", Name: "user", Exists: true, ReplicaIdentity: pginvalidator.IdentityIndex, HasPrimaryKey: true,
					Columns: []string{"id", "email"}, IdentityColumns: []string{"email"}},
			},
			want: []string{
				`rules.toml:1: table public.user: rule uses column id on update/delete, but its old value is not sent under REPLICA IDENTITY USING INDEX; fix: ALTER TABLE public."user" REPLICA IDENTITY FULL;`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tables := make(map[string]pginvalidator.TableInfo)
			for _, info := range tt.tables {
				tables[info.QualifiedName()] = info
			}
			var got []string
			for _, err := range mustParse(t, tt.rules).CheckSchema(tables) {
				got = append(got, err.Error())
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got:\n%q\nwant:\n%q", got, tt.want)
			}
		})
	}
}

func TestQuoteIdent(t *testing.T) {
	tests := []struct{ in, want string }{
		{"products", "products"},
		{"order_items2", "order_items2"},
		{"_x$", "_x$"},
		{"Products", `"Products"`},
		{"order", `"order"`},
		{"my table", `"my table"`},
		{`a"b`, `"a""b"`},
		{"1st", `"1st"`},
		{"", `""`},
	}
	for _, tt := range tests {
		if got := quoteIdent(tt.in); got != tt.want {
			t.Errorf("quoteIdent(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}
