package integration

import (
	"context"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

// demoKeys are the keys the demo's script caches and bumps.
var demoKeys = []string{"product:1", "product:2", "product:100", "product-list:category:1", "product-list:category:2",
	"product-list:category:3", "category:2", "cache:version:products"}

// demoServer is a database of its own and an empty Redis database number on
// the package's servers, as a developer's own servers would be.
type demoServer struct {
	t        *testing.T
	dbURL    string
	dbName   string
	redisURL string
	rdb      *redis.Client
}

func newDemoServer(t *testing.T, redisDB int) *demoServer {
	t.Helper()
	s := &demoServer{t: t, dbURL: testenv.NewDatabase(t, env.PostgresURL)}
	u, err := url.Parse(s.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	s.dbName = strings.TrimPrefix(u.Path, "/")
	ru, err := url.Parse(env.RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	ru.Path = "/" + strconv.Itoa(redisDB)
	s.redisURL = ru.String()
	opts, err := redis.ParseURL(s.redisURL)
	if err != nil {
		t.Fatal(err)
	}
	opts.DisableIdentity = true
	s.rdb = redis.NewClient(opts)
	t.Cleanup(func() {
		s.rdb.Del(context.Background(), demoKeys...)
		s.rdb.Close()
	})
	if n := s.rdb.DBSize(context.Background()).Val(); n != 0 {
		t.Fatalf("redis database %d holds %d keys; the demo tests need it empty", redisDB, n)
	}
	return s
}

// assertUntouched fails the test if anything the demo creates is on the
// servers: the example tables, a replication slot or a publication in the
// database, or any key in the Redis database.
func (s *demoServer) assertUntouched(what string) {
	s.t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, s.dbURL)
	if err != nil {
		s.t.Fatal(err)
	}
	defer conn.Close(ctx)
	var tables, pubs, slots []string
	for _, q := range []struct {
		dst *[]string
		sql string
	}{
		{&tables, `SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')`},
		{&pubs, `SELECT pubname FROM pg_publication`},
		{&slots, `SELECT slot_name FROM pg_replication_slots WHERE database = current_database()`},
	} {
		rows, err := conn.Query(ctx, q.sql)
		if err != nil {
			s.t.Fatal(err)
		}
		*q.dst, err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			s.t.Fatal(err)
		}
	}
	if len(tables)+len(pubs)+len(slots) > 0 {
		s.t.Errorf("%s: the database holds tables %v, publications %v, replication slots %v; want none", what, tables, pubs, slots)
	}
	if keys := s.rdb.Keys(ctx, "*").Val(); len(keys) > 0 {
		s.t.Errorf("%s: redis holds keys %v; want none", what, keys)
	}
}

// demoProcess is the real binary running "demo".
type demoProcess struct {
	cmd  *exec.Cmd
	out  *testenv.SyncBuffer // stdout and stderr
	done chan struct{}
}

// startDemo runs "pg-invalidator demo args..." in an empty directory (so
// that it uses its built-in rules) with the environment env added.
func startDemo(t *testing.T, environ []string, args ...string) *demoProcess {
	t.Helper()
	cmd := exec.Command(daemonBinary(t), append([]string{"demo"}, args...)...)
	cmd.Dir = t.TempDir()
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DATABASE_URL=") && !strings.HasPrefix(kv, "REDIS_URL=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, environ...)
	p := &demoProcess{cmd: cmd, out: &testenv.SyncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("demo output:\n%s", p.out)
		}
	})
	return p
}

// wait waits for the demo to exit and returns its exit code.
func (p *demoProcess) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(3 * time.Minute):
		t.Fatalf("the demo did not exit within 3 minutes; output:\n%s", p.out)
	}
	return p.cmd.ProcessState.ExitCode()
}

// waitUntil waits until cond holds, failing the test if the demo exits
// first.
func (p *demoProcess) waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); !cond(); {
		select {
		case <-p.done:
			t.Fatalf("the demo exited before %s; output:\n%s", what, p.out)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 2 minutes, still not %s; output:\n%s", what, p.out)
		}
	}
}

