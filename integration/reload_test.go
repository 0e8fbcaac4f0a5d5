package integration

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
	"github.com/pg-invalidator/pg-invalidator/mapping"
)

const twoTablesSchema = `
CREATE TABLE items (id bigint PRIMARY KEY, cat int, v int NOT NULL DEFAULT 0);
ALTER TABLE items REPLICA IDENTITY FULL;
CREATE TABLE tags (id bigint PRIMARY KEY, name text);
INSERT INTO items (id, cat) SELECT g, g % 10 FROM generate_series(1, 10) g;
`

// TestReloadSwapsRules reloads a file with a rule for a new table and
// changed templates, then an invalid file. The new table joins the
// publication only once the new rules are in force, so its first write is
// invalidated (before, a change committed between the two was mapped with
// the old rules, which know nothing of the table, and acknowledged). The
// invalid file changes nothing.
func TestReloadSwapsRules(t *testing.T) {
	f := newFixture(t, twoTablesSchema, markerSchema)
	path := f.rules(itemsRules)
	cfg := f.config(path)
	logs := &testenv.SyncBuffer{}
	cfg.Logger = teeLogger(t, logs)
	reload := make(chan struct{}, 1)
	cfg.Reload = reload
	cfg.LoadRules = func() (*mapping.Rules, error) { return loadRules(path) }
	f.startConfig(cfg)

	// A valid new file: a rule for tags, and items keys renamed.
	os.WriteFile(path, []byte(strings.ReplaceAll(`
[[rule]]
table = "items"
del = ["{p}item2:<id>"]

[[rule]]
table = "tags"
del = ["{p}tag:<id>"]
`+markerRule, "{p}", f.prefix)), 0o644)
	reloaded := time.Now()
	reload <- struct{}{}
	waitFor(t, 20*time.Second, func() bool { return strings.Contains(logs.String(), "tables added to publication") },
		func() string { return "tags never joined the publication; the daemon logged:\n" + logs.String() })
	if inForce, added := strings.Index(logs.String(), "reloaded rules in force"), strings.Index(logs.String(), "tables added to publication"); inForce < 0 || inForce > added {
		t.Fatalf("tags joined the publication before the rules for it were in force:\n%s", logs)
	}
	f.cache("tag:1")
	f.exec("INSERT INTO tags VALUES (1, 'x')")
	f.waitGone("tag:1")
	t.Logf("the reload's rules were in force, its table in the publication and its first write invalidated %s after the reload",
		time.Since(reloaded).Round(time.Millisecond))
	f.cache("item:1", "item2:1")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
	f.waitGone("item2:1")
	f.sync()
	if !f.exists("item:1") {
		t.Fatal("the old template still runs after the reload")
	}

	// An invalid file (a column tags lacks) changes nothing.
	os.WriteFile(path, []byte(strings.ReplaceAll(`
[[rule]]
table = "tags"
del = ["{p}tag:<no_such_column>"]
`+markerRule, "{p}", f.prefix)), 0o644)
	failed := strings.Count(logs.String(), "reload failed")
	reload <- struct{}{}
	waitFor(t, 20*time.Second, func() bool { return strings.Count(logs.String(), "reload failed") > failed },
		func() string { return "the invalid reload was never refused; the daemon logged:\n" + logs.String() })
	f.cache("item2:2", "tag:2")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 2")
	f.exec("INSERT INTO tags VALUES (2, 'z')")
	f.waitGone("item2:2", "tag:2")
}

func TestSIGHUPReloadsTheBinary(t *testing.T) {
	f := newFixture(t, twoTablesSchema, markerSchema)
	path := f.rules(itemsRules)
	p := f.startProcess(path)
	f.waitSlotActive("pg_invalidator", nil)

	os.WriteFile(path, []byte(strings.ReplaceAll(itemsRules+`
[[rule]]
table = "tags"
del = ["{p}tag:<id>"]
`, "{p}", f.prefix)), 0o644)
	p.cmd.Process.Signal(syscall.SIGHUP)
	// The rules go in force first, then tags joins the publication: a write
	// made between the two is not published, so wait for the second.
	waitFor(t, 20*time.Second, func() bool { return strings.Contains(p.stderr.String(), "tables added to publication") },
		func() string { return "no reload logged:\n" + p.stderr.String() })
	f.cache("tag:5")
	f.exec("INSERT INTO tags VALUES (5, 'x')")
	f.waitGone("tag:5")
}

