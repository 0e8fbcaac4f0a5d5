package replication

import (
	"context"
	"errors"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

// connect opens a normal connection that closes when the test ends.
func connect(t *testing.T, dbURL string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatalf("connect to %s: %v", testenv.Redact(dbURL), err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// connectReplication opens a replication=database connection that closes
// when the test ends.
func connectReplication(t *testing.T, dbURL string) *pgconn.PgConn {
	t.Helper()
	dsn, err := ReplicationURL(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect to %s: %v", testenv.Redact(dsn), err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// newRole creates a login role with a password and returns its name and
// dbURL rewritten to log in as it. Call it before testenv.NewDatabase, so
// that the role is dropped after the database that holds its objects.
func newRole(t *testing.T) (role string, asRole func(string) string) {
	t.Helper()
	role = testenv.UniqueName()
	testenv.Exec(t, env.PostgresURL, "CREATE ROLE "+role+" LOGIN PASSWORD 'pw'")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, env.PostgresURL)
		if err != nil {
			return
		}
		defer conn.Close(ctx)
		conn.Exec(ctx, "DROP ROLE IF EXISTS "+role)
	})
	return role, func(dbURL string) string {
		u, err := url.Parse(dbURL)
		if err != nil {
			t.Fatal(err)
		}
		u.User = url.UserPassword(role, "pw")
		return u.String()
	}
}

// superuser returns the role name the test server's URL logs in as.
func superuser(t *testing.T) string {
	t.Helper()
	u, err := url.Parse(env.PostgresURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.User.Username()
}

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

func lastPathSegment(t *testing.T, dbURL string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(u.Path, "/")
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

func TestEnsureSlot(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	conn := connect(t, db)
	repl := connectReplication(t, db)
	ctx := context.Background()
	slot := testenv.UniqueName()

	got, err := ReadSlot(ctx, conn, slot)
	if want := (SlotInfo{Name: slot}); err != nil || got != want {
		t.Errorf("before: got %+v, %v; want %+v", got, err, want)
	}

	for i, want := range []bool{true, false} {
		created, err := EnsureSlot(ctx, repl, slot)
		if err != nil || created != want {
			t.Errorf("call %d: got %v, %v; want %v, nil", i+1, created, err, want)
		}
	}

	got, err = ReadSlot(ctx, conn, slot)
	if err != nil {
		t.Fatal(err)
	}
	if got.ConfirmedFlushLSN == 0 {
		t.Errorf("confirmed_flush_lsn is 0")
	}
	got.ConfirmedFlushLSN = 0
	want := SlotInfo{Name: slot, Exists: true, Type: "logical", Plugin: "pgoutput",
		Database: lastPathSegment(t, db), WALStatus: "reserved"}
	if got != want {
		t.Errorf("after:\n got %+v\nwant %+v", got, want)
	}
	if err := got.Check(lastPathSegment(t, db)); err != nil {
		t.Error(err)
	}
}

func TestEnsureSlotActive(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db, `CREATE TABLE a (id int PRIMARY KEY)`, `CREATE PUBLICATION p FOR TABLE a`)
	ctx := context.Background()
	slot := testenv.UniqueName()
	repl := connectReplication(t, db)
	if _, err := EnsureSlot(ctx, repl, slot); err != nil {
		t.Fatal(err)
	}
	// A walsender streams from the slot; ReadSlot shows its pid.
	pid := repl.PID()
	err := pglogrepl.StartReplication(ctx, repl, slot, 0,
		pglogrepl.StartReplicationOptions{PluginArgs: []string{"proto_version '1'", "publication_names 'p'"}})
	if err != nil {
		t.Fatal(err)
	}
	conn := connect(t, db)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := ReadSlot(ctx, conn, slot)
		if err != nil {
			t.Fatal(err)
		}
		if got.ActivePID == int32(pid) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("active_pid: got %d, want %d", got.ActivePID, pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestEnsureSlotUnusable(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	other := testenv.NewDatabase(t, env.PostgresURL)
	dbName, otherName := lastPathSegment(t, db), lastPathSegment(t, other)
	decoding := testenv.UniqueName()
	elsewhere := testenv.UniqueName()
	testenv.Exec(t, db, `SELECT pg_create_logical_replication_slot('`+decoding+`', 'test_decoding')`)
	testenv.Exec(t, other, `SELECT pg_create_logical_replication_slot('`+elsewhere+`', 'pgoutput')`)
	repl := connectReplication(t, db)

	tests := []struct {
		slot string
		want string
	}{
		{decoding, "replication slot " + decoding + " uses plugin test_decoding, not pgoutput; " +
			"drop it with SELECT pg_drop_replication_slot('" + decoding + "') or choose another slot name"},
		{elsewhere, "replication slot " + elsewhere + " belongs to database " + otherName + ", not " + dbName +
			"; choose another slot name"},
		{"Bad-Name", `create replication slot "Bad-Name": a slot name is 1 to 63 lowercase letters, digits and underscores`},
	}
	for _, tt := range tests {
		created, err := EnsureSlot(context.Background(), repl, tt.slot)
		if created || err == nil || err.Error() != tt.want {
			t.Errorf("%s: got %v, %v; want false, %q", tt.slot, created, err, tt.want)
		}
	}
}

func TestReplicationURL(t *testing.T) {
	tests := []struct {
		dsn, want string
	}{
		{"postgres://u:pw@localhost:5432/db", "postgres://u:pw@localhost:5432/db?replication=database"},
		{"postgres://u:pw@localhost/db?sslmode=disable&application_name=x",
			"postgres://u:pw@localhost/db?sslmode=disable&application_name=x&replication=database"},
		{"postgresql://localhost/db?replication=true&sslmode=disable",
			"postgresql://localhost/db?sslmode=disable&replication=database"},
		{"postgres://localhost/db?", "postgres://localhost/db?replication=database"},
		{"postgres://h1:5432,h2:5433/db?target_session_attrs=read-write",
			"postgres://h1:5432,h2:5433/db?target_session_attrs=read-write&replication=database"},
		{"host=localhost dbname=db password='a b'", "host=localhost dbname=db password='a b' replication=database"},
		{"host=localhost replication=true", "host=localhost replication=true replication=database"},
		{"", "replication=database"},
	}
	for _, tt := range tests {
		got, err := ReplicationURL(tt.dsn)
		if err != nil || got != tt.want {
			t.Errorf("ReplicationURL(%q) = %q, %v; want %q", tt.dsn, got, err, tt.want)
			continue
		}
		cfg, err := pgconn.ParseConfig(got)
		if err != nil {
			t.Errorf("parse %q: %v", got, err)
		} else if cfg.RuntimeParams["replication"] != "database" {
			t.Errorf("parse %q: replication = %q, want database", got, cfg.RuntimeParams["replication"])
		}
	}

	_, err := ReplicationURL("postgres://u:secret@localhost/db?password=secret&x=%zz")
	want := "replication url postgres://u:REDACTED@localhost/db: invalid query string"
	if err == nil || err.Error() != want {
		t.Errorf("got error %v, want %q", err, want)
	}
}
