package integration

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

const itemsSchema = `
CREATE TABLE items (id bigint PRIMARY KEY, cat int, v int NOT NULL DEFAULT 0);
ALTER TABLE items REPLICA IDENTITY FULL;
INSERT INTO items (id, cat) SELECT g, g % 10 FROM generate_series(1, 2000) g;
`

const itemsRules = `
[[rule]]
table = "items"
del = ["{p}item:<id>", "{p}items:cat:<cat>"]
` + markerRule

// process is the daemon binary running as a child process.
type process struct {
	cmd    *exec.Cmd
	stderr *testenv.SyncBuffer
	done   chan struct{}
}

func (f *fixture) startProcess(rulesPath string, args ...string) *process {
	f.t.Helper()
	return f.startProcessURL(f.dbURL, rulesPath, args...)
}

// startProcessURL is startProcess with another PostgreSQL URL, such as one
// that logs in as a less privileged role.
func (f *fixture) startProcessURL(pgURL, rulesPath string, args ...string) *process {
	f.t.Helper()
	all := append([]string{"run", "--config", rulesPath, "--postgres", pgURL, "--redis", f.redisURL}, args...)
	cmd := exec.Command(daemonBinary(f.t), all...)
	p := &process{cmd: cmd, stderr: &testenv.SyncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	f.t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
		if f.t.Failed() {
			f.t.Logf("daemon stderr:\n%s", p.stderr)
		}
	})
	return p
}

// cacheItems caches item:1..n and items:cat:0..9.
func (f *fixture) cacheItems(n int) []string {
	f.t.Helper()
	keys := make([]string, 0, n+10)
	for i := 1; i <= n; i++ {
		keys = append(keys, fmt.Sprintf("item:%d", i))
	}
	for c := 0; c < 10; c++ {
		keys = append(keys, fmt.Sprintf("items:cat:%d", c))
	}
	pipe := f.rdb.Pipeline()
	for _, k := range keys {
		pipe.Set(context.Background(), f.key(k), "cached", time.Hour)
	}
	if _, err := pipe.Exec(context.Background()); err != nil {
		f.t.Fatal(err)
	}
	return keys
}

// updateItems runs one UPDATE transaction per item, from..to.
func updateItems(t *testing.T, dbURL string, from, to int) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Error(err)
		return
	}
	defer conn.Close(ctx)
	for i := from; i <= to; i++ {
		if _, err := conn.Exec(ctx, "UPDATE items SET v = v + 1 WHERE id = $1", i); err != nil {
			t.Errorf("update item %d: %v", i, err)
			return
		}
	}
}

func TestKill9MidLoadLosesNothing(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	rules := f.rules(itemsRules)
	keys := f.cacheItems(2000)

	p := f.startProcess(rules)
	f.waitSlotActive("pg_invalidator", nil)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); updateItems(t, f.dbURL, 1, 2000) }()
	// Kill the daemon while the load runs and some of it is applied.
	waitFor(t, 30*time.Second, func() bool { return !f.exists("item:200") }, func() string { return "no progress before the kill" })
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	wg.Wait()

	f.startProcess(rules)
	f.waitGone(keys...)
}

func TestSIGTERMExitsCleanlyAndAcknowledges(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	rules := f.rules(itemsRules)
	p := f.startProcess(rules)
	f.waitSlotActive("pg_invalidator", nil)

	f.cache("item:1")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
	end := f.walLSN()
	f.waitGone("item:1")
	// The keys go as soon as the change arrives; the commit, which is what
	// is acknowledged, may come in the next read. Until then a replay is
	// right, so wait for the acknowledgement.
	waitFor(t, 10*time.Second, func() bool { return f.slotLSN("pg_invalidator") >= end },
		func() string { return "the update's commit was not acknowledged" })

	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the daemon did not exit within 5s of SIGTERM")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit code after SIGTERM = %d, want 0; stderr:\n%s", code, p.stderr)
	}
	t.Logf("exited %s after SIGTERM", time.Since(start).Round(time.Millisecond))

	// The update was acknowledged, so a new daemon must not replay it: a
	// value cached after it stays cached.
	f.cache("item:1")
	f.startProcess(rules)
	f.waitSlotActive("pg_invalidator", nil)
	f.sync()
	if !f.exists("item:1") {
		t.Fatal("an acknowledged transaction was replayed after a clean restart")
	}
}