// With DATABASE_URL and REDIS_URL exported, as many developers have them, the
// demo runs on throwaway servers of its own, says that it ignores the two,
// and leaves the servers they name untouched.
func TestDemoIgnoresDatabaseURLAndRedisURL(t *testing.T) {
	s := newDemoServer(t, 11)
	p := startDemo(t, []string{"DATABASE_URL=" + s.dbURL, "REDIS_URL=" + s.redisURL})
	if code := p.wait(t); code != 0 {
		t.Fatalf("demo exited %d, want 0; output:\n%s", code, p.out)
	}
	out := p.out.String()
	for _, want := range []string{
		`The demo ignores DATABASE_URL and REDIS_URL and uses throwaway servers; to run it on yours, say so: pg-invalidator demo --postgres "$DATABASE_URL" --redis "$REDIS_URL"`,
		"(throwaway)",
		"Every cached key derived from a changed row was invalidated.",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	s.assertUntouched("after the demo with DATABASE_URL and REDIS_URL set")
}

// On servers named with --postgres and --redis, the demo removes everything
// it created when it ends: normally, on Ctrl-C or on SIGTERM, at any point.
func TestDemoCleansUpServersItDidNotStart(t *testing.T) {
	tests := []struct {
		name string
		wait bool           // run with --wait
		at   string         // signal when the output shows this; "slot": as soon as the slot exists
		sig  syscall.Signal // 0: let it end by itself
		code int            // want this exit code; -1: 0 or 1, whichever the signal's timing gives
	}{
		{name: "ends by itself", code: 0},
		{name: "SIGINT while it waits", wait: true, at: "Press Ctrl-C", sig: syscall.SIGINT, code: 0},
		{name: "SIGTERM while it waits", wait: true, at: "Press Ctrl-C", sig: syscall.SIGTERM, code: 0},
		{name: "SIGINT once the slot exists", wait: true, at: "slot", sig: syscall.SIGINT, code: -1},
		{name: "SIGINT while it installs the schema", at: "Redis ", sig: syscall.SIGINT, code: -1},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newDemoServer(t, 12+i%3)
			args := []string{"--postgres", s.dbURL, "--redis", s.redisURL}
			if tt.wait {
				args = append(args, "--wait")
			}
			p := startDemo(t, nil, args...)
			switch tt.at {
			case "":
			case "slot":
				p.waitUntil(t, "the demo's slot exists", func() bool { return s.slotExists("pg_invalidator_demo") })
			default:
				p.waitUntil(t, "the demo printed "+strconv.Quote(tt.at), func() bool { return strings.Contains(p.out.String(), tt.at) })
			}
			if tt.sig != 0 {
				p.cmd.Process.Signal(tt.sig)
			}
			code := p.wait(t)
			if tt.code >= 0 && code != tt.code {
				t.Fatalf("demo exited %d, want %d; output:\n%s", code, tt.code, p.out)
			}
			if tt.code < 0 && code != 0 && code != 1 {
				t.Fatalf("demo exited %d, want 0 or 1; output:\n%s", code, p.out)
			}
			if tt.sig == 0 {
				want := "Removed from your PostgreSQL: replication slot pg_invalidator_demo, publication pg_invalidator_demo, table public.products, table public.categories."
				if out := p.out.String(); !strings.Contains(out, want) || !strings.Contains(out, "Removed from your Redis: key cache:version:products, key pg-invalidator:slot:") {
					t.Errorf("output does not say what the demo removed:\n%s", out)
				}
			}
			s.assertUntouched("after the demo " + tt.name)
		})
	}
}

func (s *demoServer) slotExists(slot string) bool {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, s.dbURL)
	if err != nil {
		s.t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&n)
	return n > 0
}

