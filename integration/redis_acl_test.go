package integration

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pg-invalidator/pg-invalidator/config"
	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
)

// TestRedisACLFromSetup creates the Redis user that setup --redis-acl
// prints for the rules, exactly as printed, on every node, and runs the
// daemon as that user: a first start with resync (the flush of every
// pattern and key), an UPDATE (UNLINK, INCR, version keys) and a TRUNCATE
// (SCAN and the pattern scripts), with wait_replicas in cluster mode, and
// canaries every second on a canary_key of the test's own (SET and UNLINK of
// the key the ACL names for it). Every key must change as it should, the
// canaries must come back, and ACL LOG must stay empty on every node: the
// generated ACL cannot lack a command the daemon sends, nor the canary's key.
func TestRedisACLFromSetup(t *testing.T) {
	for _, mode := range []string{"single", "cluster"} {
		t.Run(mode, func(t *testing.T) { testRedisACL(t, mode) })
	}
}

func testRedisACL(t *testing.T, mode string) {
	ctx := context.Background()
	const pw = "acl-Pw-9"
	var nodes []string // every node to create the user on
	var rdb redis.UniversalClient
	var redisTable string
	switch mode {
	case "single":
		srv, err := localsvc.StartRedis(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close() })
		nodes = []string{srv.Addr()}
		rdb = redis.NewClient(&redis.Options{Addr: srv.Addr(), DisableIdentity: true})
		redisTable = fmt.Sprintf("url = %q", srv.URL())
	case "cluster":
		cl, err := localsvc.StartRedisCluster(ctx, 3, 1, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		nodes = cl.Addrs()
		rdb = redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), DisableIdentity: true})
		redisTable = fmt.Sprintf("mode = \"cluster\"\naddrs = [%q, %q]\nwait_replicas = 1", cl.Addrs()[0], cl.Addrs()[1])
	}
	t.Cleanup(func() { rdb.Close() })
	f := newFixtureOn(t, env.PostgresURL, "redis://"+nodes[0]+"/0", itemsSchema)
	rules := f.rules(`
[postgres]
heartbeat = "1s"
canary_key = "{p}canary:<slot>"

[redis]
` + redisTable + `
username = "pginv-acl"
password_env = "PGINV_TEST_ACL_PASSWORD"

[[rule]]
table = "items"
del = ["{p}item:<id>", "{p}items:cat:<cat>"]
incr = ["{p}count:cat:<cat>", "{p}count:all"]
version = ["{p}ver:item:<id>", "{p}ver:items"]
`)

	out, err := exec.Command(daemonBinary(t), "setup", "--redis-acl", "--config", rules).CombinedOutput()
	if err != nil {
		t.Fatalf("setup --redis-acl: %v\n%s", err, out)
	}
	acl := regexp.MustCompile(`(?m)^ACL SETUSER .*$`).FindAllString(string(out), -1)
	if len(acl) != 1 {
		t.Fatalf("setup --redis-acl printed %d ACL SETUSER lines, want 1:\n%s", len(acl), out)
	}
	t.Logf("%s", acl[0])
	for _, addr := range nodes {
		c := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
		defer c.Close()
		var args []any
		for _, a := range strings.Fields(strings.Replace(acl[0], ">PASSWORD", ">"+pw, 1)) {
			args = append(args, a)
		}
		if err := c.Do(ctx, args...).Err(); err != nil {
			t.Fatalf("%s on %s: %v", acl[0], addr, err)
		}
		if err := c.Do(ctx, "ACL", "LOG", "RESET").Err(); err != nil {
			t.Fatal(err)
		}
	}

	t.Setenv("PGINV_TEST_ACL_PASSWORD", pw)
	file, err := config.Load(rules)
	if err != nil {
		t.Fatal(err)
	}
	if err := file.ReadPasswords(); err != nil {
		t.Fatal(err)
	}
	cfg := f.config(rules)
	cfg.Targets = file.Targets
	cfg.Heartbeat, cfg.CanaryKey = file.Postgres.Heartbeat, file.Postgres.CanaryKey
	cfg.MetricsAddr = metricsAddr(t)
	cfg.Resync = true // a first start finds no slot, and flushes every key the rules can render

	key := f.key
	set := func(kv ...string) {
		t.Helper()
		for i := 0; i < len(kv); i += 2 {
			if err := rdb.Set(ctx, key(kv[i]), kv[i+1], time.Hour).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	get := func(k string) string { return rdb.Get(ctx, key(k)).Val() }
	wait := func(what string, cond func() bool) {
		t.Helper()
		waitFor(t, 20*time.Second, cond, func() string {
			var vals []string
			for _, k := range []string{"item:1", "item:5", "item:7", "items:cat:1", "count:cat:1", "count:cat:3", "count:all", "ver:item:1", "ver:item:5", "ver:item:7", "ver:items"} {
				vals = append(vals, fmt.Sprintf("%s=%q", k, get(k)))
			}
			return what + "; " + strings.Join(vals, " ")
		})
	}
	isLSN := regexp.MustCompile(`^[0-9A-F]{16}$`).MatchString

	set("item:5", "cached", "count:cat:3", "7", "ver:item:5", "x")
	f.startConfig(cfg)
	wait("the resync flush did not delete item:5, increment count:cat:3 and count:all, and set ver:item:5", func() bool {
		return get("item:5") == "" && get("count:cat:3") == "8" && get("count:all") == "1" && isLSN(get("ver:item:5"))
	})

	set("item:1", "cached", "items:cat:1", "cached")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
	wait("the UPDATE did not delete item:1 and items:cat:1, increment count:cat:1 and count:all, set ver:item:1 and ver:items", func() bool {
		return get("item:1") == "" && get("items:cat:1") == "" && get("count:cat:1") == "1" && get("count:all") == "2" &&
			isLSN(get("ver:item:1")) && isLSN(get("ver:items"))
	})

	set("item:7", "cached", "ver:item:7", "x")
	f.exec("TRUNCATE items")
	wait("the TRUNCATE did not delete item:7, increment count:cat:3 and set ver:item:7", func() bool {
		return get("item:7") == "" && get("count:cat:3") == "9" && isLSN(get("ver:item:7"))
	})

	if !strings.Contains(acl[0], " ~"+f.key("canary:pg_invalidator")+" ") {
		t.Errorf("the ACL does not name the canary's key %s: %s", f.key("canary:pg_invalidator"), acl[0])
	}
	// Canaries go round as that user: set, back through PostgreSQL, deleted.
	var rtts []float64
	waitFor(t, 30*time.Second, func() bool {
		if v, ok := canarySeconds(t, cfg.MetricsAddr); ok && (len(rtts) == 0 || v != rtts[len(rtts)-1]) {
			rtts = append(rtts, v)
		}
		return len(rtts) >= 3
	}, func() string {
		return fmt.Sprintf("canary round trips %v, want 3; /readyz: %q", rtts, fmt.Sprint(httpGet(t, cfg.MetricsAddr, "/readyz")))
	})
	if n := rdb.Exists(ctx, f.key("canary:pg_invalidator")).Val(); n != 0 {
		// It lives only while a canary is out: wait a moment, and look again.
		waitFor(t, 10*time.Second, func() bool { return rdb.Exists(ctx, f.key("canary:pg_invalidator")).Val() == 0 },
			func() string { return "the canary's key stays" })
	}

	for _, addr := range nodes {
		c := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
		defer c.Close()
		if log := c.Do(ctx, "ACL", "LOG").Val(); fmt.Sprint(log) != "[]" {
			t.Errorf("ACL LOG on %s = %v, want it empty", addr, log)
		}
	}
}
