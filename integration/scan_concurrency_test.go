package integration

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// flushRules are a partitioned table whose keys the catalog watch flushes
// by pattern when a leaf is truncated, and a plain table.
const flushRules = `
[[rule]]
table = "events"
del = ["{p}event:<region>:<id>"]

[[rule]]
table = "products"
del = ["{p}product:<id>"]
` + markerRule

// TestCatalogFlushDoesNotStallLiveInvalidation truncates a leaf partition,
// which the catalog watch answers by flushing the partitioned table's keys
// by pattern: 200,000 keys, scanned 10 at a time, take seconds. An UPDATE
// of another rule table meanwhile must be invalidated while that scan still
// runs, not once it is over: the watch and the pipeline apply their
// batches on the same Invalidator, from two goroutines.
func TestCatalogFlushDoesNotStallLiveInvalidation(t *testing.T) {
	f := newFixture(t, eventsSchema, productsSchema, markerSchema,
		"INSERT INTO products (id, category_id, name) VALUES (1, 3, 'lamp')")
	cfg := f.config(f.rules(flushRules))
	cfg.Targets[0].Redis.ScanCount = 10
	f.startWatched(cfg)

	const n = 200_000
	events := make([]string, n)
	for i := range events {
		events[i] = f.key("event:eu:" + strconv.Itoa(i))
	}
	f.setMany(events)
	f.cache("product:1")

	f.exec("TRUNCATE events_eu")
	waitFor(t, 60*time.Second, func() bool { return f.countExisting(events) < n },
		func() string { return "the flush of public.events deleted no key" })
	scanning := time.Now()
	f.exec("UPDATE products SET name = 'desk' WHERE id = 1")
	f.waitGoneLong("product:1")
	invalidated := time.Now()
	left := f.countExisting(events)
	for deadline := time.Now().Add(2 * time.Minute); f.countExisting(events) > 0; {
		if time.Now().After(deadline) {
			t.Fatal("the flush of public.events still running after 2 minutes")
		}
		time.Sleep(250 * time.Millisecond) // each count reads every key: poll slowly, not to slow the scan
	}
	t.Logf("product:1 invalidated %s after the UPDATE, with %d of %d keys of the flush left; the flush ended %s after the UPDATE",
		invalidated.Sub(scanning).Round(time.Millisecond), left, n, time.Since(scanning).Round(time.Millisecond))
	if left == 0 {
		t.Errorf("product:1 was invalidated only once the flush's scan had ended (%s after the UPDATE): the live batch waited for it",
			invalidated.Sub(scanning).Round(time.Millisecond))
	}
}

// setMany caches keys (with their prefix), in pipelines of 10,000.
func (f *fixture) setMany(keys []string) {
	f.t.Helper()
	ctx := context.Background()
	for len(keys) > 0 {
		chunk := keys[:min(len(keys), 10_000)]
		keys = keys[len(chunk):]
		pipe := f.rdb.Pipeline()
		for _, k := range chunk {
			pipe.Set(ctx, k, "cached", time.Hour)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			f.t.Fatal(err)
		}
	}
}

// countExisting returns how many of keys (with their prefix) exist.
func (f *fixture) countExisting(keys []string) int {
	f.t.Helper()
	ctx := context.Background()
	pipe := f.rdb.Pipeline()
	var counts []*redis.IntCmd
	for i := 0; i < len(keys); i += 1000 {
		counts = append(counts, pipe.Exists(ctx, keys[i:min(len(keys), i+1000)]...))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		f.t.Fatal(err)
	}
	total := 0
	for _, c := range counts {
		total += int(c.Val())
	}
	return total
}
