package integration

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
	"github.com/pg-invalidator/pg-invalidator/internal/raceload"
	"github.com/pg-invalidator/pg-invalidator/internal/tcpproxy"
	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// TestFailoverSlotKeepsTheCacheWarm fails PostgreSQL over as a DBA who set
// up slot synchronization would: a primary, a physical standby with
// sync_replication_slots, the primary's synchronized_standby_slots naming
// the standby's slot, and a daemon on a multi-host URL with
// target_session_attrs=read-write. The primary is killed (SIGKILL, never
// restarted) and the standby promoted.
//
//   - The standby was made with pg_basebackup after the primary named its
//     slot in synchronized_standby_slots, so once promoted it names a slot
//     it does not have, and its walsender would send nothing: the daemon
//     stops with a message that says so and how to fix it, instead of
//     waiting in silence.
//   - Once fixed, the daemon streams on from the slot the standby
//     synchronized: the keys of a row changed after the promotion go, and
//     a key no change touched stays (no flush).
//
// Before PostgreSQL 17 there are no failover slots: the test checks that
// the daemon creates its slot there as before, and stops. What follows a
// lost slot is the lost-slot tests' part.
func TestFailoverSlotKeepsTheCacheWarm(t *testing.T) {
	t.Parallel() // its own servers; its keys under its own prefix
	ctx := context.Background()
	primary, dbURL := newPrimary(t)
	f := newFixtureAt(t, dbURL, env.RedisURL, itemsSchema, markerSchema)
	if version := serverVersion(t, dbURL); version < 170000 {
		f.startConfig(f.config(f.rules(itemsRules)))
		slot := readSlot(t, dbURL)
		if !slot.Exists || slot.Failover {
			t.Fatalf("PostgreSQL %d: slot %+v, want one without the failover option", version/10000, slot)
		}
		t.Logf("PostgreSQL %d has no failover slots: the slot was created without the option", version/10000)
		return
	}

	pair := newFailoverPair(t, primary, dbURL, true)
	standbyURL := pair.standbyURL
	cfg := f.config(f.rules(itemsRules))
	cfg.PostgresURL = pair.url
	cfg.MaxBackoff = 200 * time.Millisecond
	start := time.Now()
	r := f.startConfig(cfg)
	pair.waitSlotCopy(t, dbURL)
	t.Logf("the standby held a usable copy of the slot %s after the daemon started", time.Since(start).Round(time.Millisecond))
	// What check, the metrics and /readyz report: the one standby the URL
	// names, ready.
	copies, warning, err := daemon.CheckFailoverCopies(ctx, cfg)
	want := fmt.Sprintf("127.0.0.1:%d", pair.standby.Port)
	if err != nil || warning != "" || len(copies) != 1 || copies[0].Addr != want || !copies[0].Ready || len(copies[0].Problems) > 0 {
		t.Fatalf("CheckFailoverCopies = %+v, %q, %v; want %s ready, and nothing missing", copies, warning, err, want)
	}

	f.cache("item:1", "item:7")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
	f.waitGone("item:1")

	if err := primary.Kill(); err != nil { // dead for good
		t.Fatal(err)
	}
	testenv.Exec(t, standbyURL, "SELECT pg_promote()")
	promoted := time.Now()

	// The promoted standby still names standby1, which it does not have.
	var runErr error
	select {
	case runErr = <-r.done:
		r.once.Do(r.cancel) // it has stopped: the cleanup's stop returns nil
	case <-time.After(30 * time.Second):
		t.Fatal("the daemon did not stop on the promoted standby's synchronized_standby_slots within 30 s")
	}
	var cfgErr *daemon.ConfigError
	if !errors.As(runErr, &cfgErr) || !strings.Contains(runErr.Error(), "synchronized_standby_slots") ||
		!strings.Contains(runErr.Error(), "ALTER SYSTEM SET synchronized_standby_slots = ''") {
		t.Fatalf("the daemon stopped with %v, want a ConfigError naming synchronized_standby_slots and its fix", runErr)
	}
	t.Logf("on the promoted standby, the daemon stopped within %s of the promotion: %v", time.Since(promoted).Round(time.Millisecond), runErr)

	testenv.Exec(t, standbyURL, "ALTER SYSTEM SET synchronized_standby_slots = ''", "SELECT pg_reload_conf()")
	fixed := time.Now()
	f.dbURL = standbyURL
	f.reconnect()
	f.startConfig(cfg)
	f.cache("item:2")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 2")
	f.waitGone("item:2")
	t.Logf("invalidating again %s after the setting was fixed", time.Since(fixed).Round(time.Millisecond))
	if !f.exists("item:7") {
		t.Error("item:7, which no change touched, is gone: the failover flushed the cache")
	}
}