func TestRedisDownWhileWriting(t *testing.T) {
	rd, err := localsvc.StartRedis(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Close() })
	f := newFixtureOn(t, env.PostgresURL, rd.URL(), itemsSchema, markerSchema)
	cfg := f.config(f.rules(itemsRules))
	r := f.startConfig(cfg)

	keys := f.cacheItems(100)
	if err := rd.StopSave(); err != nil {
		t.Fatal(err)
	}
	before := f.walLSN()
	updateItems(t, f.dbURL, 1, 100)
	time.Sleep(3 * time.Second) // the daemon retries meanwhile; it must not exit
	select {
	case err := <-r.done:
		t.Fatalf("the daemon exited while Redis was down: %v", err)
	default:
	}
	// Nothing Redis has not applied may be acknowledged.
	if acked := f.slotLSN("pg_invalidator"); acked > before {
		t.Fatalf("the slot was acknowledged to %s while Redis was down; the writes began at %s", lsnText(acked), lsnText(before))
	}

	// A daemon restarted while Redis is still down gets the writes again.
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if err := rd.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !f.exists("item:1") {
		t.Fatal("Redis lost its keys over the restart; the test cannot tell anything")
	}
	f.startConfig(cfg)
	f.waitGone(keys...)
}

// walLSN returns the server's current WAL position.
func (f *fixture) walLSN() uint64 {
	f.t.Helper()
	var lsn uint64
	if err := f.db.QueryRow(context.Background(), "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").Scan(&lsn); err != nil {
		f.t.Fatal(err)
	}
	return lsn
}

// slotLSN returns the slot's confirmed_flush_lsn.
func (f *fixture) slotLSN(slot string) uint64 {
	f.t.Helper()
	var lsn uint64
	if err := f.db.QueryRow(context.Background(),
		"SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&lsn); err != nil {
		f.t.Fatal(err)
	}
	return lsn
}

func lsnText(lsn uint64) string { return fmt.Sprintf("%X/%X", lsn>>32, uint32(lsn)) }

func TestPostgresRestart(t *testing.T) {
	pg, err := localsvc.StartPostgres(context.Background(), localsvc.PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close() })
	f := newFixtureOn(t, pg.URL(), env.RedisURL, itemsSchema, markerSchema)
	cfg := f.config(f.rules(itemsRules))
	cfg.MaxBackoff = 500 * time.Millisecond
	f.startConfig(cfg)

	for _, how := range []string{"stop", "kill"} {
		f.cache("item:1")
		f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
		f.waitGone("item:1")

		if how == "stop" {
			err = pg.Stop()
		} else {
			err = pg.Kill()
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := pg.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		up := time.Now()
		f.reconnect()
		f.cache("item:2", "item:3")
		f.exec("UPDATE items SET v = v + 1 WHERE id IN (2, 3)")
		f.waitGone("item:2", "item:3")
		t.Logf("%s: keys gone %s after PostgreSQL accepted connections again (MaxBackoff %s)", how, time.Since(up).Round(time.Millisecond), cfg.MaxBackoff)
	}
}

// reconnect replaces the fixture's database connection after a restart.
func (f *fixture) reconnect() {
	f.t.Helper()
	db, err := pgx.Connect(context.Background(), f.dbURL)
	if err != nil {
		f.t.Fatal(err)
	}
	old := f.db
	f.db = db
	old.Close(context.Background())
	f.t.Cleanup(func() { db.Close(context.Background()) })
}

