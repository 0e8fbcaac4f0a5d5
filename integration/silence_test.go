package integration

import (
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/pg-invalidator/pg-invalidator/internal/tcpproxy"
	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// proxied starts a tcpproxy in front of the server of dbURL and returns it
// with dbURL rewritten to go through it.
func proxied(t *testing.T, dbURL string) (*tcpproxy.Proxy, string) {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	p, err := tcpproxy.Start(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	u.Host = p.Addr()
	return p, u.String()
}

// teeLogger sends the daemon's logs to the test log and to buf.
func teeLogger(t *testing.T, buf *testenv.SyncBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(io.MultiWriter(testWriter{t}, buf), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// TestSilentPostgresPeer silences every connection between the daemon and
// PostgreSQL without closing any, as a server host that lost power or a
// dropped NAT entry would: nothing arrives and nothing fails. The daemon
// must notice within its [postgres] timeout, reconnect (new connections
// work), and invalidate the writes made meanwhile.
func TestSilentPostgresPeer(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	proxy, viaProxy := proxied(t, f.dbURL)
	logs := &testenv.SyncBuffer{}
	cfg := f.config(f.rules(itemsRules))
	cfg.PostgresURL = viaProxy
	cfg.Timeout = 2 * time.Second
	cfg.MaxBackoff = 500 * time.Millisecond
	cfg.Logger = teeLogger(t, logs)
	f.startConfig(cfg)

	f.cache("item:1")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
	f.waitGone("item:1")

	if n := proxy.Silence(); n == 0 {
		t.Fatal("no connection went through the proxy")
	}
	silenced := time.Now()
	var keys []string
	for i := 2; i <= 101; i++ {
		keys = append(keys, fmt.Sprintf("item:%d", i))
	}
	f.cache(keys...)
	f.exec("UPDATE items SET v = v + 1 WHERE id BETWEEN 2 AND 101") // on a direct connection

	var detected time.Duration
	waitFor(t, 60*time.Second, func() bool {
		if detected == 0 && strings.Contains(logs.String(), "replication connection silent") {
			detected = time.Since(silenced)
		}
		for _, k := range keys {
			if f.exists(k) {
				return false
			}
		}
		return true
	}, func() string {
		return "keys written after the silence are still cached; the daemon logged:\n" + logs.String()
	})
	resumed := time.Since(silenced)
	if n := strings.Count(logs.String(), "replication connection silent"); n != 1 {
		t.Fatalf("the silence was logged %d times, want once:\n%s", n, logs)
	}
	t.Logf("timeout %s: silence noticed after %s, the writes made meanwhile invalidated %s after the silence began",
		cfg.Timeout, detected.Round(time.Millisecond), resumed.Round(time.Millisecond))

	// The new session is a healthy one: later writes are invalidated too.
	f.cache("item:200")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 200")
	f.waitGone("item:200")
}

// TestConnectTimeoutAtStart starts the daemon against a PostgreSQL whose
// new connections are accepted and never answered, as those to a host that
// vanished (its virtual IP not moved yet) look: every connect times out,
// after connect_timeout here. The daemon must wait it out, not stop, and
// stream once connections are answered again.
func TestConnectTimeoutAtStart(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	proxy, viaProxy := proxied(t, f.dbURL)
	proxy.SwallowNew(true)
	logs := &testenv.SyncBuffer{}
	cfg := f.config(f.rules(itemsRules))
	cfg.PostgresURL = withParams(t, viaProxy, "connect_timeout", "1")
	cfg.MaxBackoff = 500 * time.Millisecond
	cfg.Logger = teeLogger(t, logs)
	r := f.startUnready(cfg)

	// Several connects time out meanwhile.
	select {
	case err := <-r.done:
		r.done <- err
		t.Fatalf("the daemon stopped on connect timeouts: %v", err)
	case <-time.After(4 * time.Second):
	}
	if !strings.Contains(logs.String(), "timeout") {
		t.Fatalf("the log says nothing of a timeout:\n%s", logs)
	}

	proxy.SwallowNew(false)
	healed := time.Now()
	f.waitSlotActive(replication.DefaultSlot, r.done)
	f.cache("item:1")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
	f.waitGone("item:1")
	t.Logf("connect_timeout=1: streaming %s after connections were answered again", time.Since(healed).Round(time.Millisecond))
}

// TestSilentPeerThenConnectTimeouts silences the daemon's connections to
// PostgreSQL mid-stream, as a host that lost power does, and swallows the
// new ones for a while, so that every reconnection times out: the daemon
// must keep trying, and invalidate the writes made meanwhile once the host
// answers again.
func TestSilentPeerThenConnectTimeouts(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	proxy, viaProxy := proxied(t, f.dbURL)
	logs := &testenv.SyncBuffer{}
	cfg := f.config(f.rules(itemsRules))
	cfg.PostgresURL = viaProxy
	cfg.Timeout = 2 * time.Second
	cfg.MaxBackoff = 500 * time.Millisecond
	cfg.Logger = teeLogger(t, logs)
	r := f.startConfig(cfg)
	f.cache("item:1")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
	f.waitGone("item:1")

	proxy.SwallowNew(true)
	proxy.Silence()
	f.cache("item:2")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 2") // on a direct connection
	// The silence is noticed after 2s; reconnections time out after 2s each.
	waitFor(t, 30*time.Second, func() bool {
		return strings.Contains(logs.String(), "replication connection silent")
	}, func() string { return "the silence was not noticed:\n" + logs.String() })
	select {
	case err := <-r.done:
		r.done <- err
		t.Fatalf("the daemon stopped while reconnections timed out: %v", err)
	case <-time.After(5 * time.Second):
	}

	proxy.SwallowNew(false)
	healed := time.Now()
	f.waitGoneWithin(30*time.Second, "item:2")
	t.Logf("item:2 invalidated %s after connections were answered again", time.Since(healed).Round(time.Millisecond))
	f.cache("item:3")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 3")
	f.waitGone("item:3")
}

// TestSilentPostgresPeerWhileGated: the same silence while a batch waits in
// the standby gate (replicas, a standby that replays 1 s late): the
// gate's own connection to the primary is silent too, and a session that
// cannot leave its wait cannot notice the silence.
func TestSilentPostgresPeerWhileGated(t *testing.T) {
	pg := startPostgres(t)
	startStandby(t, pg, "standby1", "recovery_min_apply_delay=1s")
	f := newFixtureOn(t, pg.URL(), env.RedisURL, itemsSchema, markerSchema)
	proxy, viaProxy := proxied(t, f.dbURL)
	logs := &testenv.SyncBuffer{}
	cfg := f.config(f.rules(itemsRules))
	cfg.PostgresURL = viaProxy
	cfg.Timeout = 2 * time.Second
	cfg.MaxBackoff = 500 * time.Millisecond
	cfg.Replicas = []string{"standby1"}
	cfg.ReplicaTimeout = 20 * time.Second
	cfg.Logger = teeLogger(t, logs)
	f.startConfig(cfg)
	f.sync()

	f.cache("item:1")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
	time.Sleep(300 * time.Millisecond) // its batch waits for the standby, 1 s late
	if n := proxy.Silence(); n == 0 {
		t.Fatal("no connection went through the proxy")
	}
	silenced := time.Now()
	f.cache("item:2")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 2") // on a direct connection
	waitFor(t, 60*time.Second, func() bool { return !f.exists("item:2") }, func() string {
		return "item:2, written after the silence, is still cached; the daemon logged:\n" + logs.String()
	})
	resumed := time.Since(silenced)
	t.Logf("timeout %s, replica_timeout %s: the write made after the silence began invalidated %s after it",
		cfg.Timeout, cfg.ReplicaTimeout, resumed.Round(time.Millisecond))
	if resumed > cfg.Timeout+5*time.Second {
		t.Errorf("invalidation resumed %s after the silence began, want within the timeout (%s) and a reconnection: the gate's wait held the session",
			resumed.Round(time.Millisecond), cfg.Timeout)
	}
}