// newPrimary starts a PostgreSQL of the test's own, with a new database.
func newPrimary(t *testing.T) (*localsvc.Postgres, string) {
	t.Helper()
	primary, err := localsvc.StartPostgres(context.Background(), localsvc.PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { primary.Close() })
	return primary, testenv.NewDatabase(t, primary.URL())
}

// failoverPair is a primary and a physical standby set up for failover
// slots (PostgreSQL 17 and later), as a DBA would: the standby streams
// through a physical slot on the primary, with sync_replication_slots,
// hot_standby_feedback and a dbname in primary_conninfo.
type failoverPair struct {
	standby *localsvc.Postgres
	// link carries the standby's connections to the primary (WAL and slot
	// synchronization); closing it makes the standby lag for good.
	link       *tcpproxy.Proxy
	standbyURL string // the test database on the standby
	url        string // both servers, target_session_attrs=read-write: the daemon's
}

// newFailoverPair makes the standby of primary, whose test database is at
// dbURL. With guard, the primary names the standby's slot in
// synchronized_standby_slots before the base backup, so that the standby
// inherits the setting.
func newFailoverPair(t *testing.T, primary *localsvc.Postgres, dbURL string, guard bool) *failoverPair {
	t.Helper()
	testenv.Exec(t, primary.URL(), "SELECT pg_create_physical_replication_slot('standby1')")
	if guard {
		testenv.Exec(t, primary.URL(), "ALTER SYSTEM SET synchronized_standby_slots = 'standby1'", "SELECT pg_reload_conf()")
	}
	cfgDB, err := pgx.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	link, err := tcpproxy.Start(fmt.Sprintf("127.0.0.1:%d", primary.Port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { link.Close() })
	_, linkPort, _ := strings.Cut(link.Addr(), ":")
	settings := []string{"primary_slot_name=standby1", "hot_standby_feedback=on",
		// Slot synchronization needs a dbname in primary_conninfo.
		fmt.Sprintf("primary_conninfo=host=127.0.0.1 port=%s user=postgres application_name=standby1 dbname=%s", linkPort, cfgDB.Database)}
	if serverVersion(t, dbURL) >= 170000 {
		settings = append(settings, "sync_replication_slots=on")
	}
	standby, err := localsvc.StartStandby(context.Background(), primary, localsvc.StandbyOptions{Name: "standby1", Settings: settings})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { standby.Close() })
	return &failoverPair{
		standby:    standby,
		link:       link,
		standbyURL: strings.Replace(dbURL, fmt.Sprintf(":%d/", primary.Port), fmt.Sprintf(":%d/", standby.Port), 1),
		url: fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/%s?sslmode=disable&target_session_attrs=read-write",
			primary.Port, standby.Port, cfgDB.Database),
	}
}

// waitSlotCopy checks that the daemon's slot on the primary has the
// failover option, and waits until the standby's copy is usable: synced
// and no longer temporary (the daemon's pg_log_standby_snapshot() hastens
// it).
func (pair *failoverPair) waitSlotCopy(t *testing.T, dbURL string) {
	t.Helper()
	if slot := readSlot(t, dbURL); !slot.Failover {
		t.Fatalf("slot on the primary: %+v, want the failover option", slot)
	}
	waitFor(t, 60*time.Second, func() bool {
		s := readSlot(t, pair.standbyURL)
		return s.Exists && s.Synced && !s.Temporary
	}, func() string { return fmt.Sprintf("the standby's copy of the slot: %+v", readSlot(t, pair.standbyURL)) })
}

