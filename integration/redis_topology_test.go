package integration

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
)

// TestRedisCluster runs the daemon against Redis Cluster (3 masters, 3
// replicas) with wait_replicas = 1: row changes invalidate keys on every
// master, and a TRUNCATE scans every master for its patterns.
func TestRedisCluster(t *testing.T) {
	ctx := context.Background()
	cl, err := localsvc.StartRedisCluster(ctx, 3, 1, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), DisableIdentity: true})
	t.Cleanup(func() { rdb.Close() })

	f := newFixtureOn(t, env.PostgresURL, "redis://"+cl.Addrs()[0]+"/0",
		"CREATE TABLE items (id int PRIMARY KEY, category int NOT NULL)", "ALTER TABLE items REPLICA IDENTITY FULL")
	cfg := f.config(f.rules(`
[[rule]]
table = "items"
del = ["{p}item:<id>", "{p}list:<category>"]
incr = ["{p}version"]
`))
	cfg.Targets = []daemon.Target{{Name: daemon.DefaultTarget,
		Redis: invalidator.Options{Mode: invalidator.ModeCluster, Addrs: cl.Addrs(), WaitReplicas: 1}}}
	f.startConfig(cfg)

	cache := func(keys ...string) {
		t.Helper()
		for _, k := range keys {
			if err := rdb.Set(ctx, f.key(k), "cached", time.Hour).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	left := func(keys ...string) []string {
		t.Helper()
		var l []string
		for _, k := range keys {
			if rdb.Exists(ctx, f.key(k)).Val() == 1 {
				l = append(l, k)
			}
		}
		return l
	}
	waitGone := func(keys ...string) {
		t.Helper()
		waitFor(t, 20*time.Second, func() bool { return len(left(keys...)) == 0 },
			func() string { return fmt.Sprintf("keys still cached: %v", left(keys...)) })
	}

	var items []string
	for i := range 300 {
		items = append(items, "item:"+strconv.Itoa(i))
	}
	cache(items...)
	cache("list:1", "list:2")
	f.exec("INSERT INTO items SELECT g, 1 + g % 2 FROM generate_series(0, 149) g")
	waitGone(append(items[:150:150], "list:1", "list:2")...)
	if got := rdb.Get(ctx, f.key("version")).Val(); got != "1" {
		t.Errorf("version = %q after one transaction, want 1", got)
	}
	if l := left(items[150:]...); len(l) != 150 {
		t.Errorf("%d of the untouched items are cached, want 150", len(l))
	}

	// TRUNCATE: item:* and list:* are patterns, scanned on every master.
	cache("list:7")
	on := testenv.KeysPerMaster(t, rdb, f.key("*"))
	if len(on) != 3 {
		t.Fatalf("the test's keys are on %d masters, want 3: %v", len(on), on)
	}
	f.exec("TRUNCATE items")
	waitGone(append(items, "list:7")...)
	if got := testenv.KeysPerMaster(t, rdb, f.key("*")); len(got) != 1 {
		t.Errorf("keys left per master after TRUNCATE = %v, want only the version key", got)
	}
}