func TestSlotHeldByAnotherDaemon(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	cfg := f.config(f.rules(itemsRules))
	cfg.MaxBackoff = 300 * time.Millisecond
	active := f.startConfig(cfg)
	standby := f.startConfig(cfg) // the slot is busy: it must wait, not exit

	f.cache("item:1")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
	f.waitGone("item:1")
	select {
	case err := <-standby.done:
		t.Fatalf("the standby exited while the slot was busy: %v", err)
	case <-time.After(time.Second):
	}
	if err := active.stop(); err != nil {
		t.Fatal(err)
	}
	f.cache("item:2")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 2")
	f.waitGone("item:2")
}

func TestSlotMovesWhilePublishedTablesAreQuiet(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema, "CREATE TABLE noise (id bigserial PRIMARY KEY, pad text)")
	f.start(f.rules(itemsRules))

	// 100 MB of WAL on a table no rule names.
	var startLSN, endLSN string
	f.db.QueryRow(context.Background(), "SELECT pg_current_wal_lsn()::text").Scan(&startLSN)
	for i := 0; i < 10; i++ {
		f.exec("INSERT INTO noise (pad) SELECT repeat(md5(g::text), 32) FROM generate_series(1, 10000) g")
	}
	var walBytes int64
	f.db.QueryRow(context.Background(), "SELECT pg_current_wal_lsn()::text, pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint", startLSN).Scan(&endLSN, &walBytes)
	if walBytes < 100<<20 {
		t.Fatalf("wrote only %d bytes of WAL, want 100 MB", walBytes)
	}
	waitFor(t, 60*time.Second, func() bool {
		var passed bool
		f.db.QueryRow(context.Background(),
			"SELECT confirmed_flush_lsn >= $1::pg_lsn FROM pg_replication_slots WHERE slot_name = 'pg_invalidator'", endLSN).Scan(&passed)
		return passed
	}, func() string {
		return "the slot did not move past " + endLSN + " while only unpublished tables were written"
	})
	t.Logf("slot passed %d MB of WAL written to an unpublished table", walBytes>>20)
}

func TestLargeTransactionInChunks(t *testing.T) {
	f := newFixture(t, `
		CREATE TABLE items (id bigint PRIMARY KEY, cat int, v int NOT NULL DEFAULT 0);
		ALTER TABLE items REPLICA IDENTITY FULL;
		INSERT INTO items (id, cat) SELECT g, g % 10 FROM generate_series(1, 30000) g;`, markerSchema)
	cfg := f.config(f.rules(`
[[rule]]
table = "items"
del = ["{p}item:<id>"]
incr = ["{p}version:items"]
` + markerRule))
	cfg.MaxBatch = 1000 // many flushes inside one transaction
	f.startConfig(cfg)

	keys := f.cacheItems(30000)[:30000]
	f.exec("UPDATE items SET v = v + 1")
	f.waitGone(keys...)
	f.sync()
	if got := f.get("version:items"); got != "1" {
		t.Fatalf("version after one large transaction = %q, want 1", got)
	}
}

func TestPasswordsNeverPrinted(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	rules := f.rules(itemsRules)
	const secret = "s3cr3t-pw-42"
	for _, args := range [][]string{
		{"check", "--config", rules, "--postgres", "postgres://app:" + secret + "@127.0.0.1:1/app"},
		{"check", "--config", rules, "--postgres", "host=127.0.0.1 port=1 user=app password=" + secret},
	} {
		out, err := exec.Command(daemonBinary(t), args...).CombinedOutput()
		if err == nil {
			t.Fatalf("%v succeeded against a closed port", args)
		}
		if strings.Contains(string(out), secret) {
			t.Fatalf("%v printed the password:\n%s", args, out)
		}
	}
	// run retries: give it a moment to log, then stop it.
	cmd := exec.Command(daemonBinary(t), "run", "--config", rules, "--postgres", f.dbURL,
		"--redis", "redis://user:"+secret+"@127.0.0.1:1/0")
	var out testenv.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	if strings.Contains(out.String(), secret) {
		t.Fatalf("run printed the password:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "redis") {
		t.Fatalf("run logged nothing about the unreachable Redis:\n%s", out.String())
	}
}

func TestStartsBeforePostgres(t *testing.T) {
	pg, err := localsvc.StartPostgres(context.Background(), localsvc.PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close() })
	f := newFixtureOn(t, pg.URL(), env.RedisURL, itemsSchema, markerSchema)
	cfg := f.config(f.rules(itemsRules))
	cfg.MaxBackoff = 300 * time.Millisecond
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- daemon.Run(ctx, cfg) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case err := <-done:
		t.Fatalf("run gave up while PostgreSQL was down: %v", err)
	case <-time.After(2 * time.Second):
	}
	if err := pg.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.reconnect()
	f.waitSlotActive("pg_invalidator", done)
	f.cache("item:1")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
	f.waitGone("item:1")
}

