package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

// dropSlot drops slot, ending whichever walsender streams from it first,
// and retrying while a daemon takes it back.
func (f *fixture) dropSlot(slot string) {
	f.t.Helper()
	waitFor(f.t, 20*time.Second, func() bool {
		f.db.Exec(context.Background(), "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL", slot)
		_, err := f.db.Exec(context.Background(), "SELECT pg_drop_replication_slot($1)", slot)
		return err == nil
	}, func() string { return "could not drop the slot" })
}

func (f *fixture) slotExists(slot string) bool {
	f.t.Helper()
	var n int
	if err := f.db.QueryRow(context.Background(), "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&n); err != nil {
		f.t.Fatal(err)
	}
	return n == 1
}

// runDaemon runs the daemon in-process with its own log, without asking
// it to succeed; stop ends it and returns what Run returned.
type runDaemon struct {
	logs *testenv.SyncBuffer
	done chan error
	stop func() error
}

func (f *fixture) runDaemon(cfg daemon.Config) *runDaemon {
	f.t.Helper()
	r := &runDaemon{logs: &testenv.SyncBuffer{}, done: make(chan error, 1)}
	cfg.Logger = teeLogger(f.t, r.logs)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { r.done <- daemon.Run(ctx, cfg) }()
	var err error
	stopped := false
	r.stop = func() error {
		if !stopped {
			cancel()
			err, stopped = <-r.done, true
		}
		return err
	}
	f.t.Cleanup(func() { r.stop() })
	return r
}

// exit waits for the daemon to stop on its own and returns what Run
// returned.
func (r *runDaemon) exit(t *testing.T, name string) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- err // for stop
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("the %s kept running after its slot was lost; it logged:\n%s", name, r.logs)
		return nil
	}
}

// activeAndStandby starts two daemons on one slot and waits until the
// first streams and the second stands by, having found the slot busy.
func (f *fixture) activeAndStandby(cfg daemon.Config) (active, standby *runDaemon) {
	f.t.Helper()
	active = f.runDaemon(cfg)
	f.waitSlotActive("pg_invalidator", active.done)
	standby = f.runDaemon(cfg)
	waitFor(f.t, 30*time.Second, func() bool { return strings.Contains(standby.logs.String(), "standing by") },
		func() string { return "the second daemon never stood by; it logged:\n" + standby.logs.String() })
	return active, standby
}

// TestStandbySeesTheSlotLost: a standby that found the slot busy has seen
// it exist. When the slot is dropped, it must not take the missing slot for
// a first start: with on_slot_lost = "stop" both daemons stop with the
// lost-slot message, and neither creates a slot.
func TestStandbySeesTheSlotLost(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	cfg := f.config(f.rules(itemsRules))
	cfg.MaxBackoff = 200 * time.Millisecond
	active, standby := f.activeAndStandby(cfg)

	f.dropSlot("pg_invalidator")
	dropped := time.Now()
	for _, d := range []struct {
		name string
		r    *runDaemon
	}{{"active daemon", active}, {"standby", standby}} {
		err := d.r.exit(t, d.name)
		if err == nil || !strings.Contains(err.Error(), "replication slot pg_invalidator disappeared") || !strings.Contains(err.Error(), "--resync") {
			t.Errorf("the %s stopped with %v, want the lost-slot message; it logged:\n%s", d.name, err, d.r.logs)
		}
		t.Logf("the %s stopped %s after the slot was dropped, with: %v", d.name, time.Since(dropped).Round(time.Millisecond), err)
		if strings.Contains(d.r.logs.String(), "replication slot created") && d.name == "standby" {
			t.Errorf("the standby created a slot:\n%s", d.r.logs)
		}
	}
	if f.slotExists("pg_invalidator") {
		t.Fatal("a daemon recreated the lost slot")
	}
}

