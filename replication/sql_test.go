package replication

import (
	"context"
	"reflect"
	"testing"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

func sqlOf(stmts []Statement) []string {
	var out []string
	for _, s := range stmts {
		out = append(out, s.SQL)
	}
	return out
}

func TestReplicaIdentityFullSQL(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db,
		`CREATE TABLE plain (id int PRIMARY KEY, a int)`,
		`CREATE TABLE "Full" (id int PRIMARY KEY, a int)`,
		`ALTER TABLE "Full" REPLICA IDENTITY FULL`,
		`CREATE TABLE parted (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region)`,
		`CREATE TABLE parted_eu PARTITION OF parted FOR VALUES IN ('eu')`,
		`CREATE TABLE parted_us PARTITION OF parted FOR VALUES IN ('us')`,
		`ALTER TABLE parted_us REPLICA IDENTITY FULL`,
	)
	conn := connect(t, db)
	got, err := ReplicaIdentityFullSQL(context.Background(), conn,
		[]string{"plain", "public.Full", "parted", "public.parted_eu", "nosuch"})
	if err != nil {
		t.Fatal(err)
	}
	want := []Statement{
		{SQL: `ALTER TABLE "public"."plain" REPLICA IDENTITY FULL`},
		{SQL: `ALTER TABLE "public"."parted_eu" REPLICA IDENTITY FULL`, Why: "a leaf partition of public.parted"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

func TestRoleSQL(t *testing.T) {
	t.Parallel()
	role, _ := newRole(t)
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db,
		`CREATE SCHEMA shop`,
		`CREATE TABLE shop.orders (id int PRIMARY KEY)`,
		`CREATE TABLE items (id int PRIMARY KEY)`,
		`GRANT SELECT ON items TO `+role,
	)
	conn := connect(t, db)
	ctx := context.Background()

	got, err := RoleSQL(ctx, conn, role, []string{"items", "shop.orders"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`ALTER ROLE "` + role + `" WITH LOGIN REPLICATION`,
		`GRANT USAGE ON SCHEMA "shop" TO "` + role + `"`,
		`GRANT SELECT ON TABLE "shop"."orders" TO "` + role + `"`,
	}
	if !reflect.DeepEqual(sqlOf(got), want) {
		t.Errorf("existing role: got %q\nwant %q", sqlOf(got), want)
	}

	got, err = RoleSQL(ctx, conn, "no such role", []string{"items"})
	if err != nil {
		t.Fatal(err)
	}
	want = []string{
		`CREATE ROLE "no such role" WITH LOGIN REPLICATION PASSWORD NULL`,
		`GRANT USAGE ON SCHEMA "public" TO "no such role"`,
		`GRANT SELECT ON TABLE "public"."items" TO "no such role"`,
	}
	if !reflect.DeepEqual(sqlOf(got), want) {
		t.Errorf("missing role: got %q\nwant %q", sqlOf(got), want)
	}

	if got, err := RoleSQL(ctx, conn, superuser(t), []string{"items", "shop.orders"}); err != nil || got != nil {
		t.Errorf("superuser: got %q, %v; want nothing", sqlOf(got), err)
	}
}

func TestPublicationSQL(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db,
		`CREATE TABLE a (id int PRIMARY KEY)`,
		`CREATE TABLE b (id int PRIMARY KEY)`,
	)
	conn := connect(t, db)
	ctx := context.Background()
	plan := func(name string) []Statement {
		t.Helper()
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		stmts, err := PublicationSQL(ctx, tx, name, []string{"a", "public.b"})
		if err != nil {
			t.Fatal(err)
		}
		return stmts
	}
	count := func(name string) (n int) {
		t.Helper()
		conn.QueryRow(ctx, `SELECT count(*) FROM pg_publication_tables WHERE pubname = $1`, name).Scan(&n)
		return n
	}

	if got, want := sqlOf(plan("missing")), []string{CreatePublicationSQL("missing", []string{"a", "b"})}; !reflect.DeepEqual(got, want) {
		t.Errorf("missing publication: got %q, want %q", got, want)
	}
	if want := `CREATE PUBLICATION "missing" FOR TABLE "public"."a", "public"."b" WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true)`; CreatePublicationSQL("missing", []string{"a", "b"}) != want {
		t.Errorf("CreatePublicationSQL = %q, want %q", CreatePublicationSQL("missing", []string{"a", "b"}), want)
	}

	testenv.Exec(t, db, `CREATE PUBLICATION partial FOR TABLE a`)
	got := plan("partial")
	want := []Statement{{SQL: `ALTER PUBLICATION "partial" ADD TABLE "public"."b"`, Why: "publication partial lacks tables public.b"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("partial publication: got %q, want %q", got, want)
	}
	if n := count("partial"); n != 1 {
		t.Errorf("planning changed the publication: %d tables, want 1", n)
	}

	testenv.Exec(t, db, `CREATE PUBLICATION inserts FOR TABLE a, b WITH (publish = 'insert')`)
	got = plan("inserts")
	want = []Statement{{SQL: `ALTER PUBLICATION "inserts" SET (publish = 'insert, update, delete, truncate')`,
		Why: "publication inserts does not publish all of insert, update, delete, truncate"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("insert-only publication: got %q, want %q", got, want)
	}

	testenv.Exec(t, db, `CREATE PUBLICATION ready FOR TABLE a, b`)
	if got := plan("ready"); got != nil {
		t.Errorf("ready publication: got %q, want nothing", got)
	}
}
