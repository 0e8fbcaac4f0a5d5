package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
)

// metricsAddr returns a free loopback address for the daemon's endpoints.
func metricsAddr(t *testing.T) string {
	t.Helper()
	port, err := localsvc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", port)
}

// httpGet returns the status code and body of http://addr/path.
func httpGet(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// waitStatus waits until GET path answers code and returns the body.
func waitStatus(t *testing.T, addr, path string, code int, timeout time.Duration) string {
	t.Helper()
	var gotCode int
	var body string
	waitFor(t, timeout, func() bool {
		gotCode, body = httpGet(t, addr, path)
		return gotCode == code
	}, func() string { return fmt.Sprintf("GET %s = %d %q, want %d", path, gotCode, body, code) })
	return body
}

// scrape returns every sample of /metrics by series, exactly as the text
// format writes it: name{label="value",...} with the labels sorted.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	code, body := httpGet(t, addr, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics = %d %q", code, body)
	}
	samples := make(map[string]float64)
	for line := range strings.Lines(body) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		samples[line[:i]] = v
	}
	return samples
}

// atLeast checks that each series is present and at least its minimum.
func atLeast(t *testing.T, samples map[string]float64, want map[string]float64) {
	t.Helper()
	for series, min := range want {
		got, ok := samples[series]
		switch {
		case !ok:
			t.Errorf("/metrics has no %s", series)
		case got < min:
			t.Errorf("%s = %v, want >= %v", series, got, min)
		}
	}
}

func TestMetricsCountWhatTheDaemonDid(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	cfg := f.config(f.rules(itemsRules))
	cfg.MetricsAddr = metricsAddr(t)
	cfg.SlotPollInterval = 100 * time.Millisecond
	f.startConfig(cfg)
	addr := cfg.MetricsAddr

	waitStatus(t, addr, "/readyz", http.StatusOK, 10*time.Second)
	if code, body := httpGet(t, addr, "/healthz"); code != http.StatusOK {
		t.Errorf("GET /healthz = %d %q, want 200", code, body)
	}

	f.cache("item:1", "item:2", "items:cat:1", "items:cat:2")
	f.exec("UPDATE items SET v = v + 1 WHERE id IN (1, 2)")
	f.exec("INSERT INTO items (id, cat) VALUES (5001, NULL)")
	f.waitGone("item:1", "item:2", "items:cat:1", "items:cat:2")
	f.sync()

	// The slot is polled apart from the stream; give it a few polls.
	waitFor(t, 10*time.Second, func() bool {
		return scrape(t, addr)[`pg_invalidator_slot_wal_status{status="reserved"}`] == 1
	}, func() string {
		var lines []string
		for k, v := range scrape(t, addr) {
			if strings.HasPrefix(k, "pg_invalidator_slot_") {
				lines = append(lines, fmt.Sprintf("%s %v", k, v))
			}
		}
		return fmt.Sprintf("slot wal_status not reserved: %v", lines)
	})

	// sync sees the marker's key go when its row arrives; its commit may
	// come in the stream's next read.
	waitFor(t, 10*time.Second, func() bool { return scrape(t, addr)[`pg_invalidator_transactions_total`] >= 3 },
		func() string { return "the marker's commit was not counted" })
	s := scrape(t, addr)
	atLeast(t, s, map[string]float64{
		`pg_invalidator_transactions_total`:                                   3,
		`pg_invalidator_row_changes_total{op="update",table="public.items"}`:  2,
		`pg_invalidator_row_changes_total{op="insert",table="public.items"}`:  1,
		`pg_invalidator_row_changes_total{op="insert",table="public.marker"}`: 1,
		`pg_invalidator_keys_rendered_total{action="del"}`:                    5,
		`pg_invalidator_keys_skipped_total{reason="null"}`:                    1,
		`pg_invalidator_commands_total{action="del",target="default"}`:        5,
		`pg_invalidator_target_up{target="default"}`:                          1,
		`pg_invalidator_commit_to_applied_seconds_count`:                      3,
		`pg_invalidator_batch_commands_count`:                                 1,
		`pg_invalidator_acknowledged_lsn`:                                     1,
		`pg_invalidator_streaming`:                                            1,
		`go_goroutines`:                                                       1,
		`process_resident_memory_bytes`:                                       1,
	})
	for series, want := range map[string]float64{
		`pg_invalidator_commands_total{action="incr",target="default"}`: 0,
		`pg_invalidator_redis_errors_total{target="default"}`:           0,
		`pg_invalidator_reconnects_total`:                               0,
		`pg_invalidator_replication_lag_seconds`:                        0, // everything committed is applied
	} {
		if got, ok := s[series]; !ok || got != want {
			t.Errorf("%s = %v (present: %v), want %v", series, got, ok, want)
		}
	}
	// The slot first: the daemon may acknowledge a keepalive in between.
	if slot := f.slotLSN("pg_invalidator"); scrape(t, addr)[`pg_invalidator_acknowledged_lsn`] < float64(slot) {
		acked := scrape(t, addr)[`pg_invalidator_acknowledged_lsn`]
		t.Errorf("acknowledged_lsn = %v, behind the slot's confirmed_flush_lsn %d", acked, slot)
	}
}

func TestMetricsReadyzFollowsRedis(t *testing.T) {
	rd, err := localsvc.StartRedis(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Close() })
	f := newFixtureOn(t, env.PostgresURL, rd.URL(), itemsSchema, markerSchema)
	cfg := f.config(f.rules(itemsRules))
	cfg.MetricsAddr = metricsAddr(t)
	cfg.ReadyRedisWithin = time.Second
	f.startConfig(cfg)
	addr := cfg.MetricsAddr

	waitStatus(t, addr, "/readyz", http.StatusOK, 10*time.Second)
	if err := rd.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	body := waitStatus(t, addr, "/readyz", http.StatusServiceUnavailable, 10*time.Second)
	if took := time.Since(stopped); took > cfg.ReadyRedisWithin+2*time.Second {
		t.Errorf("/readyz turned 503 %s after Redis stopped; want within about ReadyRedisWithin (%s)", took, cfg.ReadyRedisWithin)
	}
	if !strings.HasPrefix(body, "redis has not answered for ") {
		t.Errorf("/readyz body = %q, want the reason: redis has not answered for ...", body)
	}
	if code, _ := httpGet(t, addr, "/healthz"); code != http.StatusOK {
		t.Errorf("GET /healthz with Redis down = %d, want 200: the process is alive", code)
	}
	if s := scrape(t, addr); s["pg_invalidator_streaming"] != 1 {
		t.Errorf("pg_invalidator_streaming = %v with Redis down, want 1", s["pg_invalidator_streaming"])
	}

	if err := rd.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, addr, "/readyz", http.StatusOK, 10*time.Second)
}

func TestMetricsFlagThroughTheBinary(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	addr := metricsAddr(t)
	f.startProcess(f.rules(itemsRules), "--metrics-addr", addr)
	waitStatus(t, addr, "/readyz", http.StatusOK, 30*time.Second)

	f.cache("item:7")
	f.exec("DELETE FROM items WHERE id = 7")
	f.waitGone("item:7")
	atLeast(t, scrape(t, addr), map[string]float64{
		`pg_invalidator_row_changes_total{op="delete",table="public.items"}`: 1,
		`pg_invalidator_commands_total{action="del",target="default"}`:       1,
		`pg_invalidator_streaming`:                                           1,
	})
}