func serverVersion(t *testing.T, url string) int {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var v int
	if err := conn.QueryRow(context.Background(), "SELECT current_setting('server_version_num')::int").Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// readSlot reads the daemon's slot on the server of url.
func readSlot(t *testing.T, url string) replication.SlotInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	s, err := replication.SlotState(ctx, conn, replication.DefaultSlot)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestFailoverLosesCommitsTheStandbyNeverGot fails over to a standby that
// lags: it stopped receiving WAL, then the primary committed an UPDATE, the
// daemon invalidated its key, and a reader cached the new value. The
// primary is killed and the standby promoted: the UPDATE is gone, and the
// cached value with it is stale. No synchronized_standby_slots guards the
// daemon here (with it, the daemon is never sent what the standby lacks).
//
// From PostgreSQL 17 the daemon streams on from the failover slot, and the
// new timeline's history shows that its last invalidation was past the
// fork: it flushes every rule's keys. Before 17 the slot is lost, and
// on_slot_lost = "resync" flushes them. Either way nothing stale is left.
func TestFailoverLosesCommitsTheStandbyNeverGot(t *testing.T) {
	t.Parallel() // its own servers; its keys under its own prefix
	ctx := context.Background()
	primary, dbURL := newPrimary(t)
	f := newFixtureAt(t, dbURL, env.RedisURL, itemsSchema, markerSchema)
	version := serverVersion(t, dbURL)
	pair := newFailoverPair(t, primary, dbURL, false)
	cfg := f.config(f.rules(itemsRules))
	cfg.PostgresURL = pair.url
	cfg.MaxBackoff = 200 * time.Millisecond
	cfg.Resync = version < 170000
	f.startConfig(cfg)
	if version >= 170000 {
		pair.waitSlotCopy(t, dbURL)
		// check says what lets this happen.
		if _, warning, err := daemon.CheckFailoverCopies(ctx, cfg); err != nil || !strings.Contains(warning, "synchronized_standby_slots is empty") {
			t.Errorf("CheckFailoverCopies warned %q (err %v), want the empty synchronized_standby_slots named", warning, err)
		}
	}
	f.cache("item:1")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
	f.waitGone("item:1")

	// The standby stops receiving: the link to the primary is cut.
	if err := pair.link.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() bool {
		var n int
		f.db.QueryRow(ctx, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'standby1'").Scan(&n)
		return n == 0
	}, func() string { return "the standby still streams from the primary" })

	f.cache("item:3")
	f.exec("UPDATE items SET v = 42 WHERE id = 3")
	f.waitGone("item:3")
	// A reader that missed caches what the primary says now.
	if err := f.rdb.Set(ctx, f.key("item:3"), "v=42", 0).Err(); err != nil {
		t.Fatal(err)
	}
	f.cache("item:7") // no change touches it

	if err := primary.Kill(); err != nil { // dead for good, with the UPDATE
		t.Fatal(err)
	}
	testenv.Exec(t, pair.standbyURL, "SELECT pg_promote()")
	promoted := time.Now()
	var v int
	if err := pgxQueryRow(t, pair.standbyURL, "SELECT v FROM items WHERE id = 3", &v); v == 42 || err != nil {
		t.Fatalf("the promoted standby has v = %d for item 3 (err %v): the test needs it to have missed the UPDATE", v, err)
	}

	f.waitGoneWithin(60*time.Second, "item:3")
	t.Logf("PostgreSQL %d: the stale item:3 was flushed %s after the promotion", version/10000, time.Since(promoted).Round(time.Millisecond))
	if f.exists("item:7") {
		t.Error("item:7 is still cached: the flush should have covered every rule's keys")
	}
	f.dbURL = pair.standbyURL
	f.reconnect()
	f.cache("item:2")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 2")
	f.waitGone("item:2")
}

// pgxQueryRow runs one query on url and scans its row into dest.
func pgxQueryRow(t *testing.T, url, sql string, dest ...any) error {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.QueryRow(context.Background(), sql).Scan(dest...)
}

// TestFailoverUnderLoad fails over while applications write and read:
// writers update rows through the multi-host URL, cache-aside readers miss,
// read, pause and SET (with redelete_after, as a careful user runs against
// the stale-set race), and the primary is killed and its standby promoted
// in the middle. The DBA set synchronized_standby_slots on the primary
// after the base backup, so the promoted standby names no slot it lacks.
// The daemon streams on from the synced slot with nothing flushed, and once
// the load stops and the daemon has caught up, no cached entry differs
// from its row on the new primary.
func TestFailoverUnderLoad(t *testing.T) {
	t.Parallel() // its own servers; its keys under its own prefix
	ctx := context.Background()
	primary, dbURL := newPrimary(t)
	const rows = 200
	f := newFixtureAt(t, dbURL, env.RedisURL, itemsSchema, markerSchema, raceload.Schema(rows))
	version := serverVersion(t, dbURL)
	pair := newFailoverPair(t, primary, dbURL, false)
	if version >= 170000 {
		testenv.Exec(t, primary.URL(), "ALTER SYSTEM SET synchronized_standby_slots = 'standby1'", "SELECT pg_reload_conf()")
	}
	cfg := f.config(f.rules(itemsRules + `
[[rule]]
table = "race_items"
del = ["{p}item:<id>"]
redelete_after = "300ms"
`))
	cfg.PostgresURL = pair.url
	cfg.MaxBackoff = 200 * time.Millisecond
	cfg.Resync = version < 170000 // before 17 the slot is lost: the flush is the recovery
	f.startConfig(cfg)
	if version >= 170000 {
		pair.waitSlotCopy(t, dbURL)
	}
	const untouched = "item:1999" // an items row no one writes
	f.cache(untouched)

	loadCtx, stopLoad := context.WithCancel(ctx)
	var load sync.WaitGroup
	var writes, sets atomic.Int64
	for range 2 {
		load.Go(func() { writeLoad(loadCtx, pair.url, rows, &writes) })
	}
	for range 4 {
		load.Go(func() { readLoad(loadCtx, pair.url, f.rdb, f.prefix, rows, &sets) })
	}
	time.Sleep(2 * time.Second)

	if err := primary.Kill(); err != nil { // dead for good
		t.Fatal(err)
	}
	testenv.Exec(t, pair.standbyURL, "SELECT pg_promote()")
	promoted := time.Now()
	f.dbURL = pair.standbyURL
	f.reconnect()
	f.cache("item:5")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 5")
	f.waitGoneWithin(60*time.Second, "item:5")
	t.Logf("PostgreSQL %d: invalidating again %s after the promotion, under load", version/10000, time.Since(promoted).Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	stopLoad()
	load.Wait()

	// Caught up: a last change's key gone, and the re-deletes sent.
	f.cache("item:6")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 6")
	f.waitGone("item:6")
	time.Sleep(time.Second) // past redelete_after
	stale, cached, err := raceload.Stale(ctx, pair.standbyURL, f.rdb, f.prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d writes and %d cache fills; at the end %d entries cached, %d stale", writes.Load(), sets.Load(), cached, stale)
	if stale != 0 {
		t.Errorf("%d of %d cached entries differ from their rows on the new primary", stale, cached)
	}
	if version >= 170000 && !f.exists(untouched) {
		t.Errorf("%s is gone: the failover flushed the cache", untouched)
	}
}

// everConnected runs step with a connection to url until ctx ends,
// connecting again after a failed connect or a failed step, as an
// application's pool would through a failover.
func everConnected(ctx context.Context, url string, step func(*pgx.Conn) error) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if conn == nil {
			c, err := pgx.Connect(ctx, url)
			if err != nil {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			conn = c
		}
		if err := step(conn); err != nil {
			conn.Close(context.Background())
			conn = nil
		}
	}
}

// writeLoad updates random rows of race_items through url until ctx ends.
func writeLoad(ctx context.Context, url string, rows int, writes *atomic.Int64) {
	everConnected(ctx, url, func(conn *pgx.Conn) error {
		if _, err := conn.Exec(ctx, "UPDATE race_items SET v = v + 1 WHERE id = $1", 1+rand.IntN(rows)); err != nil {
			return err
		}
		writes.Add(1)
		time.Sleep(2 * time.Millisecond)
		return nil
	})
}

// readLoad is a cache-aside reader of race_items: on a miss it reads the
// row through url, pauses a few milliseconds, and SETs it.
func readLoad(ctx context.Context, url string, rdb *redis.Client, prefix string, rows int, sets *atomic.Int64) {
	everConnected(ctx, url, func(conn *pgx.Conn) error {
		id := 1 + rand.IntN(rows)
		key := raceload.Key(prefix, id)
		if err := rdb.Get(ctx, key).Err(); err != redis.Nil {
			return nil // a hit, or Redis busy
		}
		var v int64
		if err := conn.QueryRow(ctx, "SELECT v FROM race_items WHERE id = $1", id).Scan(&v); err != nil {
			return err
		}
		time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond)
		if rdb.Set(context.WithoutCancel(ctx), key, v, time.Hour).Err() == nil {
			sets.Add(1)
		}
		return nil
	})
}
