// Package integration runs the real daemon against real PostgreSQL
// (wal_level=logical) and real Redis. Nothing is mocked.
//
// One PostgreSQL and one Redis serve the whole package; each test gets its
// own database (and so its own publication and slot) and its own Redis key
// prefix. Tests that stop, kill or restart a server start private ones.
package integration

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/pg-invalidator/pg-invalidator/config"
	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
	"github.com/pg-invalidator/pg-invalidator/mapping"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

// fixture is one test's database, key prefix and rules.
type fixture struct {
	t        *testing.T
	dbURL    string
	redisURL string
	prefix   string // every key the test uses starts with it
	db       *pgx.Conn
	rdb      *redis.Client
}

// newFixture creates a database, runs schema in it, and connects to it and
// to Redis.
func newFixture(t *testing.T, schema ...string) *fixture {
	t.Helper()
	return newFixtureOn(t, env.PostgresURL, env.RedisURL, schema...)
}

func newFixtureOn(t *testing.T, pgURL, redisURL string, schema ...string) *fixture {
	t.Helper()
	return newFixtureAt(t, testenv.NewDatabase(t, pgURL), redisURL, schema...)
}

// newFixtureAt is newFixtureOn in the database of dbURL, which exists.
func newFixtureAt(t *testing.T, dbURL, redisURL string, schema ...string) *fixture {
	t.Helper()
	f := &fixture{t: t, dbURL: dbURL, redisURL: redisURL, prefix: testenv.UniqueName() + ":"}
	testenv.Exec(t, f.dbURL, schema...)
	ctx := context.Background()
	db, err := pgx.Connect(ctx, f.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	f.db = db
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	opts.DisableIdentity = true
	f.rdb = redis.NewClient(opts)
	t.Cleanup(func() { f.rdb.Close() })
	return f
}

// rules writes a rules file whose templates use "{p}" for the key prefix and
// returns its path.
func (f *fixture) rules(toml string) string {
	f.t.Helper()
	path := filepath.Join(f.t.TempDir(), "rules.toml")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(toml, "{p}", f.prefix)), 0o644); err != nil {
		f.t.Fatal(err)
	}
	return path
}

// config is the daemon's configuration for the rules file at rulesPath,
// against the fixture's database and its Redis, the one target.
func (f *fixture) config(rulesPath string) daemon.Config {
	f.t.Helper()
	rules, err := loadRules(rulesPath)
	if err != nil {
		f.t.Fatalf("load rules: %v", err)
	}
	return daemon.Config{
		Rules:       rules,
		PostgresURL: f.dbURL,
		Targets:     []daemon.Target{{Name: daemon.DefaultTarget, Redis: invalidator.Options{URL: f.redisURL}}},
		Logger:      testLogger(f.t),
	}
}

// loadRules reads the rules file at path as the daemon does, the whole
// file, and returns its rules.
func loadRules(path string) (*mapping.Rules, error) {
	file, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	return file.Rules, nil
}

// start runs the daemon in-process on rulesPath until the test ends, and
// waits until it streams.
func (f *fixture) start(rulesPath string) *running {
	f.t.Helper()
	return f.startConfig(f.config(rulesPath))
}

type running struct {
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// stop ends the daemon and returns what Run returned.
func (r *running) stop() error {
	r.once.Do(func() { r.cancel(); r.err = <-r.done })
	return r.err
}

func (f *fixture) startConfig(cfg daemon.Config) *running {
	f.t.Helper()
	r := f.startUnready(cfg)
	slot := cfg.Slot
	if slot == "" {
		slot = replication.DefaultSlot
	}
	f.waitSlotActive(slot, r.done)
	return r
}

// startUnready runs the daemon in-process with cfg until the test ends,
// without waiting for it to stream.
func (f *fixture) startUnready(cfg daemon.Config) *running {
	f.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- daemon.Run(ctx, cfg) }()
	f.t.Cleanup(func() {
		if err := r.stop(); err != nil {
			f.t.Errorf("daemon.Run: %v", err)
		}
	})
	return r
}

