package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
	"github.com/pg-invalidator/pg-invalidator/internal/raceload"
	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

const raceRows = 200

// raceRules are the rules of the race workload; redelete is a
// redelete_after line, or empty.
func raceRules(redelete string) string {
	return `
[[rule]]
table = "race_items"
del = ["{p}item:<id>"]
` + redelete + "\n" + markerRule
}

// waitRedeletesSent waits until no re-delete is pending, as /metrics at
// addr says.
func waitRedeletesSent(t *testing.T, addr string) {
	t.Helper()
	var pending float64
	waitFor(t, 60*time.Second, func() bool {
		pending = scrape(t, addr)["pg_invalidator_redeletes_pending"]
		return pending == 0
	}, func() string { return fmt.Sprintf("%v re-deletes still pending", pending) })
}

// TestRedeleteRepairsStaleSets runs the cache-aside workload (8 readers
// pausing 5 ms between the read and the SET, 2 writers) and then forces
// the stale-set race on 5 rows, with redelete_after off and on: off leaves
// stale entries (at least the 5 forced ones), on leaves none, and counts
// the re-deletes that found a key. The delay leaves the forced readers 2 s
// for their SET after the delete, on a loaded machine.
func TestRedeleteRepairsStaleSets(t *testing.T) {
	for _, tc := range []struct {
		name, redelete string
	}{
		{"off", ""},
		{"on", `redelete_after = "2s"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, raceload.Schema(raceRows), markerSchema)
			cfg := f.config(f.rules(raceRules(tc.redelete)))
			cfg.MetricsAddr = metricsAddr(t)
			f.startConfig(cfg)
			ctx := context.Background()

			counts, err := raceload.Run(ctx, raceload.Options{WriteURL: f.dbURL, Redis: f.rdb, Prefix: f.prefix, Rows: raceRows,
				Readers: 8, ReadDelay: 5 * time.Millisecond, Writers: 2, WritePause: 5 * time.Millisecond, Duration: 3 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if err := raceload.Forced(ctx, f.dbURL, f.dbURL, f.rdb, f.prefix, 5, true); err != nil {
				t.Fatal(err)
			}
			f.sync()
			waitRedeletesSent(t, cfg.MetricsAddr)
			stale, cached, err := raceload.Stale(ctx, f.dbURL, f.rdb, f.prefix)
			if err != nil {
				t.Fatal(err)
			}
			m := scrape(t, cfg.MetricsAddr)
			found := m[`pg_invalidator_redeletes_found_total{target="default"}`]
			t.Logf("redelete %s: %d of %d cached entries stale; reads %d, hits %d, writes %d; re-deletes %v, found a key %v",
				tc.name, stale, cached, counts.Reads, counts.Hits, counts.Writes, m[`pg_invalidator_redeletes_total{target="default"}`], found)
			switch {
			case tc.redelete == "" && stale < 5:
				t.Errorf("without redelete_after: %d stale entries, want at least the 5 forced ones", stale)
			case tc.redelete != "" && stale != 0:
				t.Errorf("with redelete_after: %d stale entries, want 0", stale)
			case tc.redelete != "" && found < 5:
				t.Errorf("pg_invalidator_redeletes_found_total = %v, want at least the 5 forced races", found)
			}
		})
	}
}

// TestRedeleteHoldsTheAcknowledgement checks that a transaction is
// acknowledged only once its re-deletes are sent: until then the slot stays
// before it, a restart replays it (the first delete again), and once the
// slot has passed it, the re-delete has happened.
func TestRedeleteHoldsTheAcknowledgement(t *testing.T) {
	f := newFixture(t, raceload.Schema(10), markerSchema)
	cfg := f.config(f.rules(raceRules(`redelete_after = "15s"`)))
	r := f.startConfig(cfg)
	const slot = "pg_invalidator"

	f.cache("item:1")
	f.exec("UPDATE race_items SET v = 1 WHERE id = 1")
	end := f.walLSN() // at or past the transaction's end
	f.waitGone("item:1")
	f.cache("item:1") // a slow reader's stale SET
	time.Sleep(2 * time.Second)
	if got := f.slotLSN(slot); got >= end {
		t.Fatalf("slot confirmed %s, past the update (%s), before its re-delete", lsnText(got), lsnText(end))
	}

	// A restart before the re-delete replays the transaction.
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if !f.exists("item:1") {
		t.Fatal("item:1 gone before the restart")
	}
	f.startConfig(cfg)
	f.waitGone("item:1")

	f.cache("item:1")
	waitFor(t, 60*time.Second, func() bool { return f.slotLSN(slot) >= end },
		func() string { return fmt.Sprintf("slot at %s, want past %s", lsnText(f.slotLSN(slot)), lsnText(end)) })
	if f.exists("item:1") {
		t.Error("the slot passed the update before its re-delete was sent")
	}
}

// TestRedeleteQueueLimit checks that a full queue of re-deletes pauses
// reading, counts it, and drops nothing.
func TestRedeleteQueueLimit(t *testing.T) {
	f := newFixture(t, raceload.Schema(20), markerSchema)
	cfg := f.config(f.rules(raceRules(`redelete_after = "300ms"`)))
	cfg.MetricsAddr = metricsAddr(t)
	cfg.RedeleteLimit = 3
	f.startConfig(cfg)

	for id := 1; id <= 20; id++ {
		f.exec("UPDATE race_items SET v = v + 1 WHERE id = $1", id)
	}
	f.sync()
	waitRedeletesSent(t, cfg.MetricsAddr)
	m := scrape(t, cfg.MetricsAddr)
	if got := m["pg_invalidator_redelete_pauses_total"]; got < 1 {
		t.Errorf("pg_invalidator_redelete_pauses_total = %v, want at least 1", got)
	}
	if got := m[`pg_invalidator_redeletes_total{target="default"}`]; got != 20 {
		t.Errorf("pg_invalidator_redeletes_total = %v, want 20, one per updated row", got)
	}
}

// TestRedeleteDryRun checks that a dry run prints a re-delete's delay with
// its command, and deletes nothing, at once or later.
func TestRedeleteDryRun(t *testing.T) {
	f := newFixture(t, raceload.Schema(10), markerSchema)
	cfg := f.config(f.rules(raceRules(`redelete_after = "200ms"`)))
	out := &testenv.SyncBuffer{}
	cfg.DryRun, cfg.DryRunOut = true, out
	f.exec(replication.CreatePublicationSQL("pg_invalidator", cfg.Rules.Tables()))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- daemon.Run(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("dry run: %v", err)
		}
	})
	waitFor(t, 30*time.Second, func() bool {
		var n int
		f.db.QueryRow(context.Background(), `
SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
WHERE s.database = current_database() AND s.temporary AND r.state = 'streaming'`).Scan(&n)
		return n == 1
	}, func() string { return "no temporary slot streaming" })

	f.cache("item:3")
	f.exec("UPDATE race_items SET v = 1 WHERE id = 3")
	want := fmt.Sprintf(`"commands":[{"action":"del","key":"%sitem:3","redelete_after":"200ms"}]`, f.prefix)
	waitFor(t, 30*time.Second, func() bool { return strings.Contains(out.String(), want) },
		func() string { return fmt.Sprintf("dry run printed:\n%s\nwant a line with %s", out.String(), want) })
	time.Sleep(time.Second)
	if !f.exists("item:3") {
		t.Error("the dry run deleted item:3")
	}
}

// TestRedeleteEveryTargetAndCluster checks that re-deletes reach every
// target, one of them a Redis Cluster whose keys span its masters, for
// keys and for a TRUNCATE's pattern, and are counted per target.
func TestRedeleteEveryTargetAndCluster(t *testing.T) {
	ctx := context.Background()
	cl, err := localsvc.StartRedisCluster(ctx, 3, 0, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	crdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), DisableIdentity: true})
	t.Cleanup(func() { crdb.Close() })

	f := newFixture(t, raceload.Schema(12), markerSchema)
	cfg := f.config(f.rules(raceRules(`redelete_after = "2s"`)))
	cfg.MetricsAddr = metricsAddr(t)
	cfg.Targets = append(cfg.Targets, daemon.Target{Name: "cluster",
		Redis: invalidator.Options{Mode: invalidator.ModeCluster, Addrs: cl.Addrs()}})
	f.startConfig(cfg)

	caches := []redis.UniversalClient{f.rdb, crdb}
	set := func(ids ...int) {
		t.Helper()
		for _, c := range caches {
			for _, id := range ids {
				if err := c.Set(ctx, raceload.Key(f.prefix, id), "stale", time.Hour).Err(); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	left := func(ids ...int) []string {
		var l []string
		for i, c := range caches {
			for _, id := range ids {
				if c.Exists(ctx, raceload.Key(f.prefix, id)).Val() == 1 {
					l = append(l, fmt.Sprintf("%s on %s", raceload.Key("", id), cfg.Targets[i].Name))
				}
			}
		}
		return l
	}
	waitGone := func(ids ...int) {
		t.Helper()
		waitFor(t, 30*time.Second, func() bool { return len(left(ids...)) == 0 },
			func() string { return fmt.Sprintf("still cached: %v", left(ids...)) })
	}
	keys, truncated := []int{1, 2, 3, 4, 5, 6}, []int{7, 8, 9, 10, 11, 12}
	if on := testenv.KeysPerMaster(t, crdb, f.prefix+"*"); len(on) != 0 {
		t.Fatalf("keys before the test: %v", on)
	}
	set(keys...)
	f.exec("UPDATE race_items SET v = 1 WHERE id <= 6")
	waitGone(keys...)
	set(keys...) // slow readers, after the first delete
	if on := testenv.KeysPerMaster(t, crdb, f.prefix+"*"); len(on) < 2 {
		t.Fatalf("the keys are on %d masters, want them spread: %v", len(on), on)
	}
	waitGone(keys...)

	set(truncated...)
	f.exec("TRUNCATE race_items")
	waitGone(truncated...)
	set(truncated...)
	waitGone(truncated...)

	waitRedeletesSent(t, cfg.MetricsAddr)
	m := scrape(t, cfg.MetricsAddr)
	for _, target := range []string{"default", "cluster"} {
		if got := m[fmt.Sprintf(`pg_invalidator_redeletes_found_total{target=%q}`, target)]; got < 12 {
			t.Errorf("redeletes_found_total for %s = %v, want at least 12", target, got)
		}
	}
}
