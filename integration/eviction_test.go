package integration

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
)

const evictionIncrRules = `
[[rule]]
table = "items"
del = ["{p}item:<id>"]
incr = ["{p}version:items"]
` + markerRule

const evictionVersionRules = `
[[rule]]
table = "items"
del = ["{p}item:<id>"]
version = ["{p}version:items"]
` + markerRule

// checkOutput runs the binary's check and returns its output; it fails the
// test unless check exits 0.
func checkOutput(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(daemonBinary(t), append([]string{"check"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("check %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestEvictionWarningThroughTheBinary runs check and run against a Redis
// whose maxmemory-policy is allkeys-lru: both warn, naming the incr key and
// the two fixes, and neither stops. With version keys only, or a volatile
// policy, there is no warning; a Redis that cannot be reached or read is
// said so, and check still passes.
func TestEvictionWarningThroughTheBinary(t *testing.T) {
	ctx := context.Background()
	rd, err := localsvc.StartRedis(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Close() })
	admin := redis.NewClient(&redis.Options{Addr: rd.Addr(), DisableIdentity: true})
	t.Cleanup(func() { admin.Close() })
	if err := admin.ConfigSet(ctx, "maxmemory-policy", "allkeys-lru").Err(); err != nil {
		t.Fatal(err)
	}
	f := newFixtureOn(t, env.PostgresURL, rd.URL(), itemsSchema, markerSchema)
	incrRules := f.rules(evictionIncrRules)
	const warning = "warning: maxmemory-policy allkeys-lru lets Redis evict the version keys that rules increment"
	const fixes = "fix: a volatile-* policy (such as volatile-lru) with version keys kept without a TTL, or version = [...] instead of incr in the rules"

	out := checkOutput(t, "--config", incrRules, "--postgres", f.dbURL, "--redis", rd.URL())
	for _, want := range []string{"redis " + rd.Addr() + ": " + warning + " (" + f.key("version:items") + ")", fixes} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}

	// run warns once Redis answers, and streams all the same.
	p := f.startProcess(incrRules)
	f.waitSlotActive("pg_invalidator", nil)
	f.cache("item:1")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
	f.waitGone("item:1")
	for _, want := range []string{"level=WARN", strings.TrimPrefix(warning, "warning: "), "policy=allkeys-lru", "addr=" + rd.Addr()} {
		if !strings.Contains(p.stderr.String(), want) {
			t.Errorf("run's log lacks %q:\n%s", want, p.stderr)
		}
	}

	// Version keys only: check does not talk to Redis at all, reachable or not.
	out = checkOutput(t, "--config", f.rules(evictionVersionRules), "--postgres", f.dbURL, "--redis", "redis://127.0.0.1:1/0")
	if strings.Contains(out, "redis") {
		t.Errorf("check with version keys only mentions redis:\n%s", out)
	}

	// A volatile policy is fine.
	if err := admin.ConfigSet(ctx, "maxmemory-policy", "volatile-lru").Err(); err != nil {
		t.Fatal(err)
	}
	out = checkOutput(t, "--config", incrRules, "--postgres", f.dbURL, "--redis", rd.URL())
	if want := "redis " + rd.Addr() + ": ok: maxmemory-policy volatile-lru"; !strings.Contains(out, want) || strings.Contains(out, "warning") {
		t.Errorf("check output lacks %q, or warns:\n%s", want, out)
	}

	// An ACL user without CONFIG: the policy cannot be read.
	if err := admin.Do(ctx, "acl", "setuser", "noconfig", "on", ">pw", "~*", "+@all", "-config").Err(); err != nil {
		t.Fatal(err)
	}
	out = checkOutput(t, "--config", incrRules, "--postgres", f.dbURL, "--redis", "redis://noconfig:pw@"+rd.Addr()+"/0")
	for _, want := range []string{"warning: could not read maxmemory-policy (CONFIG GET maxmemory-policy: NOPERM", fixes} {
		if !strings.Contains(out, want) {
			t.Errorf("check as a user without CONFIG lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, ":pw@") {
		t.Errorf("check printed the password:\n%s", out)
	}

	// Redis down: check warns that it could not read the policy, and passes.
	start := time.Now()
	out = checkOutput(t, "--config", incrRules, "--postgres", f.dbURL, "--redis", "redis://127.0.0.1:1/0")
	if want := "warning: could not read maxmemory-policy"; !strings.Contains(out, want) {
		t.Errorf("check with Redis down lacks %q:\n%s", want, out)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("check took %s with Redis down", d)
	}

	// No Redis URL at all: check says the eviction policy was not checked.
	cmd := exec.Command(daemonBinary(t), "check", "--config", incrRules, "--postgres", f.dbURL)
	cmd.Env = append(cmd.Environ(), "REDIS_URL=")
	b, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) || err != nil {
		t.Fatalf("check without a Redis URL: %v\n%s", err, b)
	}
	if want := "redis: warning: maxmemory-policy not checked: no Redis URL"; !strings.Contains(string(b), want) {
		t.Errorf("check without a Redis URL lacks %q:\n%s", want, b)
	}
	_ = p
}
