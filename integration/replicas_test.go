package integration

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
	"github.com/pg-invalidator/pg-invalidator/internal/raceload"
)

// startStandby starts a standby of pg, named name in its
// pg_stat_replication, with extra settings, and stops it when the test
// ends.
func startStandby(t *testing.T, pg *localsvc.Postgres, name string, settings ...string) *localsvc.Postgres {
	t.Helper()
	sb, err := localsvc.StartStandby(context.Background(), pg, localsvc.StandbyOptions{Name: name, Settings: settings})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Close() })
	return sb
}

// onServer returns dbURL, a database's URL, pointed at server's host and
// port instead: the same database on a standby.
func onServer(t *testing.T, dbURL string, server *localsvc.Postgres) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = fmt.Sprintf("127.0.0.1:%d", server.Port)
	return u.String()
}

// waitReplayed waits until the standby at readURL has replayed everything
// the primary of f has written so far.
func (f *fixture) waitReplayed(readURL string) {
	f.t.Helper()
	end := f.walLSN()
	var got uint64
	waitFor(f.t, 60*time.Second, func() bool {
		conn, err := pgx.Connect(context.Background(), readURL)
		if err != nil {
			return false
		}
		defer conn.Close(context.Background())
		return conn.QueryRow(context.Background(), "SELECT pg_last_wal_replay_lsn() - '0/0'").Scan(&got) == nil && got >= end
	}, func() string { return fmt.Sprintf("standby replayed %s, want %s", lsnText(got), lsnText(end)) })
}

// TestReplicaGate forces the replica race on 5 rows against a real
// standby that replays 3s late (long enough for a loaded machine): a
// reader waits for the daemon's delete,
// then reads the row from the standby and caches it. Without replicas the
// standby still has the old row, so each entry ends stale; with replicas
// = ["standby1"] the delete waits until the standby replayed the update,
// and none is.
func TestReplicaGate(t *testing.T) {
	pg := startPostgres(t)
	sb := startStandby(t, pg, "standby1", "recovery_min_apply_delay=3s")
	for _, gate := range []bool{false, true} {
		t.Run(fmt.Sprintf("replicas=%v", gate), func(t *testing.T) {
			f := newFixtureOn(t, pg.URL(), env.RedisURL, raceload.Schema(20), markerSchema)
			readURL := onServer(t, f.dbURL, sb)
			f.waitReplayed(readURL)
			cfg := f.config(f.rules(raceRules("")))
			cfg.MetricsAddr = metricsAddr(t)
			if gate {
				cfg.Replicas, cfg.ReplicaTimeout = []string{"standby1"}, 30*time.Second
			}
			f.startConfig(cfg)

			ctx := context.Background()
			if err := raceload.Forced(ctx, f.dbURL, readURL, f.rdb, f.prefix, 5, false); err != nil {
				t.Fatal(err)
			}
			f.sync()
			f.waitReplayed(readURL)
			stale, cached, err := raceload.Stale(ctx, f.dbURL, f.rdb, f.prefix)
			if err != nil {
				t.Fatal(err)
			}
			m := scrape(t, cfg.MetricsAddr)
			t.Logf("replicas %v: %d of %d cached entries stale; batches waited for the standby: %v, for %.3fs in all",
				gate, stale, cached, m["pg_invalidator_replica_wait_seconds_count"], m["pg_invalidator_replica_wait_seconds_sum"])
			switch {
			case !gate && stale < 5:
				t.Errorf("without replicas: %d stale entries, want at least the 5 forced ones", stale)
			case gate && stale != 0:
				t.Errorf("with replicas: %d stale entries, want 0", stale)
			case gate && m[`pg_invalidator_replica_timeouts_total{standby="standby1"}`] != 0:
				t.Error("the standby was given up on")
			}
		})
	}
}