func TestHeartbeatMovesAnIdleSlot(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	cfg := f.config(f.rules(itemsRules))
	cfg.Heartbeat = 100 * time.Millisecond
	f.startConfig(cfg)

	// Nothing else writes: only the heartbeat makes WAL, and the slot follows.
	// (PostgreSQL itself logs a running-transactions record every 15 s, so
	// the wait is kept well below that.)
	start := f.walLSN()
	waitFor(t, 5*time.Second, func() bool { return f.walLSN() > start && f.slotLSN("pg_invalidator") > start },
		func() string {
			return "slot at " + lsnText(f.slotLSN("pg_invalidator")) + ", WAL at " + lsnText(f.walLSN()) + ", started at " + lsnText(start)
		})
}

// TestReloadFlushesTheTablesItAdds: a table that joins the publication by a
// reload had its changes until then never streamed, so an entry cached
// from it may be stale: its keys are flushed, as start flushes a table it
// adds.
func TestReloadFlushesTheTablesItAdds(t *testing.T) {
	f := newFixture(t, twoTablesSchema, markerSchema)
	f.exec("INSERT INTO tags VALUES (1, 'old')")
	path := f.rules(itemsRules)
	p := f.startProcess(path)
	f.waitSlotActive("pg_invalidator", nil)

	// An application caches tag:1, and the row changes while no rule names
	// tags.
	f.cache("tag:1")
	f.exec("UPDATE tags SET name = 'new' WHERE id = 1")
	f.sync()
	os.WriteFile(path, []byte(strings.ReplaceAll(itemsRules+`
[[rule]]
table = "tags"
del = ["{p}tag:<id>"]
`, "{p}", f.prefix)), 0o644)
	reloaded := time.Now()
	p.cmd.Process.Signal(syscall.SIGHUP)
	f.waitGone("tag:1")
	t.Logf("tag:1 flushed %s after the reload", time.Since(reloaded).Round(time.Millisecond))
	// The warning follows the flush: the key may be gone a moment before it
	// is written.
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(p.stderr.String(), "change=added") },
		func() string { return "the flush was not logged as a table added:\n" + p.stderr.String() })
}

// TestReloadWhileTheSlotIsCreated reloads rules that add a table while the
// daemon creates its slot, which waits for every transaction in progress
// to end. A reload that held its own transaction open until the pipeline
// took the rules hung the daemon for good: the slot waited for the
// reload's transaction, the reload for the pipeline, the pipeline for the
// slot.
func TestReloadWhileTheSlotIsCreated(t *testing.T) {
	f := newFixture(t, twoTablesSchema, markerSchema)
	ctx := context.Background()
	// A transaction of the application's, open while the slot is created.
	app, err := pgx.Connect(ctx, f.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(ctx)
	tx, err := app.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO tags VALUES (100, 'open')"); err != nil {
		t.Fatal(err)
	}

	path := f.rules(itemsRules)
	cfg := f.config(path)
	logs := &testenv.SyncBuffer{}
	cfg.Logger = teeLogger(t, logs)
	reload := make(chan struct{}, 1)
	cfg.Reload = reload
	cfg.LoadRules = func() (*mapping.Rules, error) { return loadRules(path) }
	r := f.startUnready(cfg)
	waitFor(t, 20*time.Second, func() bool { return f.slotExists("pg_invalidator") },
		func() string { return "the daemon never began to create its slot:\n" + logs.String() })

	os.WriteFile(path, []byte(strings.ReplaceAll(itemsRules+`
[[rule]]
table = "tags"
del = ["{p}tag:<id>"]
`, "{p}", f.prefix)), 0o644)
	reload <- struct{}{}
	time.Sleep(time.Second) // the reload reaches its wait for the pipeline
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	f.waitSlotActive("pg_invalidator", r.done)
	waitFor(t, 20*time.Second, func() bool { return strings.Contains(logs.String(), "tables added to publication") },
		func() string { return "tags never joined the publication; the daemon logged:\n" + logs.String() })
	f.cache("tag:5")
	f.exec("INSERT INTO tags VALUES (5, 'x')")
	f.waitGone("tag:5")
}
