package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
)

// TestSlotMarkerSetAgain: a Redis that loses the slot's marker while the
// daemon runs (an allkeys-* eviction, a FLUSHALL) gets it back within a
// few catalog polls. Else a slot lost after the daemon stops would be taken
// for a first start by the next one, and the changes made meanwhile never
// invalidated.
func TestSlotMarkerSetAgain(t *testing.T) {
	f := newFixture(t, productsSchema, markerSchema)
	cfg := f.config(f.rules(productsRules))
	w := f.startWatched(cfg)
	ctx := context.Background()
	key := f.markers().slot
	remembered := func() bool { return f.rdb.Exists(ctx, key).Val() == 1 }
	waitFor(t, 10*time.Second, remembered, func() string { return "no slot marker at " + key })
	if err := f.rdb.Del(ctx, key).Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitFor(t, 30*catalogPoll, remembered, func() string { return "the slot's marker was not set again at " + key })
	t.Logf("set again %s after it was deleted (poll every %s)", time.Since(start).Round(time.Millisecond), catalogPoll)

	// The slot is lost while no daemon runs: the next start knows.
	if err := w.run.stop(); err != nil {
		t.Fatal(err)
	}
	f.dropSlot("pg_invalidator")
	err := f.runDaemon(cfg).exit(t, "restarted daemon")
	if err == nil || !strings.Contains(err.Error(), "Redis remembers that it existed") {
		t.Fatalf("the restarted daemon stopped with %v, want the lost-slot message", err)
	}
}

// TestMarkersKeptApartByServer uses one Redis beside two servers, each with
// a database of the same name and the same slot, as a staging server and a
// restored copy would be: the second daemon must not take the first one's
// notes for its own. Keyed by database and slot alone, it took the first
// server's catalog reading for its own and flushed a rule table as
// swapped.
func TestMarkersKeptApartByServer(t *testing.T) {
	ctx := context.Background()
	var fixtures []*fixture
	for range 2 {
		pg, err := localsvc.StartPostgres(ctx, localsvc.PostgresOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pg.Close() })
		admin, err := pgx.Connect(ctx, pg.URL())
		if err != nil {
			t.Fatal(err)
		}
		_, err = admin.Exec(ctx, "CREATE DATABASE shop")
		admin.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		fixtures = append(fixtures, newFixtureAt(t, withDatabase(t, pg.URL(), "shop"), env.RedisURL, productsSchema, markerSchema))
	}
	first, second := fixtures[0], fixtures[1]
	second.prefix = first.prefix // the same application, the same keys
	if first.markers() == second.markers() {
		t.Fatalf("both servers' notes have the same keys: %+v", first.markers())
	}

	// The first server's daemon saves its catalog reading, and stops.
	w := first.startWatched(first.config(first.rules(productsRules)))
	waitFor(t, 10*time.Second, func() bool { return first.rdb.Exists(ctx, first.markers().catalog).Val() == 1 },
		func() string { return "no catalog reading saved" })
	if err := w.run.stop(); err != nil {
		t.Fatal(err)
	}

	// The second server's daemon finds no reading of its own: its first
	// reading is a baseline, and nothing is flushed.
	second.cache("product:1")
	w = second.startWatched(second.config(second.rules(productsRules)))
	time.Sleep(5 * catalogPoll)
	if !second.exists("product:1") {
		t.Errorf("product:1 was flushed at the second daemon's start; it logged:\n%s", w.log)
	}
	if n := w.logCount("change=swapped"); n != 0 {
		t.Errorf("the second daemon found %d tables swapped; it logged:\n%s", n, w.log)
	}
	second.exec("INSERT INTO products (id, category_id) VALUES (1, 3)")
	second.waitGone("product:1")
}