func TestSlotDroppedWhileRunningStopsTheDaemon(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	cfg := f.config(f.rules(itemsRules))
	cfg.MaxBackoff = 200 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- daemon.Run(ctx, cfg) }()
	f.waitSlotActive("pg_invalidator", done)

	// Someone drops the slot (or a failover loses it) while the daemon runs.
	waitFor(t, 20*time.Second, func() bool {
		f.db.Exec(context.Background(), "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'pg_invalidator' AND active_pid IS NOT NULL")
		_, err := f.db.Exec(context.Background(), "SELECT pg_drop_replication_slot('pg_invalidator')")
		return err == nil
	}, func() string { return "could not drop the slot" })

	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "disappeared") || !strings.Contains(err.Error(), "--resync") {
			t.Fatalf("Run = %v, want an error saying the slot disappeared, and that --resync recovers", err)
		}
		t.Logf("daemon stopped with: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the daemon kept running after its slot was dropped")
	}
	var n int
	f.db.QueryRow(context.Background(), "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pg_invalidator'").Scan(&n)
	if n != 0 {
		t.Fatal("the daemon silently recreated a lost slot")
	}
}

// lostSlotFixture runs the daemon on rules once, on a private PostgreSQL
// with max_slot_wal_keep_size=1MB, stops it, and writes WAL until the slot
// is invalidated (wal_status lost). before runs while the daemon is away,
// before the slot is lost.
func lostSlotFixture(t *testing.T, rules string, before func(f *fixture)) (*fixture, daemon.Config) {
	t.Helper()
	pg, err := localsvc.StartPostgres(context.Background(), localsvc.PostgresOptions{
		Settings: []string{"max_slot_wal_keep_size=1MB", "max_wal_size=32MB", "min_wal_size=32MB"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close() })
	f := newFixtureOn(t, pg.URL(), env.RedisURL, itemsSchema, markerSchema, "CREATE TABLE noise (pad text)")
	cfg := f.config(f.rules(rules))
	r := f.startConfig(cfg)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if before != nil {
		before(f)
	}
	for i := 0; i < 8; i++ {
		f.exec("INSERT INTO noise SELECT repeat(md5(g::text), 32) FROM generate_series(1, 10000) g")
		f.exec("CHECKPOINT")
	}
	var status string
	f.db.QueryRow(context.Background(), "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'pg_invalidator'").Scan(&status)
	if status != "lost" {
		t.Fatalf("wal_status = %q after writing past max_slot_wal_keep_size, want lost", status)
	}
	return f, cfg
}

func TestInvalidatedSlotStopsWithAClearMessage(t *testing.T) {
	_, cfg := lostSlotFixture(t, itemsRules, nil)
	err := daemon.Run(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "invalidated") || !strings.Contains(err.Error(), "pg_drop_replication_slot") ||
		!strings.Contains(err.Error(), "--resync") {
		t.Fatalf("Run on a lost slot = %v, want a fatal error that says what happened and what to run", err)
	}
	t.Logf("daemon stopped with: %v", err)
}
