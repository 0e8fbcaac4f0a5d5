package replication

import (
	"context"
	"reflect"
	"testing"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

func TestDescribeTables(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db,
		`CREATE TABLE items (id int PRIMARY KEY, name text)`,
		`CREATE TABLE full_t (id int, body text)`,
		`ALTER TABLE full_t REPLICA IDENTITY FULL`,
		`CREATE TABLE index_t (a int NOT NULL, b int NOT NULL, c text)`,
		`CREATE UNIQUE INDEX index_t_ba ON index_t (b, a)`,
		`ALTER TABLE index_t REPLICA IDENTITY USING INDEX index_t_ba`,
		`CREATE TABLE dropped_index (a int NOT NULL)`,
		`CREATE UNIQUE INDEX dropped_index_a ON dropped_index (a)`,
		`ALTER TABLE dropped_index REPLICA IDENTITY USING INDEX dropped_index_a`,
		`DROP INDEX dropped_index_a`,
		`CREATE TABLE nothing_t (id int PRIMARY KEY, v text)`,
		`ALTER TABLE nothing_t REPLICA IDENTITY NOTHING`,
		`CREATE TABLE no_pk (a int, b text)`,
		`CREATE TABLE gen (id int PRIMARY KEY, price int, doubled int GENERATED ALWAYS AS (price * 2) STORED, note text)`,
		`ALTER TABLE gen REPLICA IDENTITY FULL`,
		`ALTER TABLE gen DROP COLUMN note`,
		`CREATE TABLE "MyTable" ("Id" int PRIMARY KEY, "Name" text)`,
		`CREATE SCHEMA "Sales"`,
		`CREATE TABLE "Sales".orders (order_id bigint PRIMARY KEY, total numeric)`,
		// Parent without a key; one leaf (two levels down) lacks one.
		`CREATE TABLE parts (id int NOT NULL, region text NOT NULL, amount int) PARTITION BY LIST (region)`,
		`CREATE TABLE parts_east PARTITION OF parts (PRIMARY KEY (id, region)) FOR VALUES IN ('east')`,
		`CREATE TABLE parts_west PARTITION OF parts FOR VALUES IN ('west') PARTITION BY RANGE (id)`,
		`CREATE TABLE parts_west_low PARTITION OF parts_west FOR VALUES FROM (0) TO (100)`,
		// Every leaf has a key, but they differ.
		`CREATE TABLE mixed (id int NOT NULL, region text NOT NULL, amount int) PARTITION BY LIST (region)`,
		`CREATE TABLE mixed_east PARTITION OF mixed (PRIMARY KEY (id, region)) FOR VALUES IN ('east')`,
		`CREATE TABLE mixed_west PARTITION OF mixed FOR VALUES IN ('west')`,
		`ALTER TABLE mixed_west REPLICA IDENTITY FULL`,
		// The key is inherited by every leaf; one leaf sends nothing.
		`CREATE TABLE keyed (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region)`,
		`CREATE TABLE keyed_east PARTITION OF keyed FOR VALUES IN ('east')`,
		`CREATE TABLE keyed_west PARTITION OF keyed FOR VALUES IN ('west')`,
		`ALTER TABLE keyed_west REPLICA IDENTITY NOTHING`,
		`CREATE TABLE empty_parent (id int PRIMARY KEY) PARTITION BY RANGE (id)`,
	)

	const (
		d = pginvalidator.IdentityDefault
		f = pginvalidator.IdentityFull
		i = pginvalidator.IdentityIndex
		n = pginvalidator.IdentityNothing
	)
	tests := []struct {
		name string
		want pginvalidator.TableInfo
	}{
		{"public.items", pginvalidator.TableInfo{Schema: "public", Name: "items", Exists: true,
			ReplicaIdentity: d, HasPrimaryKey: true, Columns: []string{"id", "name"}, IdentityColumns: []string{"id"}}},
		{"items", pginvalidator.TableInfo{Schema: "public", Name: "items", Exists: true,
			ReplicaIdentity: d, HasPrimaryKey: true, Columns: []string{"id", "name"}, IdentityColumns: []string{"id"}}},
		{"public.full_t", pginvalidator.TableInfo{Schema: "public", Name: "full_t", Exists: true,
			ReplicaIdentity: f, Columns: []string{"id", "body"}, IdentityColumns: []string{"id", "body"}}},
		{"public.index_t", pginvalidator.TableInfo{Schema: "public", Name: "index_t", Exists: true,
			ReplicaIdentity: i, Columns: []string{"a", "b", "c"}, IdentityColumns: []string{"a", "b"}}},
		{"public.dropped_index", pginvalidator.TableInfo{Schema: "public", Name: "dropped_index", Exists: true,
			ReplicaIdentity: n, Columns: []string{"a"}}},
		{"public.nothing_t", pginvalidator.TableInfo{Schema: "public", Name: "nothing_t", Exists: true,
			ReplicaIdentity: n, HasPrimaryKey: true, Columns: []string{"id", "v"}}},
		{"public.no_pk", pginvalidator.TableInfo{Schema: "public", Name: "no_pk", Exists: true,
			ReplicaIdentity: d, Columns: []string{"a", "b"}}},
		{"public.gen", pginvalidator.TableInfo{Schema: "public", Name: "gen", Exists: true,
			ReplicaIdentity: f, HasPrimaryKey: true, Columns: []string{"id", "price", "doubled"},
			Generated: []string{"doubled"}, IdentityColumns: []string{"id", "price"}}},
		{"public.missing", pginvalidator.TableInfo{Schema: "public", Name: "missing"}},
		{"nowhere.items", pginvalidator.TableInfo{Schema: "nowhere", Name: "items"}},
		{"public.MyTable", pginvalidator.TableInfo{Schema: "public", Name: "MyTable", Exists: true,
			ReplicaIdentity: d, HasPrimaryKey: true, Columns: []string{"Id", "Name"}, IdentityColumns: []string{"Id"}}},
		{"public.mytable", pginvalidator.TableInfo{Schema: "public", Name: "mytable"}},
		{"Sales.orders", pginvalidator.TableInfo{Schema: "Sales", Name: "orders", Exists: true,
			ReplicaIdentity: d, HasPrimaryKey: true, Columns: []string{"order_id", "total"}, IdentityColumns: []string{"order_id"}}},
		{"public.parts", pginvalidator.TableInfo{Schema: "public", Name: "parts", Exists: true, Partitioned: true,
			ReplicaIdentity: d, Columns: []string{"id", "region", "amount"}}},
		{"public.mixed", pginvalidator.TableInfo{Schema: "public", Name: "mixed", Exists: true, Partitioned: true,
			ReplicaIdentity: d, Columns: []string{"id", "region", "amount"}, IdentityColumns: []string{"id", "region"}}},
		{"public.keyed", pginvalidator.TableInfo{Schema: "public", Name: "keyed", Exists: true, Partitioned: true,
			ReplicaIdentity: n, HasPrimaryKey: true, Columns: []string{"id", "region"}}},
		{"public.empty_parent", pginvalidator.TableInfo{Schema: "public", Name: "empty_parent", Exists: true, Partitioned: true,
			ReplicaIdentity: d, HasPrimaryKey: true, Columns: []string{"id"}, IdentityColumns: []string{"id"}}},
		{"public.parts_east", pginvalidator.TableInfo{Schema: "public", Name: "parts_east", Exists: true,
			ReplicaIdentity: d, HasPrimaryKey: true, Columns: []string{"id", "region", "amount"}, IdentityColumns: []string{"id", "region"}}},
	}
	var names []string
	for _, tt := range tests {
		names = append(names, tt.name)
	}
	conn := connect(t, db)
	got, err := DescribeTables(context.Background(), conn, names)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(tests) {
		t.Errorf("got %d tables, want %d", len(got), len(tests))
	}
	for _, tt := range tests {
		if !reflect.DeepEqual(got[tt.name], tt.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tt.name, got[tt.name], tt.want)
		}
	}
}

func TestDescribeTablesNotATable(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db, `CREATE TABLE items (id int PRIMARY KEY)`, `CREATE VIEW items_v AS SELECT * FROM items`)
	_, err := DescribeTables(context.Background(), connect(t, db), []string{"public.items", "public.items_v"})
	want := "describe tables: public.items_v is a view, not a table; only tables can be published"
	if err == nil || err.Error() != want {
		t.Errorf("got error %v, want %q", err, want)
	}
}
