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
