package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
)

// slotHolder returns the application_name of the backend streaming from the
// slot, or "" while no one holds it.
func (f *fixture) slotHolder(slot string) string {
	f.t.Helper()
	var name string
	err := f.db.QueryRow(context.Background(), `
SELECT a.application_name
FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid
WHERE s.slot_name = $1`, slot).Scan(&name)
	if err != nil && err != pgx.ErrNoRows {
		f.t.Fatal(err)
	}
	return name
}

// readyz returns the status code and body of GET /readyz.
func readyz(t *testing.T, addr string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// waitReady waits until /readyz on addr answers 200.
func waitReady(t *testing.T, addr string) {
	t.Helper()
	var code int
	var body string
	waitFor(t, 10*time.Second, func() bool { code, body = readyz(t, addr); return code == http.StatusOK },
		func() string { return fmt.Sprintf("%s/readyz = %d %s", addr, code, body) })
}

// TestStandbyTakesOverAfterKill9 runs two daemon processes on one slot: the
// second stands by while the first streams, and takes over, losing nothing,
// when the first is killed with SIGKILL in the middle of a load.
func TestStandbyTakesOverAfterKill9(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	rules := f.rules(itemsRules)
	keys := f.cacheItems(2000)

	// application_name tells the two apart in pg_stat_activity.
	start := func(name string) (*process, string) {
		port, err := localsvc.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		return f.startProcess(rules, "--postgres", withParams(t, f.dbURL, "application_name", name), "--metrics-addr", addr), addr
	}
	active, activeAddr := start("pginv-active")
	waitFor(t, 30*time.Second, func() bool { return f.slotHolder("pg_invalidator") == "pginv-active" },
		func() string { return "the first daemon never held the slot" })
	standby, standbyAddr := start("pginv-standby")
	waitFor(t, 30*time.Second, func() bool { return strings.Contains(standby.stderr.String(), "is active for PID") },
		func() string { return "the standby never found the slot busy; it logged:\n" + standby.stderr.String() })

	// Only the daemon that streams is ready, and only it sends canaries: the
	// standby says it does not stream, and nothing else (no canary of its
	// own is ever out, though the two share the key).
	waitReady(t, activeAddr)
	waitFor(t, 30*time.Second, func() bool { _, ok := canarySeconds(t, activeAddr); return ok },
		func() string { return "the active daemon's canary never came back" })
	if code, body := readyz(t, standbyAddr); code != http.StatusServiceUnavailable || body != "not streaming from postgresql" {
		t.Fatalf("standby /readyz = %d %q, want 503 \"not streaming from postgresql\" alone", code, body)
	}
	if s := scrape(t, standbyAddr); s["pg_invalidator_canary_pending_seconds"] != 0 {
		t.Errorf("standby pg_invalidator_canary_pending_seconds = %v, want 0: a standby sends no canary", s["pg_invalidator_canary_pending_seconds"])
	}

	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); updateItems(t, f.dbURL, 1, 2000) }()
	waitFor(t, 30*time.Second, func() bool { return !f.exists("item:200") }, func() string { return "no progress before the kill" })
	if err := active.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-active.done
	killed := time.Now()

	// PostgreSQL sees the dead connection at once (the kernel closes it), so
	// the slot is free within moments; the standby retries every second.
	var released time.Duration
	waitFor(t, 10*time.Second, func() bool {
		holder := f.slotHolder("pg_invalidator")
		if holder != "pginv-active" && released == 0 {
			released = time.Since(killed)
		}
		return holder == "pginv-standby"
	}, func() string {
		return fmt.Sprintf("the standby did not take the slot within 10s of the kill (holder %q); it logged:\n%s",
			f.slotHolder("pg_invalidator"), standby.stderr)
	})
	t.Logf("slot released %s and taken by the standby %s after the kill",
		released.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))

	wg.Wait()
	f.waitGone(keys...)
	waitReady(t, standbyAddr)
	// It sends a canary as soon as it streams.
	waitFor(t, 30*time.Second, func() bool { _, ok := canarySeconds(t, standbyAddr); return ok },
		func() string { return "the standby's canary never came back after it took over" })

	// Standing by is logged once, not once per attempt.
	if n := strings.Count(standby.stderr.String(), "is active for PID"); n != 1 {
		t.Fatalf("the standby logged the busy slot %d times, want once:\n%s", n, standby.stderr)
	}
	select {
	case <-standby.done:
		t.Fatalf("the standby exited:\n%s", standby.stderr)
	default:
	}
}