// TestStandbyResyncsOnce: with on_slot_lost = "resync", whichever daemon
// finds the slot lost first recreates it and flushes, once; the other goes
// on standing by, or streaming, without a second flush.
func TestStandbyResyncsOnce(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	cfg := f.config(f.rules(resyncRules))
	cfg.MaxBackoff = 200 * time.Millisecond
	cfg.Resync = true
	active, standby := f.activeAndStandby(cfg)
	f.cacheForResync()

	resyncs := func() int {
		return strings.Count(active.logs.String(), "resync: every key the rules can render was flushed") +
			strings.Count(standby.logs.String(), "resync: every key the rules can render was flushed")
	}
	atStart := resyncs() // with resync, a first start flushes too
	f.dropSlot("pg_invalidator")
	dropped := time.Now()
	waitFor(t, 30*time.Second, func() bool { return resyncs() > atStart }, func() string {
		return "no daemon resynced; they logged:\n" + active.logs.String() + "\n" + standby.logs.String()
	})
	f.waitSlotActive("pg_invalidator", nil)
	t.Logf("the slot was dropped; %s later it was recreated, the keys flushed, and a daemon streamed from it", time.Since(dropped).Round(time.Millisecond))
	for _, k := range []string{"item:1", "item:2000", "items:cat:3"} {
		if f.exists(k) {
			t.Errorf("%s is still cached after the resync", k)
		}
	}
	// The flush incremented version:items once; the write below once more.
	f.cache("item:7")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 7")
	f.waitGone("item:7")
	f.sync()
	if got := f.get("version:items"); got != "7" {
		t.Errorf("version:items = %q, want 7: 5, plus one flush, plus one write", got)
	}
	if n := resyncs() - atStart; n != 1 {
		t.Errorf("%d resyncs after the slot was lost, want 1; the daemons logged:\n%s\n%s", n, active.logs, standby.logs)
	}
	for name, r := range map[string]*runDaemon{"active daemon": active, "standby": standby} {
		select {
		case err := <-r.done:
			t.Errorf("the %s stopped: %v", name, err)
		default:
		}
	}
}

// TestRestartedProcessFindsTheSlotLost: a process started after the slot
// was lost has never seen it, but Redis remembers it: without the slot,
// the new process stops with the lost-slot message (on_slot_lost = "stop")
// or resyncs ("resync"), and never takes it for a first start. A Redis
// that forgot it (emptied) holds nothing stale: that is a first start.
func TestRestartedProcessFindsTheSlotLost(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	cfg := f.config(f.rules(resyncRules))
	cfg.MaxBackoff = 200 * time.Millisecond
	first := f.runDaemon(cfg)
	f.waitSlotActive("pg_invalidator", first.done)
	if err := first.stop(); err != nil {
		t.Fatal(err)
	}
	marker := f.markers().slot
	if n := f.rdb.Exists(context.Background(), marker).Val(); n != 1 {
		t.Fatalf("no marker %s in Redis after the daemon streamed", marker)
	}

	// The slot is lost while no daemon runs; a fresh process starts.
	f.dropSlot("pg_invalidator")
	started := time.Now()
	err := f.runDaemon(cfg).exit(t, "restarted daemon")
	t.Logf("the restarted daemon stopped %s after it started", time.Since(started).Round(time.Millisecond))
	if err == nil || !strings.Contains(err.Error(), "Redis remembers that it existed") || !strings.Contains(err.Error(), "--resync") {
		t.Fatalf("the restarted daemon stopped with %v, want the lost-slot message", err)
	}
	t.Logf("the restarted daemon stopped with: %v", err)
	if f.slotExists("pg_invalidator") {
		t.Fatal("the restarted daemon created the slot")
	}

	// With resync, it recreates the slot and flushes.
	f.cacheForResync()
	cfg.Resync = true
	started = time.Now()
	r := f.runDaemon(cfg)
	f.waitSlotActive("pg_invalidator", r.done)
	waitFor(t, 20*time.Second, func() bool { return strings.Contains(r.logs.String(), "Redis remembers that it existed") },
		func() string { return "no resync logged with the marker as its reason:\n" + r.logs.String() })
	f.waitGone("item:1", "item:2000", "items:cat:3")
	t.Logf("with resync, the restarted daemon flushed and streamed %s after it started", time.Since(started).Round(time.Millisecond))
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}

	// A Redis that lost the marker (emptied) is a first start.
	f.dropSlot("pg_invalidator")
	if err := f.rdb.Del(context.Background(), marker).Err(); err != nil {
		t.Fatal(err)
	}
	cfg.Resync = false
	r = f.runDaemon(cfg)
	f.waitSlotActive("pg_invalidator", r.done)
	if !strings.Contains(r.logs.String(), "replication slot created") {
		t.Errorf("without the marker, the daemon did not start afresh:\n%s", r.logs)
	}
	f.cache("item:9")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 9")
	f.waitGone("item:9")
}
