package integration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// TestFailoverSlotKeepsTheCacheWarm fails PostgreSQL over as a DBA who set
// up slot synchronization would: a primary, a physical standby with
// sync_replication_slots, the primary's synchronized_standby_slots naming
// the standby's slot, and a daemon on a multi-host URL with
// target_session_attrs=read-write. The primary is killed (SIGKILL, never
// restarted) and the standby promoted.
//
//   - The standby was made with pg_basebackup after the primary named its
//     slot in synchronized_standby_slots, so once promoted it names a slot
//     it does not have, and its walsender would send nothing: the daemon
//     stops with a message that says so and how to fix it, instead of
//     waiting in silence.
//   - Once fixed, the daemon streams on from the slot the standby
//     synchronized: the keys of a row changed after the promotion go, and
//     a key no change touched stays (no flush).
//
// Before PostgreSQL 17 there are no failover slots: the test checks that
// the daemon creates its slot there as before, and stops. What follows a
// lost slot is the lost-slot tests' part.
func TestFailoverSlotKeepsTheCacheWarm(t *testing.T) {
	ctx := context.Background()
	primary, err := localsvc.StartPostgres(ctx, localsvc.PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { primary.Close() })
	dbURL := testenv.NewDatabase(t, primary.URL())
	f := newFixtureAt(t, dbURL, env.RedisURL, itemsSchema, markerSchema)
	var version int
	if err := f.db.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		t.Fatal(err)
	}
	if version < 170000 {
		f.startConfig(f.config(f.rules(itemsRules)))
		slot := readSlot(t, dbURL)
		if !slot.Exists || slot.Failover {
			t.Fatalf("PostgreSQL %d: slot %+v, want one without the failover option", version, slot)
		}
		t.Logf("PostgreSQL %d has no failover slots: the slot was created without the option", version/10000)
		return
	}

	// The standby's physical slot, named in synchronized_standby_slots
	// before the base backup, as a DBA would set up the pair.
	testenv.Exec(t, primary.URL(), "SELECT pg_create_physical_replication_slot('standby1')",
		"ALTER SYSTEM SET synchronized_standby_slots = 'standby1'", "SELECT pg_reload_conf()")
	cfgDB, err := pgx.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	standby, err := localsvc.StartStandby(ctx, primary, localsvc.StandbyOptions{Name: "standby1", Settings: []string{
		"primary_slot_name=standby1", "hot_standby_feedback=on", "sync_replication_slots=on",
		// Slot synchronization needs a dbname in primary_conninfo.
		fmt.Sprintf("primary_conninfo=host=127.0.0.1 port=%d user=postgres application_name=standby1 dbname=%s", primary.Port, cfgDB.Database),
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { standby.Close() })
	standbyURL := strings.Replace(dbURL, fmt.Sprintf(":%d/", primary.Port), fmt.Sprintf(":%d/", standby.Port), 1)

	cfg := f.config(f.rules(itemsRules))
	cfg.PostgresURL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/%s?sslmode=disable&target_session_attrs=read-write",
		primary.Port, standby.Port, cfgDB.Database)
	cfg.MaxBackoff = 200 * time.Millisecond
	start := time.Now()
	r := f.startConfig(cfg)
	if slot := readSlot(t, dbURL); !slot.Failover {
		t.Fatalf("slot on the primary: %+v, want the failover option", slot)
	}
	// The standby's copy is usable once it is synced and no longer
	// temporary; the daemon's pg_log_standby_snapshot() hastens it.
	waitFor(t, 60*time.Second, func() bool {
		s := readSlot(t, standbyURL)
		return s.Exists && s.Synced && !s.Temporary
	}, func() string { return fmt.Sprintf("the standby's copy of the slot: %+v", readSlot(t, standbyURL)) })
	t.Logf("the standby held a usable copy of the slot %s after the daemon started", time.Since(start).Round(time.Millisecond))

	f.cache("item:1", "item:7")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
	f.waitGone("item:1")

	if err := primary.Kill(); err != nil { // dead for good
		t.Fatal(err)
	}
	testenv.Exec(t, standbyURL, "SELECT pg_promote()")
	promoted := time.Now()

	// The promoted standby still names standby1, which it does not have.
	var runErr error
	select {
	case runErr = <-r.done:
		r.once.Do(r.cancel) // it has stopped: the cleanup's stop returns nil
	case <-time.After(30 * time.Second):
		t.Fatal("the daemon did not stop on the promoted standby's synchronized_standby_slots within 30 s")
	}
	var cfgErr *daemon.ConfigError
	if !errors.As(runErr, &cfgErr) || !strings.Contains(runErr.Error(), "synchronized_standby_slots") ||
		!strings.Contains(runErr.Error(), "ALTER SYSTEM SET synchronized_standby_slots = ''") {
		t.Fatalf("the daemon stopped with %v, want a ConfigError naming synchronized_standby_slots and its fix", runErr)
	}
	t.Logf("on the promoted standby, the daemon stopped %s after the promotion: %v", time.Since(promoted).Round(time.Millisecond), runErr)

	testenv.Exec(t, standbyURL, "ALTER SYSTEM SET synchronized_standby_slots = ''", "SELECT pg_reload_conf()")
	fixed := time.Now()
	f.dbURL = standbyURL
	f.reconnect()
	f.startConfig(cfg)
	f.cache("item:2")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 2")
	f.waitGone("item:2")
	t.Logf("invalidating again %s after the setting was fixed", time.Since(fixed).Round(time.Millisecond))
	if !f.exists("item:7") {
		t.Error("item:7, which no change touched, is gone: the failover flushed the cache")
	}
}

// readSlot reads the daemon's slot on the server of url.
func readSlot(t *testing.T, url string) replication.SlotInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	s, err := replication.SlotState(ctx, conn, replication.DefaultSlot)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
