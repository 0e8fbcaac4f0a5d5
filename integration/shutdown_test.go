package integration

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
)

// TestFastShutdownNotHeldByTheDaemon: a fast shutdown of PostgreSQL
// (pg_ctl stop -m fast, systemd's stop) ends every backend but keeps each
// walsender until its client has confirmed, as flushed, everything it was
// sent. The daemon confirms a transaction only once Redis applied it, and
// only once it is visible on the primary: with a Redis that blocks writes,
// or a commit whose visibility the stopping server can no longer confirm,
// it never does, and before the daemon ended its session on seeing the
// server shut down, the server waited for it for good (the chaos run's
// pg-restart held 30 s, then shut down immediately). The shutdown must
// finish in a few seconds, and the transaction must be invalidated once the
// server is back: it was not acknowledged, so it is replayed.
func TestFastShutdownNotHeldByTheDaemon(t *testing.T) {
	tests := []struct {
		name string
		// hold makes the daemon unable to acknowledge the UPDATE it is
		// sent next; release undoes it once the server is down.
		hold    func(t *testing.T, f *fixture, admin *redis.Client) (update func(), release func())
		visible string
	}{
		{"redis blocks writes", func(t *testing.T, f *fixture, admin *redis.Client) (func(), func()) {
			if err := admin.Do(context.Background(), "CLIENT", "PAUSE", 120000, "WRITE").Err(); err != nil {
				t.Fatal(err)
			}
			return func() { f.exec("UPDATE items SET v = v + 1 WHERE id = 1") },
				func() { admin.Do(context.Background(), "CLIENT", "UNPAUSE") }
		}, daemon.VisibilityOff},
		// A synchronous standby named and never connected: the UPDATE's
		// commit is streamed, and waits, not visible, for the standby.
		{"commit not visible", func(t *testing.T, f *fixture, _ *redis.Client) (func(), func()) {
			f.exec("ALTER SYSTEM SET synchronous_standby_names = 'nosuch'")
			f.exec("SELECT pg_reload_conf()")
			return func() { f.waitingWriter("UPDATE items SET v = v + 1 WHERE id = 1") }, func() {}
		}, daemon.VisibilityOn},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			pg, err := localsvc.StartPostgres(ctx, localsvc.PostgresOptions{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { pg.Close() })
			rd, err := localsvc.StartRedis(ctx)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { rd.Close() })
			admin := redis.NewClient(&redis.Options{Addr: rd.Addr(), DisableIdentity: true})
			t.Cleanup(func() { admin.Close() })

			f := newFixtureOn(t, pg.URL(), rd.URL(), itemsSchema, markerSchema)
			cfg := f.config(f.rules(itemsRules))
			cfg.Heartbeat = time.Second
			cfg.MaxBackoff = 500 * time.Millisecond
			cfg.Visibility = tt.visible
			cfg.VisibilityTimeout = time.Second
			f.startConfig(cfg)
			f.sync()

			f.cache("item:1")
			update, release := tt.hold(t, f, admin)
			update()
			// The daemon has received the UPDATE and not confirmed it.
			var sent, flushed string
			waitFor(t, 20*time.Second, func() bool {
				err := f.db.QueryRow(ctx, `SELECT sent_lsn::text, flush_lsn::text FROM pg_stat_replication
					WHERE sent_lsn >= pg_current_wal_lsn() AND flush_lsn < sent_lsn`).Scan(&sent, &flushed)
				return err == nil
			}, func() string { return "the daemon's walsender never showed the UPDATE sent and not confirmed" })
			time.Sleep(2 * time.Second) // past visibility_timeout: the batch is applied, or waits on Redis

			start := time.Now()
			fast, err := pg.StopWithin(30 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			if !fast {
				t.Fatalf("the fast shutdown did not finish within 30s (sent %s, confirmed %s): the daemon's session held its walsender", sent, flushed)
			}
			t.Logf("fast shutdown took %s with the UPDATE sent (%s) and not confirmed (%s)", took.Round(time.Millisecond), sent, flushed)
			if took > 10*time.Second {
				t.Errorf("the fast shutdown took %s, want it within a few heartbeats (%s)", took.Round(time.Millisecond), cfg.Heartbeat)
			}

			// A reader that read the old row while the UPDATE was not
			// confirmed caches it again: only the replay removes it.
			release()
			f.cache("item:1")
			if err := pg.Start(ctx); err != nil {
				t.Fatal(err)
			}
			db, err := pgx.Connect(ctx, f.dbURL)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close(context.Background()) })
			db.Exec(ctx, "ALTER SYSTEM RESET synchronous_standby_names")
			db.Exec(ctx, "SELECT pg_reload_conf()")
			f.waitGoneWithin(30*time.Second, "item:1")
			var v int
			if err := db.QueryRow(ctx, "SELECT v FROM items WHERE id = 1").Scan(&v); err != nil || v != 1 {
				t.Fatalf("items row 1 after the restart: v = %d, %v; want the UPDATE committed (1)", v, err)
			}
			t.Logf("the UPDATE, not confirmed before the shutdown, was replayed and invalidated after the restart")
		})
	}
}