// TestReplicaTimeout names a standby that replays 20s late and one that
// does not exist, with replica_timeout = 1s: check warns of the one that
// does not exist, naming the one that does; invalidation goes on without
// them (a key is gone while the standby still has the old row), each is
// logged and counted once, and /readyz stays 200 and names them.
func TestReplicaTimeout(t *testing.T) {
	pg := startPostgres(t)
	sb := startStandby(t, pg, "standby1", "recovery_min_apply_delay=20s")
	f := newFixtureOn(t, pg.URL(), env.RedisURL, raceload.Schema(5), markerSchema)
	readURL := onServer(t, f.dbURL, sb)
	waitFor(t, 60*time.Second, func() bool {
		conn, err := pgx.Connect(context.Background(), readURL)
		if err == nil {
			conn.Close(context.Background())
		}
		return err == nil
	}, func() string { return "the test database did not reach the standby" })
	rules := f.rules("[postgres]\nreplicas = [\"standby1\", \"ghost\"]\nreplica_timeout = \"1s\"\n" + raceRules(""))
	stdout, stderr, code := runCLI(t, "check", "--config", rules, "--postgres", f.dbURL)
	for _, want := range []string{
		"standby standby1: ok: invalidations wait until it has replayed each transaction",
		"warning: standby ghost: not in the primary's pg_stat_replication, whose standbys are named standby1; invalidations will wait for it up to replica_timeout, then go on without it until it catches up",
	} {
		if code != 0 || !hasLine(stdout, want) {
			t.Errorf("check: exit %d, stdout lacks the line\n%s\nin:\n%s\nstderr:\n%s", code, want, stdout, stderr)
		}
	}
	cfg := f.config(rules) // the rules only: the test sets what the command line would take from [postgres]
	cfg.MetricsAddr = metricsAddr(t)
	cfg.Replicas, cfg.ReplicaTimeout = []string{"standby1", "ghost"}, time.Second
	f.startConfig(cfg)

	for v := 1; v <= 2; v++ {
		key := raceload.Key("", 1)
		f.cache(key)
		start := time.Now()
		f.exec("UPDATE race_items SET v = $1 WHERE id = 1", v)
		f.waitGone(key)
		t.Logf("update %d: key gone %v after the commit (replica_timeout 1s)", v, time.Since(start).Round(time.Millisecond))
		var onStandby int
		conn, err := pgx.Connect(context.Background(), readURL)
		if err != nil {
			t.Fatal(err)
		}
		err = conn.QueryRow(context.Background(), "SELECT v FROM race_items WHERE id = 1").Scan(&onStandby)
		conn.Close(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if onStandby == v {
			t.Fatalf("the standby replayed update %d before the key went: the test proves nothing", v)
		}
	}
	m := scrape(t, cfg.MetricsAddr)
	for _, name := range []string{"standby1", "ghost"} {
		if got := m[fmt.Sprintf(`pg_invalidator_replica_timeouts_total{standby=%q}`, name)]; got != 1 {
			t.Errorf("replica_timeouts_total for %s = %v, want 1", name, got)
		}
		if got := m[fmt.Sprintf(`pg_invalidator_replica_lagging{standby=%q}`, name)]; got != 1 {
			t.Errorf("replica_lagging for %s = %v, want 1", name, got)
		}
	}
	code, body := httpGet(t, cfg.MetricsAddr, "/readyz")
	if code != http.StatusOK || !strings.HasPrefix(body, "ready\n") ||
		!strings.Contains(body, "degraded: standby standby1 is not waited for") || !strings.Contains(body, "degraded: standby ghost is not waited for: it is not in the primary's pg_stat_replication") {
		t.Errorf("/readyz = %d %q, want 200, ready, and a line for each standby", code, body)
	}
}

// TestReplicasNeedPgMonitor checks that setup grants pg_monitor to the
// daemon's role when the rules file names replicas, and that the daemon
// refuses to start as a role that cannot see the standbys' positions,
// saying what to run.
func TestReplicasNeedPgMonitor(t *testing.T) {
	role := newClusterRole(t)
	f := newFixture(t, raceload.Schema(3), markerSchema)
	rules := f.rules("[postgres]\nreplicas = [\"standby1\"]\n" + raceRules(""))
	stdout, stderr, code := runCLI(t, "setup", "--config", rules, "--postgres", f.dbURL, "--role", role, "--apply")
	if code != 0 {
		t.Fatalf("setup --apply: exit %d, stderr:\n%s", code, stderr)
	}
	if want := `GRANT pg_monitor TO "` + role + `";`; !hasLine(stdout, want) {
		t.Errorf("setup output lacks the line\n%s\nin:\n%s", want, stdout)
	}
	if _, stderr, code := runCLI(t, "check", "--config", rules, "--postgres", asRole(t, f.dbURL, role, "any")); code != 0 {
		t.Errorf("check as the role setup made: exit %d, stderr:\n%s", code, stderr)
	}
	f.exec(`REVOKE pg_monitor FROM "` + role + `"`)
	_, stderr, code = runCLI(t, "check", "--config", rules, "--postgres", asRole(t, f.dbURL, role, "any"))
	if want := `GRANT pg_monitor TO "` + role + `"`; code != 1 || !strings.Contains(stderr, want) {
		t.Errorf("check without pg_monitor: exit %d, stderr:\n%s\nwant exit 1 and %s", code, stderr, want)
	}
}
