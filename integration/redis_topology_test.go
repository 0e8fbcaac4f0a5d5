package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
	"github.com/pg-invalidator/pg-invalidator/replication"
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

// TestRedisDegradedStaysReady runs the daemon against a sentinel group (a
// master and its replica) with wait_replicas = 1, and kills the replica for
// good: invalidation goes on, /readyz stays 200 and names the master, and
// pg_invalidator_redis_degraded says 1 for it, until the replica is back.
func TestRedisDegradedStaysReady(t *testing.T) {
	ctx := context.Background()
	sg, err := localsvc.StartRedisSentinel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sg.Close() })
	master := sg.Master.Addr()
	f := newFixtureOn(t, env.PostgresURL, "redis://"+master+"/0", itemsSchema, markerSchema)
	cfg := f.config(f.rules(itemsRules))
	cfg.Targets = []daemon.Target{{Name: daemon.DefaultTarget, Redis: invalidator.Options{Mode: invalidator.ModeSentinel,
		Addrs: sg.SentinelAddrs(), MasterName: localsvc.SentinelMaster, WaitReplicas: 1}}}
	cfg.MetricsAddr = metricsAddr(t)
	cfg.ReadyRedisWithin = 3 * time.Second // a ping every second
	addr := cfg.MetricsAddr
	f.startConfig(cfg)
	if body := waitStatus(t, addr, "/readyz", http.StatusOK, 30*time.Second); body != "ready\n" {
		t.Errorf("/readyz with the replica in sync = %q, want \"ready\\n\"", body)
	}
	series := `pg_invalidator_redis_degraded{addr="` + master + `",target="default"}`

	sg.Replica.Kill()
	f.cache("item:1", "item:2")
	f.exec("UPDATE items SET v = v + 1 WHERE id IN (1, 2)")
	f.waitGone("item:1", "item:2")
	want := "ready\ndegraded: redis master " + master + " has 0 replicas online"
	waitFor(t, 10*time.Second, func() bool { _, body := httpGet(t, addr, "/readyz"); return strings.HasPrefix(body, want) },
		func() string {
			code, body := httpGet(t, addr, "/readyz")
			return fmt.Sprintf("/readyz = %d %q, want %q...", code, body, want)
		})
	if got, ok := scrape(t, addr)[series]; !ok || got != 1 {
		t.Errorf("%s = %v (present %v), want 1", series, got, ok)
	}
	f.cache("item:4") // the batches after the first go on too
	f.exec("UPDATE items SET v = v + 1 WHERE id = 4")
	f.waitGone("item:4")

	if err := sg.Replica.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() bool { _, body := httpGet(t, addr, "/readyz"); return body == "ready\n" },
		func() string { _, body := httpGet(t, addr, "/readyz"); return "/readyz still says " + body })
	if got, ok := scrape(t, addr)[series]; ok {
		t.Errorf("%s = %v after the replica came back, want it absent", series, got)
	}
	f.cache("item:3")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 3")
	f.waitGone("item:3")
	if n := nodeKeys(t, sg.Replica.Addr(), f.key("item:*")); n != 0 {
		t.Errorf("%d invalidated keys still on the replica", n)
	}
}

// nodeKeys counts the keys matching pattern on the server at addr.
func nodeKeys(t *testing.T, addr, pattern string) int {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
	defer c.Close()
	n := 0
	iter := c.Scan(context.Background(), 0, pattern, 1000).Iterator()
	for iter.Next(context.Background()) {
		n++
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSentinelAuthThroughTheBinary runs the binary against sentinels that
// require an ACL user, in front of a master and replica with a password of
// their own, every secret read from the environment or a file as the rules
// file says: a row change invalidates its key, and neither password shows
// in the output, even at debug level.
func TestSentinelAuthThroughTheBinary(t *testing.T) {
	ctx := context.Background()
	const dataPW, sentinelPW = "Secret-Data-Pw", "Secret-Sentinel-Pw"
	sg, err := localsvc.StartRedisSentinelWith(ctx, localsvc.SentinelOptions{Password: dataPW,
		SentinelUsername: "watcher", SentinelPassword: sentinelPW})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sg.Close() })
	f := newFixtureOn(t, env.PostgresURL, "redis://:"+dataPW+"@"+sg.Master.Addr()+"/0", itemsSchema, markerSchema)
	pwFile := filepath.Join(t.TempDir(), "sentinel-password")
	if err := os.WriteFile(pwFile, []byte(sentinelPW+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rules := f.rules(fmt.Sprintf(`
[redis]
mode = "sentinel"
addrs = [%q, %q]
master = %q
password_env = "PGINV_TEST_DATA_PASSWORD"
sentinel_username = "watcher"
sentinel_password_file = %q
wait_replicas = 1
`, sg.SentinelAddrs()[0], sg.SentinelAddrs()[1], localsvc.SentinelMaster, pwFile) + itemsRules)

	cmd := exec.Command(daemonBinary(t), "run", "--config", rules, "--postgres", f.dbURL, "--log-level", "debug")
	cmd.Env = append(os.Environ(), "PGINV_TEST_DATA_PASSWORD="+dataPW)
	var out testenv.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		<-done
		if t.Failed() {
			t.Logf("output:\n%s", out.String())
		}
	})
	f.waitSlotActive(replication.DefaultSlot, nil)
	f.cache("item:1")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
	f.waitGone("item:1")
	cmd.Process.Signal(syscall.SIGTERM)
	<-done
	if strings.Contains(out.String(), "Secret") {
		t.Errorf("a password is in the output:\n%s", out.String())
	}
}
