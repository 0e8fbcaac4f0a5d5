package replication

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

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

// openStream connects a Stream with cfg on a new slot (cfg.Slot, or a
// unique name), creates the slot, and closes the stream when the test ends,
// after its deferred calls have stopped Run. Start is the test's.
func openStream(ctx context.Context, t *testing.T, cfg Config) *Stream {
	t.Helper()
	if cfg.Slot == "" {
		cfg.Slot = testenv.UniqueName()
	}
	s, err := Connect(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	if _, err := s.EnsureSlot(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

// runStream runs s until the test ends, and returns the channel its chunks
// come on and the one Run's error comes on.
func runStream(ctx context.Context, t *testing.T, s *Stream) (<-chan []Event, <-chan error) {
	events := make(chan []Event, 16)
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() { done <- s.Run(sctx, events); close(finished) }()
	t.Cleanup(func() { stop(); <-finished })
	return events, done
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

func lastPathSegment(t *testing.T, dbURL string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(u.Path, "/")
}

func sqlOf(stmts []Statement) []string {
	var out []string
	for _, s := range stmts {
		out = append(out, s.SQL)
	}
	return out
}