// waitSlotActive waits until a walsender streams from slot: past START_REPLICATION,
// so the slot has reached its consistent point and every later commit will be
// decoded (a slot being created shows as active earlier). done, when not nil, delivers
// the daemon's exit; an exit before streaming fails the test, and the value
// is put back for whoever waits on done next.
func (f *fixture) waitSlotActive(slot string, done chan error) {
	f.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var active bool
		err := f.db.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
			WHERE s.slot_name = $1 AND r.state IN ('catchup', 'streaming'))`, slot).Scan(&active)
		if err == nil && active {
			return
		}
		select {
		case err := <-done:
			done <- err
			f.t.Fatalf("daemon stopped before streaming: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	f.t.Fatalf("slot %s not active within 30s", slot)
}

func (f *fixture) exec(sql string, args ...any) {
	f.t.Helper()
	if _, err := f.db.Exec(context.Background(), sql, args...); err != nil {
		f.t.Fatalf("exec %q: %v", sql, err)
	}
}

// key returns the prefixed key.
func (f *fixture) key(k string) string { return f.prefix + k }

// cache sets keys (without prefix) as the application's cache-aside code would.
func (f *fixture) cache(keys ...string) {
	f.t.Helper()
	for _, k := range keys {
		if err := f.rdb.Set(context.Background(), f.key(k), "cached", time.Hour).Err(); err != nil {
			f.t.Fatal(err)
		}
	}
}

func (f *fixture) exists(k string) bool {
	f.t.Helper()
	n, err := f.rdb.Exists(context.Background(), f.key(k)).Result()
	if err != nil {
		f.t.Fatal(err)
	}
	return n == 1
}

func (f *fixture) get(k string) string {
	f.t.Helper()
	v, err := f.rdb.Get(context.Background(), f.key(k)).Result()
	if err == redis.Nil {
		return ""
	}
	if err != nil {
		f.t.Fatal(err)
	}
	return v
}

// waitGone waits until none of keys exists.
func (f *fixture) waitGone(keys ...string) {
	f.t.Helper()
	f.waitGoneWithin(20*time.Second, keys...)
}

// waitGoneWithin waits up to within until none of keys exists.
func (f *fixture) waitGoneWithin(within time.Duration, keys ...string) {
	f.t.Helper()
	waitFor(f.t, within, func() bool {
		for _, k := range keys {
			if f.exists(k) {
				return false
			}
		}
		return true
	}, func() string {
		var left []string
		for _, k := range keys {
			if f.exists(k) {
				left = append(left, k)
			}
		}
		return fmt.Sprintf("keys still cached: %v", left)
	})
}

// waitValue waits until key k holds want.
func (f *fixture) waitValue(k, want string) {
	f.t.Helper()
	waitFor(f.t, 20*time.Second, func() bool { return f.get(k) == want },
		func() string { return fmt.Sprintf("%s = %q, want %q", k, f.get(k), want) })
}

// sync commits a marker transaction on the marker table and waits until the
// daemon has applied it: everything committed before is applied too.
func (f *fixture) sync() {
	f.t.Helper()
	f.cache("marker")
	f.exec("INSERT INTO marker DEFAULT VALUES")
	f.waitGone("marker")
}

// markerSchema and markerRule let a test wait for the daemon to catch up.
const markerSchema = "CREATE TABLE marker (id bigserial PRIMARY KEY)"
const markerRule = `
[[rule]]
table = "marker"
del = ["{p}marker"]
`

func waitFor(t *testing.T, timeout time.Duration, cond func() bool, why func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, why())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testLogger sends the daemon's logs to the test log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// daemonBinary builds cmd/pg-invalidator once per test run.
func daemonBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pginv-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "pg-invalidator")
		out, err := exec.Command("go", "build", "-o", binPath, "../cmd/pg-invalidator").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// markerKeys are the keys of the notes the daemon keeps in Redis about the
// fixture's default slot.
type markerKeys struct{ slot, catalog, resync string }

// markers returns the keys of the notes about the fixture's default slot.
func (f *fixture) markers() markerKeys {
	f.t.Helper()
	id, err := replication.ReadIdentity(context.Background(), f.db)
	if err != nil {
		f.t.Fatal(err)
	}
	return markerKeys{
		slot:    daemon.SlotMarker(id.SystemID, id.Database, replication.DefaultSlot),
		catalog: daemon.CatalogMarker(id.SystemID, id.Database, replication.DefaultSlot),
		resync:  daemon.ResyncMarker(id.SystemID, id.Database, replication.DefaultSlot),
	}
}

// withDatabase returns serverURL with its database set to name.
func withDatabase(t *testing.T, serverURL, name string) string {
	t.Helper()
	u, err := url.Parse(serverURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}
