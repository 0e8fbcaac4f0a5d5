package replication

import (
	"context"
	"testing"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

func TestResolveRuleTables(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db,
		`CREATE TABLE items (id int PRIMARY KEY)`,
		`CREATE TABLE outside (id int PRIMARY KEY)`,
		`CREATE VIEW a_view AS SELECT 1 AS id`,
		`CREATE TABLE "MyTable" ("Id" int PRIMARY KEY)`,
		`CREATE TABLE events (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region)`,
		`CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu')`,
		`CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us') PARTITION BY RANGE (id)`,
		`CREATE TABLE events_us_low PARTITION OF events_us FOR VALUES FROM (0) TO (100)`,
		`CREATE PUBLICATION p FOR TABLE items, "MyTable", events WITH (publish_via_partition_root = true)`,
		`CREATE PUBLICATION everything FOR ALL TABLES`,
	)
	conn := connect(t, db)
	ctx := context.Background()
	names := []string{"items", "public.outside", "a_view", "ghost", "public.MyTable", "events"}

	got, err := ResolveRuleTables(ctx, conn, "p", names)
	if err != nil {
		t.Fatal(err)
	}
	oid := func(name string) uint32 {
		var o uint32
		if err := conn.QueryRow(ctx, "SELECT $1::regclass::oid", name).Scan(&o); err != nil {
			t.Fatal(err)
		}
		return o
	}
	for _, tt := range []struct {
		name        string
		oid         uint32
		published   bool
		partitioned bool
	}{
		{"items", oid("items"), true, false},
		{"public.outside", oid("outside"), false, false},
		{"a_view", 0, false, false},
		{"ghost", 0, false, false},
		{"public.MyTable", oid(`"MyTable"`), true, false},
		{"events", oid("events"), true, true},
	} {
		b := got[tt.name]
		if b.OID != tt.oid || b.Published != tt.published || b.Partitioned != tt.partitioned {
			t.Errorf("%s = {OID %d, Published %v, Partitioned %v}, want {%d, %v, %v}",
				tt.name, b.OID, b.Published, b.Partitioned, tt.oid, tt.published, tt.partitioned)
		}
		if !tt.partitioned && b.Leaves != nil {
			t.Errorf("%s has leaves %v, want none", tt.name, b.Leaves)
		}
	}
	events := got["events"]
	eu, low := oid("events_eu"), oid("events_us_low")
	if len(events.Leaves) != 2 || events.Leaves[eu].Filenode == 0 || events.Leaves[low].Filenode == 0 ||
		events.Leaves[eu].Name != "public.events_eu" || events.Leaves[low].Name != "public.events_us_low" ||
		events.Leaves[eu].HasData {
		t.Fatalf("events leaves = %v, want events_eu and events_us_low with their relfilenodes, empty", events.Leaves)
	}

	// Rows make a leaf's file non-empty; a TRUNCATE gives it a new one; a
	// DETACH takes its leaves out of the tree.
	testenv.Exec(t, db, `INSERT INTO events VALUES (1, 'eu')`)
	if got, err = ResolveRuleTables(ctx, conn, "p", names); err != nil || !got["events"].Leaves[eu].HasData {
		t.Fatalf("after an INSERT, events_eu = %+v (err %v), want HasData", got["events"].Leaves[eu], err)
	}
	testenv.Exec(t, db, `TRUNCATE events_eu`, `ALTER TABLE events DETACH PARTITION events_us`)
	got, err = ResolveRuleTables(ctx, conn, "p", names)
	if err != nil {
		t.Fatal(err)
	}
	after := got["events"]
	if _, ok := after.Leaves[low]; ok || len(after.Leaves) != 1 {
		t.Errorf("after DETACH, events leaves = %v, want events_eu alone", after.Leaves)
	}
	if after.Leaves[eu].Filenode == events.Leaves[eu].Filenode || after.Leaves[eu].HasData {
		t.Errorf("after TRUNCATE, events_eu = %+v, want a new relfilenode, empty", after.Leaves[eu])
	}

	// FOR ALL TABLES streams every table.
	got, err = ResolveRuleTables(ctx, conn, "everything", names)
	if err != nil {
		t.Fatal(err)
	}
	if !got["public.outside"].Published || !got["items"].Published {
		t.Errorf("FOR ALL TABLES: outside published %v, items %v, want both", got["public.outside"].Published, got["items"].Published)
	}
}

func TestCurrentWALLSN(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	conn := connect(t, db)
	ctx := context.Background()
	before, err := CurrentWALLSN(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Exec(t, db, `CREATE TABLE t (id int)`, `INSERT INTO t VALUES (1)`)
	after, err := CurrentWALLSN(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if before == 0 || after <= before {
		t.Errorf("CurrentWALLSN went from %s to %s across a write, want it to grow", before, after)
	}
}

func TestAddTablesSQL(t *testing.T) {
	got := AddTablesSQL("pg_invalidator", []string{"products", "Sales.MyTable"})
	want := `ALTER PUBLICATION "pg_invalidator" ADD TABLE "public"."products", "Sales"."MyTable"`
	if got != want {
		t.Errorf("AddTablesSQL = %s, want %s", got, want)
	}
}
