package integration

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
)

// refusingRedis is a private Redis whose admin connection can make it
// refuse or block the daemon's writes while it still answers PING, and the
// daemon running against it as user pginv.
type refusingRedis struct {
	f     *fixture
	admin *redis.Client
	addr  string // the daemon's /metrics and /readyz
}

// startRefusingRedis starts a private Redis with a user pginv that may do
// everything, and the daemon on rules as that user, with a readiness
// window of window, and waits until it is ready.
func startRefusingRedis(t *testing.T, rules string, window time.Duration) *refusingRedis {
	t.Helper()
	return startRefusingRedisWith(t, rules, window, func(*daemon.Config) {})
}

// startRefusingRedisWith is startRefusingRedis with the daemon's
// configuration changed by change before it starts.
func startRefusingRedisWith(t *testing.T, rules string, window time.Duration, change func(*daemon.Config)) *refusingRedis {
	t.Helper()
	ctx := context.Background()
	rd, err := localsvc.StartRedis(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Close() })
	admin := redis.NewClient(&redis.Options{Addr: rd.Addr(), DisableIdentity: true})
	t.Cleanup(func() { admin.Close() })
	if err := admin.Do(ctx, "ACL", "SETUSER", "pginv", "on", ">pginv-pw", "~*", "&*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	f := newFixtureOn(t, env.PostgresURL, rd.URL(), itemsSchema, markerSchema)
	cfg := f.config(f.rules(rules))
	cfg.Targets = []daemon.Target{{Name: daemon.DefaultTarget, Redis: invalidator.Options{URL: rd.URL(), Username: "pginv", Password: "pginv-pw"}}}
	cfg.MetricsAddr = metricsAddr(t)
	cfg.ReadyRedisWithin = window
	change(&cfg)
	f.startConfig(cfg)
	waitStatus(t, cfg.MetricsAddr, "/readyz", http.StatusOK, 30*time.Second)
	return &refusingRedis{f: f, admin: admin, addr: cfg.MetricsAddr}
}

func (r *refusingRedis) do(args ...any) {
	r.f.t.Helper()
	if err := r.admin.Do(context.Background(), args...).Err(); err != nil {
		r.f.t.Fatalf("%v: %v", args, err)
	}
}

// waitReason waits until /readyz answers 503 with a line that holds every
// one of parts, and returns the body.
func waitReason(t *testing.T, addr string, timeout time.Duration, parts ...string) string {
	t.Helper()
	var code int
	var body string
	waitFor(t, timeout, func() bool {
		code, body = httpGet(t, addr, "/readyz")
		if code != http.StatusServiceUnavailable {
			return false
		}
	lines:
		for line := range strings.Lines(body) {
			for _, p := range parts {
				if !strings.Contains(line, p) {
					continue lines
				}
			}
			return true
		}
		return false
	}, func() string {
		return fmt.Sprintf("/readyz = %d %q, want 503 with a line holding %q", code, body, parts)
	})
	return body
}

// TestReadyzFollowsApplying makes a Redis refuse or block the daemon's
// writes while it answers PING, as CLIENT PAUSE WRITE, an ACL that lost a
// command (NOPERM), a server turned replica (READONLY) and maxmemory with
// noeviction (OOM) do: /readyz must go
// 503 within the window and say why, invalidation must wait (the key stays
// cached, the position is not acknowledged), and once Redis takes writes
// again the key goes and /readyz is 200.
func TestReadyzFollowsApplying(t *testing.T) {
	const incrRules = `
[[rule]]
table = "items"
incr = ["{p}item:<id>"]
` + markerRule
	tests := []struct {
		name    string
		rules   string
		block   []any
		unblock []any
		why     string // in the reason, after "redis has applied nothing for"
		before  string // item:1 before the DELETE ("": absent)
		after   string // item:1 once Redis takes writes again ("": gone)
	}{
		// UNLINK blocks until the pause ends; go-redis's read times out.
		{"client pause write", itemsRules, []any{"CLIENT", "PAUSE", 600000, "WRITE"}, []any{"CLIENT", "UNPAUSE"}, "i/o timeout", "cached", ""},
		{"noperm", itemsRules, []any{"ACL", "SETUSER", "pginv", "-unlink"}, []any{"ACL", "SETUSER", "pginv", "+unlink"}, "NOPERM", "cached", ""},
		// A replica of a master that never answers keeps its data and refuses writes.
		{"readonly", itemsRules, []any{"REPLICAOF", "127.0.0.1", "1"}, []any{"REPLICAOF", "NO", "ONE"}, "READONLY", "cached", ""},
		// UNLINK may run under OOM (it frees memory); INCR may not.
		{"oom", incrRules, []any{"CONFIG", "SET", "maxmemory", "1"}, []any{"CONFIG", "SET", "maxmemory", "0"}, "OOM", "", "1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := startRefusingRedis(t, tt.rules, 2*time.Second)
			f := r.f
			if tt.before != "" {
				f.cache("item:1")
			}
			r.do(tt.block...)
			blocked := time.Now()
			f.exec("DELETE FROM items WHERE id = 1")
			body := waitReason(t, r.addr, 60*time.Second, "redis has applied nothing for ", tt.why)
			t.Logf("/readyz 503 after %s: %q", time.Since(blocked).Round(time.Millisecond), body)
			if got := f.get("item:1"); got != tt.before {
				t.Errorf("item:1 = %q while Redis refuses writes, want it still %q", got, tt.before)
			}
			r.do(tt.unblock...)
			unblocked := time.Now()
			if tt.after == "" {
				f.waitGone("item:1")
			} else {
				f.waitValue("item:1", tt.after)
			}
			waitStatus(t, r.addr, "/readyz", http.StatusOK, 60*time.Second)
			t.Logf("/readyz 200 again %s after Redis took writes", time.Since(unblocked).Round(time.Millisecond))
		})
	}
}

// TestReadyzOOMDeletesGoOn checks that a Redis out of memory under
// noeviction still runs the daemon's UNLINK: a del rule keeps
// invalidating, and /readyz stays 200.
func TestReadyzOOMDeletesGoOn(t *testing.T) {
	r := startRefusingRedis(t, itemsRules, 2*time.Second)
	f := r.f
	f.cache("item:1", "marker")
	r.do("CONFIG", "SET", "maxmemory", "1")
	f.exec("DELETE FROM items WHERE id = 1")
	f.waitGone("item:1")
	f.exec("INSERT INTO marker DEFAULT VALUES")
	f.waitGone("marker")
	time.Sleep(3 * time.Second) // past the window
	if code, body := httpGet(t, r.addr, "/readyz"); code != http.StatusOK {
		t.Errorf("/readyz = %d %q with Redis out of memory and only deletes to run, want 200", code, body)
	}
	r.do("CONFIG", "SET", "maxmemory", "0")
}
