package integration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// TestDecodingOnAStandby streams from a hot standby ([postgres] url) with
// the primary in primary_url, as a user whose primary is short of CPU
// would: the slot is on the standby, and the primary takes the
// publication, the heartbeats and the snapshot records. Rows change on the
// primary; their keys go. The canary comes back and /readyz is 200. Idle,
// the slot still moves (heartbeats on the
// primary reach the standby's walsender). The standby restarted, the
// daemon streams on. The primary restarted with wal_level = replica, the
// standby invalidates the slot, and the daemon stops with a message that
// says so and why.
//
// Before PostgreSQL 16 a standby cannot decode: the daemon refuses, saying
// so.
func TestDecodingOnAStandby(t *testing.T) {
	t.Parallel() // its own servers; its keys under its own prefix
	ctx := context.Background()
	primary, dbURL := newPrimary(t)
	f := newFixtureAt(t, dbURL, env.RedisURL, itemsSchema, markerSchema)
	testenv.Exec(t, primary.URL(), "SELECT pg_create_physical_replication_slot('standby1')")
	standby, err := localsvc.StartStandby(ctx, primary, localsvc.StandbyOptions{Name: "standby1",
		Settings: []string{"primary_slot_name=standby1", "hot_standby_feedback=on"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { standby.Close() })
	standbyURL := strings.Replace(dbURL, fmt.Sprintf(":%d/", primary.Port), fmt.Sprintf(":%d/", standby.Port), 1)
	waitFor(t, 30*time.Second, func() bool { return pgxQueryRow(t, standbyURL, "SELECT 1 FROM items LIMIT 1", new(int)) == nil },
		func() string { return "the standby has not replayed the schema" })

	cfg := f.config(f.rules(itemsRules))
	cfg.PostgresURL, cfg.PrimaryURL = standbyURL, dbURL
	cfg.Heartbeat = 200 * time.Millisecond
	cfg.MaxBackoff = 200 * time.Millisecond
	cfg.CanaryKey = f.key("canary:<slot>")
	version := serverVersion(t, dbURL)
	if version < 160000 {
		err := daemon.Run(ctx, cfg)
		if err == nil || !strings.Contains(err.Error(), "cannot decode on a standby: that needs 16 or later") {
			t.Fatalf("PostgreSQL %d: the daemon on a standby returned %v, want a refusal that says 16 is needed", version/10000, err)
		}
		t.Logf("PostgreSQL %d: %v", version/10000, err)
		return
	}

	cfg.MetricsAddr = metricsAddr(t)
	start := time.Now()
	r := f.startUnready(cfg)
	waitStreaming(t, standbyURL, r.done)
	t.Logf("streaming from the standby %s after the start", time.Since(start).Round(time.Millisecond))
	if slot := readSlot(t, dbURL); slot.Exists {
		t.Errorf("the primary has the slot %+v: it belongs on the standby", slot)
	}

	f.cache("item:1", "item:2")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
	f.exec("DELETE FROM items WHERE id = 2")
	f.waitGone("item:1", "item:2")

	// The canary, written on the primary, comes back through the standby's
	// stream, and /readyz says so.
	waitFor(t, 30*time.Second, func() bool {
		v, ok := canarySeconds(t, cfg.MetricsAddr)
		code, _ := readyz(t, cfg.MetricsAddr)
		return ok && v > 0 && code == 200
	}, func() string {
		code, body := readyz(t, cfg.MetricsAddr)
		return fmt.Sprintf("no canary round trip, or /readyz %d %q", code, body)
	})
	v, _ := canarySeconds(t, cfg.MetricsAddr)
	t.Logf("canary round trip through the standby: %.1f ms", v*1000)

	// Idle: only heartbeats, written on the primary, move the slot.
	before := readSlot(t, standbyURL).ConfirmedFlushLSN
	waitFor(t, 10*time.Second, func() bool { return readSlot(t, standbyURL).ConfirmedFlushLSN > before },
		func() string { return fmt.Sprintf("the standby's slot stayed at %s while idle", before) })

	if err := standby.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	f.cache("item:3")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 3")
	f.waitGone("item:3")

	// The primary without logical WAL: the standby invalidates the slot.
	if err := primary.Restart(ctx, "wal_level=replica"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-r.done:
		r.once.Do(r.cancel)
		var slotErr *replication.SlotError
		if !errors.As(err, &slotErr) || !strings.Contains(err.Error(), "invalidated") {
			t.Fatalf("the daemon stopped with %v, want a lost-slot error", err)
		}
		t.Logf("PostgreSQL %d, primary restarted with wal_level = replica: %v", version/10000, err)
	case <-time.After(60 * time.Second):
		t.Fatal("the daemon did not stop within 60 s of its slot's invalidation on the standby")
	}
}

// waitStreaming waits until a walsender on the server of url streams from
// the daemon's slot, or the daemon stops (done).
func waitStreaming(t *testing.T, url string, done chan error) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if ok, err := replication.SlotStreaming(context.Background(), conn, replication.DefaultSlot); err == nil && ok {
			return
		}
		select {
		case err := <-done:
			done <- err
			t.Fatalf("the daemon stopped before streaming: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatal("the daemon did not stream from the standby within 60 s")
}
