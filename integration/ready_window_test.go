package integration

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
)

// TestReadyWindowFlagThroughTheBinary checks that run --ready-window sets how
// long Redis may stay silent before /readyz says 503: with 1s, a Redis that
// is stopped (and stays stopped) turns /readyz within seconds, where the
// default window would take 30.
func TestReadyWindowFlagThroughTheBinary(t *testing.T) {
	rd, err := localsvc.StartRedis(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Close() })
	f := newFixtureOn(t, env.PostgresURL, rd.URL(), itemsSchema, markerSchema)
	addr := metricsAddr(t)
	const window = time.Second
	f.startProcess(f.rules(itemsRules), "--metrics-addr", addr, "--ready-window", window.String())
	waitStatus(t, addr, "/readyz", http.StatusOK, 30*time.Second)

	if err := rd.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	body := waitStatus(t, addr, "/readyz", http.StatusServiceUnavailable, 10*time.Second)
	if took := time.Since(stopped); took > window+3*time.Second {
		t.Errorf("/readyz turned 503 %s after Redis stopped; want within about --ready-window (%s)", took, window)
	}
	if !strings.HasPrefix(body, "redis has not answered for ") {
		t.Errorf("/readyz body = %q, want the reason: redis has not answered for ...", body)
	}
}