// The demo does not write to tables or keys it did not create: it refuses,
// says how to go on, and changes nothing.
func TestDemoRefusesWhatItDidNotCreate(t *testing.T) {
	t.Run("tables", func(t *testing.T) {
		s := newDemoServer(t, 11)
		testenv.Exec(t, s.dbURL, `CREATE TABLE products (id bigint PRIMARY KEY, price numeric)`, `INSERT INTO products VALUES (1, 9.99)`)
		p := startDemo(t, nil, "--postgres", s.dbURL, "--redis", s.redisURL)
		if code := p.wait(t); code != 1 {
			t.Fatalf("demo exited %d, want 1", code)
		}
		if want := "pg-invalidator: the database already has public.products; the demo creates the example tables itself and does not write to tables it did not create."; !strings.Contains(p.out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, p.out)
		}
		for _, want := range []string{"--reuse-tables", "createdb"} {
			if !strings.Contains(p.out.String(), want) {
				t.Errorf("output does not mention %s:\n%s", want, p.out)
			}
		}
		s.assertNoDemoObjects(t)
		var price string
		var identity string
		s.queryRow(`SELECT price::text, (SELECT relreplident::text FROM pg_class WHERE oid = 'products'::regclass) FROM products WHERE id = 1`, &price, &identity)
		if price != "9.99" || identity != "d" {
			t.Errorf("products row 1 has price %s and replica identity %q, want 9.99 and d (unchanged)", price, identity)
		}
	})

	t.Run("keys", func(t *testing.T) {
		s := newDemoServer(t, 11)
		if err := s.rdb.Set(context.Background(), "product:1", "the application's own", 0).Err(); err != nil {
			t.Fatal(err)
		}
		p := startDemo(t, nil, "--postgres", s.dbURL, "--redis", s.redisURL)
		if code := p.wait(t); code != 1 {
			t.Fatalf("demo exited %d, want 1", code)
		}
		if want := "already holds product:1; the demo sets and deletes these keys and does not touch keys it did not create"; !strings.Contains(p.out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, p.out)
		}
		if got := s.rdb.Get(context.Background(), "product:1").Val(); got != "the application's own" {
			t.Errorf("product:1 = %q, want it unchanged", got)
		}
		if keys := s.rdb.Keys(context.Background(), "*").Val(); len(keys) != 1 {
			t.Errorf("redis holds %v, want product:1 only", keys)
		}
		s.rdb.Del(context.Background(), "product:1")
		s.assertUntouched("after the refused demo")
	})

	t.Run("reuse-tables keeps them", func(t *testing.T) {
		s := newDemoServer(t, 11)
		testenv.Exec(t, s.dbURL, exampleSchema(t)...)
		p := startDemo(t, nil, "--postgres", s.dbURL, "--redis", s.redisURL, "--reuse-tables")
		if code := p.wait(t); code != 0 {
			t.Fatalf("demo exited %d, want 0", code)
		}
		var products int
		s.queryRow(`SELECT count(*) FROM products`, &products)
		if products != 5 {
			t.Errorf("products holds %d rows after the demo, want the example's 5, kept", products)
		}
		s.assertNoDemoObjects(t)
		if keys := s.rdb.Keys(context.Background(), "*").Val(); len(keys) > 0 {
			t.Errorf("redis holds keys %v; want none", keys)
		}
	})
}

// exampleSchema is migrations/*.sql, as docker-compose applies it.
func exampleSchema(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../migrations/001_products.sql")
	if err != nil {
		t.Fatal(err)
	}
	return []string{string(b)}
}

func (s *demoServer) queryRow(sql string, dst ...any) {
	s.t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, s.dbURL)
	if err != nil {
		s.t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, sql).Scan(dst...); err != nil {
		s.t.Fatalf("%s: %v", sql, err)
	}
}

// assertNoDemoObjects fails the test if the demo's slot or publication is
// in the database.
func (s *demoServer) assertNoDemoObjects(t *testing.T) {
	t.Helper()
	var slots, pubs int
	s.queryRow(`SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = current_database()), (SELECT count(*) FROM pg_publication)`, &slots, &pubs)
	if slots+pubs > 0 {
		t.Errorf("the database holds %d replication slot(s) and %d publication(s) after the demo; want none", slots, pubs)
	}
}
