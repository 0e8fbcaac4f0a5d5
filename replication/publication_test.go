package replication

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

// publication reads what a publication holds: its flags and its tables as
// pg_publication_tables lists them.
type publication struct {
	all, insert, update, delete, truncate, viaRoot bool
	tables                                         []string
}

func readPublication(t *testing.T, conn *pgx.Conn, name string) publication {
	t.Helper()
	ctx := context.Background()
	var p publication
	err := conn.QueryRow(ctx, `SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot
FROM pg_publication WHERE pubname = $1`, name).Scan(&p.all, &p.insert, &p.update, &p.delete, &p.truncate, &p.viaRoot)
	if err != nil {
		t.Fatalf("read publication %s: %v", name, err)
	}
	rows, _ := conn.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_publication_tables
WHERE pubname = $1 ORDER BY 1`, name)
	p.tables, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("read publication %s tables: %v", name, err)
	}
	return p
}

func TestEnsurePublicationCreate(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db,
		`CREATE TABLE items (id int PRIMARY KEY)`,
		`CREATE TABLE "MyTable" (id int PRIMARY KEY)`,
		`CREATE TABLE parts (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region)`,
		`CREATE TABLE parts_east PARTITION OF parts FOR VALUES IN ('east')`,
	)
	conn := connect(t, db)
	ctx := context.Background()
	names := []string{"items", "public.MyTable", "public.parts", "public.items"}

	created, added, err := EnsurePublication(ctx, conn, "Pub", names)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"public.items", "public.MyTable", "public.parts"}; !created || !slices.Equal(added, want) {
		t.Errorf("first call: got created %v, added %q; want true, %q", created, added, want)
	}
	got := readPublication(t, conn, "Pub")
	want := publication{insert: true, update: true, delete: true, truncate: true, viaRoot: true,
		tables: []string{"public.MyTable", "public.items", "public.parts"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("publication:\n got %+v\nwant %+v", got, want)
	}

	created, added, err = EnsurePublication(ctx, conn, "Pub", names)
	if err != nil || created || added != nil {
		t.Errorf("second call: got %v, %q, %v; want false, nil, nil", created, added, err)
	}
}

func TestEnsurePublicationExisting(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		create    string // the publication a DBA made
		names     []string
		wantAdded []string
		want      []string // pg_publication_tables afterwards
	}{{
		name:   "already complete",
		create: `CREATE PUBLICATION p FOR TABLE a, b`,
		names:  []string{"public.a", "public.b"},
		want:   []string{"public.a", "public.b"},
	}, {
		name:      "missing table added, extra table kept",
		create:    `CREATE PUBLICATION p FOR TABLE a, extra`,
		names:     []string{"public.a", "public.b"},
		wantAdded: []string{"public.b"},
		want:      []string{"public.a", "public.b", "public.extra"},
	}, {
		name:   "for all tables",
		create: `CREATE PUBLICATION p FOR ALL TABLES WITH (publish_via_partition_root = true)`,
		names:  []string{"public.a", "public.parts"},
		want:   []string{"public.a", "public.b", "public.extra", "public.parts"},
	}, {
		name:   "for tables in schema",
		create: `CREATE PUBLICATION p FOR TABLES IN SCHEMA public`,
		names:  []string{"public.a", "public.b"},
		want:   []string{"public.a", "public.b", "public.extra", "public.parts_east"},
	}, {
		name:   "partition of a published parent",
		create: `CREATE PUBLICATION p FOR TABLE parts WITH (publish_via_partition_root = true)`,
		names:  []string{"public.parts", "public.parts_east"},
		want:   []string{"public.parts"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db := testenv.NewDatabase(t, env.PostgresURL)
			testenv.Exec(t, db,
				`CREATE TABLE a (id int PRIMARY KEY)`,
				`CREATE TABLE b (id int PRIMARY KEY)`,
				`CREATE TABLE extra (id int PRIMARY KEY)`,
				`CREATE TABLE parts (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region)`,
				`CREATE TABLE parts_east PARTITION OF parts FOR VALUES IN ('east')`,
				tt.create,
			)
			conn := connect(t, db)
			created, added, err := EnsurePublication(context.Background(), conn, "p", tt.names)
			if err != nil {
				t.Fatal(err)
			}
			if created || !slices.Equal(added, tt.wantAdded) {
				t.Errorf("got created %v, added %q; want false, %q", created, added, tt.wantAdded)
			}
			if got := readPublication(t, conn, "p").tables; !slices.Equal(got, tt.want) {
				t.Errorf("publication tables: got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestEnsurePublicationCannotFix(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		create    string
		names     []string
		want      string
		wantCause bool // the server's refusal is wrapped
	}{{
		name:   "missing publish operations",
		create: `CREATE PUBLICATION p FOR TABLE a WITH (publish = 'insert, update')`,
		names:  []string{"public.a"},
		want: `publication p does not publish all of insert, update, delete, truncate; ` +
			`a DBA must run: ALTER PUBLICATION "p" SET (publish = 'insert, update, delete, truncate')`,
	}, {
		name:   "partitioned table without publish_via_partition_root",
		create: `CREATE PUBLICATION p FOR TABLE a WITH (publish = 'insert, update, delete')`,
		names:  []string{"public.a", "public.parts"},
		want: `publication p lacks tables public.parts; does not publish all of insert, update, delete, truncate; ` +
			`has publish_via_partition_root off, which a partitioned rule table needs; ` +
			`a DBA must run: ALTER PUBLICATION "p" SET (publish = 'insert, update, delete, truncate', publish_via_partition_root = true); ` +
			`ALTER PUBLICATION "p" ADD TABLE "public"."parts"`,
	}, {
		name:   "row filter and column list",
		create: `CREATE PUBLICATION p FOR TABLE a WHERE (id > 0), b (id)`,
		names:  []string{"public.a", "public.b"},
		want: `publication p publishes public.a, public.b with a row filter or column list, which hides changes; ` +
			`a DBA must run: ALTER PUBLICATION "p" DROP TABLE "public"."a", "public"."b"; ` +
			`ALTER PUBLICATION "p" ADD TABLE "public"."a", "public"."b"`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db := testenv.NewDatabase(t, env.PostgresURL)
			testenv.Exec(t, db,
				`CREATE TABLE a (id int PRIMARY KEY, v text)`,
				`CREATE TABLE b (id int PRIMARY KEY, v text)`,
				`CREATE TABLE parts (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region)`,
				tt.create,
			)
			conn := connect(t, db)
			before := readPublication(t, conn, "p")
			created, added, err := EnsurePublication(context.Background(), conn, "p", tt.names)
			if err == nil || err.Error() != tt.want {
				t.Errorf("got error\n%v\nwant\n%s", err, tt.want)
			}
			var perr *PublicationError
			if !errors.As(err, &perr) {
				t.Errorf("got %T, want *PublicationError", err)
			}
			if created || added != nil {
				t.Errorf("got created %v, added %q; want false, nil", created, added)
			}
			if after := readPublication(t, conn, "p"); !reflect.DeepEqual(after, before) {
				t.Errorf("publication changed:\n got %+v\nwant %+v", after, before)
			}
		})
	}
}

func TestEnsurePublicationNotOwner(t *testing.T) {
	t.Parallel()
	_, asRole := newRole(t)
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db,
		`CREATE TABLE a (id int PRIMARY KEY)`,
		`CREATE TABLE b (id int PRIMARY KEY)`,
		`CREATE PUBLICATION p FOR TABLE a`,
	)
	conn := connect(t, asRole(db))

	_, _, err := EnsurePublication(context.Background(), conn, "p", []string{"public.a", "public.b"})
	want := `publication p lacks tables public.b (this role cannot fix it: publication p is owned by role ` + superuser(t) +
		`); a DBA must run: ALTER PUBLICATION "p" ADD TABLE "public"."b"`
	if err == nil || err.Error() != want {
		t.Errorf("got error\n%v\nwant\n%s", err, want)
	}
	var perr *PublicationError
	if !errors.As(err, &perr) || !slices.Equal(perr.Missing, []string{"public.b"}) {
		t.Errorf("got %#v, want a *PublicationError missing public.b", err)
	}
}

func TestEnsurePublicationNotTableOwner(t *testing.T) {
	t.Parallel()
	role, asRole := newRole(t)
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db,
		`GRANT CREATE ON DATABASE `+pgx.Identifier{lastPathSegment(t, db)}.Sanitize()+` TO `+role,
		`GRANT CREATE ON SCHEMA public TO `+role,
		`CREATE TABLE theirs (id int PRIMARY KEY)`,
	)
	roleDB := asRole(db)
	testenv.Exec(t, roleDB,
		`CREATE TABLE mine (id int PRIMARY KEY)`,
		`CREATE PUBLICATION p FOR TABLE mine`,
	)
	conn := connect(t, roleDB)

	_, _, err := EnsurePublication(context.Background(), conn, "p", []string{"public.mine", "public.theirs"})
	var perr *PublicationError
	var pgErr *pgconn.PgError
	if !errors.As(err, &perr) || !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		t.Fatalf("got %v, want a *PublicationError wrapping SQLSTATE 42501", err)
	}
	wantPrefix := `publication p lacks tables public.theirs (this role cannot fix it: ERROR: must be owner of table theirs (SQLSTATE 42501))`
	wantSuffix := `; a DBA must run: ALTER PUBLICATION "p" ADD TABLE "public"."theirs"`
	if got := err.Error(); !strings.HasPrefix(got, wantPrefix) || !strings.HasSuffix(got, wantSuffix) {
		t.Errorf("got error\n%s\nwant\n%s%s", got, wantPrefix, wantSuffix)
	}
}

func TestEnsurePublicationMissingTable(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	_, _, err := EnsurePublication(context.Background(), connect(t, db), "p", []string{"public.nope"})
	want := `create publication p: ERROR: relation "public.nope" does not exist (SQLSTATE 42P01)`
	if err == nil || err.Error() != want {
		t.Errorf("got error %v, want %q", err, want)
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

func TestPublicationPlan(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db, `CREATE TABLE a (id int PRIMARY KEY)`, `CREATE TABLE b (id int PRIMARY KEY)`, `CREATE PUBLICATION p FOR TABLE a`)
	conn := connect(t, db)
	got, err := PublicationPlan(context.Background(), conn, "p", []string{"a", "b"})
	want := []Statement{{SQL: `ALTER PUBLICATION "p" ADD TABLE "public"."b"`, Why: "publication p lacks tables public.b"}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, %v; want %q", got, err, want)
	}
	if tables := readPublication(t, conn, "p").tables; !slices.Equal(tables, []string{"public.a"}) {
		t.Errorf("planning changed the publication: %q", tables)
	}
}

func TestDropTablesFromPublication(t *testing.T) {
	t.Parallel()
	_, asRole := newRole(t)
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db,
		`CREATE TABLE a (id int PRIMARY KEY)`,
		`CREATE TABLE b (id int PRIMARY KEY)`,
		`CREATE TABLE c (id int PRIMARY KEY)`,
		`CREATE PUBLICATION p FOR TABLE a, b, c`,
	)
	ctx := context.Background()

	// Not the owner: nothing changes.
	err := DropTablesFromPublication(ctx, connect(t, asRole(db)), "p", []string{"public.b"})
	if want := "the publication belongs to another role; a DBA may drop them"; err == nil || err.Error() != want {
		t.Errorf("not the owner: got %v, want %q", err, want)
	}
	conn := connect(t, db)
	if err := DropTablesFromPublication(ctx, conn, "p", []string{"public.b", "c", "public.nosuch"}); err != nil {
		t.Fatal(err)
	}
	if got := readPublication(t, conn, "p").tables; !slices.Equal(got, []string{"public.a"}) {
		t.Errorf("publication tables: got %q, want public.a", got)
	}
}
