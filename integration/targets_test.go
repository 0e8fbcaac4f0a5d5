package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
)

// TestTargetsAcknowledgeOnlyWhenAllApplied runs the binary with two caches,
// [redis] (A, the default) and a [[target]] named b: a write invalidates
// both, and while b is down the slot does not move past a write that A has
// already applied.
func TestTargetsAcknowledgeOnlyWhenAllApplied(t *testing.T) {
	ctx := context.Background()
	rdA, err := localsvc.StartRedis(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdA.Close() })
	rdB, err := localsvc.StartRedis(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdB.Close() })
	f := newFixtureOn(t, env.PostgresURL, rdA.URL(), itemsSchema, markerSchema)
	opts, err := redis.ParseURL(rdB.URL())
	if err != nil {
		t.Fatal(err)
	}
	opts.DisableIdentity = true
	b := redis.NewClient(opts)
	t.Cleanup(func() { b.Close() })
	existsB := func(k string) bool {
		n, err := b.Exists(ctx, f.key(k)).Result()
		return err == nil && n == 1
	}
	cacheBoth := func(keys ...string) {
		t.Helper()
		f.cache(keys...)
		for _, k := range keys {
			if err := b.Set(ctx, f.key(k), "cached", time.Hour).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}

	// One canary at the start, none later: a canary's batch in flight when b
	// stops would hold the next write back from A too (batches go one at a
	// time), which is not what this test is about.
	rules := f.rules(fmt.Sprintf(`
[postgres]
heartbeat = "1h"

[redis]   # A, through --redis

[[target]]
name = "b"
url = %q
`, rdB.URL()) + itemsRules)
	addr := metricsAddr(t)
	f.startProcess(rules, "--metrics-addr", addr)
	waitStatus(t, addr, "/readyz", 200, 30*time.Second)

	// A write invalidates in both.
	cacheBoth("item:1")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
	f.waitGone("item:1")
	waitFor(t, 20*time.Second, func() bool { return !existsB("item:1") },
		func() string { return "item:1 still cached in target b" })
	f.sync()
	// The start's canary must be back from b before b stops, or its batch
	// would wait on b and hold the next write back from A.
	waitFor(t, 30*time.Second, func() bool {
		_, ok := scrape(t, addr)[`pg_invalidator_canary_seconds{target="b"}`]
		return ok
	}, func() string { return "the first canary never came back from target b" })

	// b goes down: A applies the next write, the acknowledgement waits for b.
	// "unrelated", which no rule names, tells that b kept its data over the
	// restart: the daemon may delete item:2 the moment b answers again.
	cacheBoth("item:2", "unrelated")
	if err := rdB.StopSave(); err != nil {
		t.Fatal(err)
	}
	before := f.walLSN()
	f.exec("UPDATE items SET v = v + 1 WHERE id = 2")
	f.waitGone("item:2")
	waitFor(t, 15*time.Second, func() bool {
		s := scrape(t, addr)
		return s[`pg_invalidator_target_up{target="b"}`] == 0 && s[`pg_invalidator_target_up{target="default"}`] == 1
	}, func() string {
		s := scrape(t, addr)
		return fmt.Sprintf("target_up default=%v b=%v, want 1 and 0",
			s[`pg_invalidator_target_up{target="default"}`], s[`pg_invalidator_target_up{target="b"}`])
	})
	if acked := f.slotLSN("pg_invalidator"); acked > before {
		t.Fatalf("the slot was acknowledged to %s while target b was down; the write began at %s", lsnText(acked), lsnText(before))
	}

	// b comes back with the stale key, which the daemon now deletes, and the
	// slot moves past the write.
	if err := rdB.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if !existsB("unrelated") {
		t.Fatal("target b lost its keys over the restart; the test cannot tell anything")
	}
	waitFor(t, 20*time.Second, func() bool { return !existsB("item:2") },
		func() string { return "item:2 still cached in target b after it came back" })
	waitFor(t, 30*time.Second, func() bool { return f.slotLSN("pg_invalidator") > before },
		func() string {
			return fmt.Sprintf("the slot stayed at %s, before the write at %s", lsnText(f.slotLSN("pg_invalidator")), lsnText(before))
		})
	waitStatus(t, addr, "/readyz", 200, 15*time.Second)
	atLeast(t, scrape(t, addr), map[string]float64{
		`pg_invalidator_commands_total{action="del",target="default"}`: 2,
		`pg_invalidator_commands_total{action="del",target="b"}`:       2,
		`pg_invalidator_redis_errors_total{target="b"}`:                1,
		`pg_invalidator_target_up{target="b"}`:                         1,
	})
}
