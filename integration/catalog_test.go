package integration

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
	"github.com/pg-invalidator/pg-invalidator/mapping"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// The catalog watch: a rule table swapped, renamed or dropped, a replica
// identity weakened, a partition truncated, detached or dropped while the
// daemon runs. None of these produces a row event the daemon could map, so
// each test fails, with keys left stale or /readyz green, without the watch.

// catalogPoll is how often the tests' daemons read the catalog.
const catalogPoll = 200 * time.Millisecond

// watched is a daemon started with a fast catalog poll and /readyz, whose
// log the test can read.
type watched struct {
	f    *fixture
	run  *running
	addr string
	log  *testenv.SyncBuffer
}

// startWatched runs the daemon on cfg with the metrics endpoints and a fast
// catalog poll, unless cfg sets one, and keeps its log.
func (f *fixture) startWatched(cfg daemon.Config) *watched {
	f.t.Helper()
	w := &watched{f: f, addr: metricsAddr(f.t), log: &testenv.SyncBuffer{}}
	if cfg.CatalogPollInterval == 0 {
		cfg.CatalogPollInterval = catalogPoll
	}
	cfg.MetricsAddr = w.addr
	cfg.Logger = slog.New(slog.NewTextHandler(teeWriter{testWriter{f.t}, w.log}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	w.run = f.startConfig(cfg)
	waitStatus(f.t, w.addr, "/readyz", http.StatusOK, 30*time.Second)
	return w
}

// logCount returns how many log lines contain every one of parts.
func (w *watched) logCount(parts ...string) int {
	n := 0
	for line := range strings.Lines(w.log.String()) {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}

// waitLog waits until a log line contains every one of parts.
func (w *watched) waitLog(parts ...string) {
	w.f.t.Helper()
	waitFor(w.f.t, 60*time.Second, func() bool { return w.logCount(parts...) > 0 },
		func() string { return fmt.Sprintf("no log line with %q", parts) })
}

// waitReadyz waits until /readyz answers code with a body that contains
// every one of parts, and returns the body.
func (w *watched) waitReadyz(code int, parts ...string) string {
	w.f.t.Helper()
	var gotCode int
	var body string
	waitFor(w.f.t, 60*time.Second, func() bool {
		gotCode, body = httpGet(w.f.t, w.addr, "/readyz")
		if gotCode != code {
			return false
		}
		for _, p := range parts {
			if !strings.Contains(body, p) {
				return false
			}
		}
		return true
	}, func() string { return fmt.Sprintf("/readyz = %d %q, want %d with %q", gotCode, body, code, parts) })
	return body
}

// counter returns the value of one series of /metrics, 0 when absent.
func (w *watched) counter(series string) float64 {
	return scrape(w.f.t, w.addr)[series]
}

// waitGoneLong waits up to a minute until none of keys exists: a catalog
// change is noticed at the next poll, on a loaded machine.
func (f *fixture) waitGoneLong(keys ...string) {
	f.t.Helper()
	f.waitGoneWithin(60*time.Second, keys...)
}

type teeWriter struct {
	a testWriter
	b *testenv.SyncBuffer
}

func (w teeWriter) Write(p []byte) (int, error) {
	w.b.Write(p)
	return w.a.Write(p)
}

// swapSQL swaps products for a copy the way online schema-change tools do,
// and writes to the copy before anything could have added it to a
// publication.
const swapSQL = `
ALTER TABLE products RENAME TO products_old;
CREATE TABLE products (LIKE products_old INCLUDING ALL);
ALTER TABLE products REPLICA IDENTITY FULL;
INSERT INTO products SELECT * FROM products_old;
INSERT INTO products (id, category_id, name) VALUES (2, 7, 'desk');
UPDATE products SET name = 'lamp2' WHERE id = 1;`

func TestCatalogSwappedTableIsAddedAndFlushed(t *testing.T) {
	f := newFixture(t, productsSchema, markerSchema)
	f.exec("INSERT INTO products (id, category_id, name) VALUES (1, 3, 'lamp')")
	w := f.startWatched(f.config(f.rules(productsRules)))

	f.cache("product:1", "list:cat:3", "product:2", "list:cat:7", "other")
	start := time.Now()
	f.exec(swapSQL)
	// The changes to the new table before it joined the publication were
	// never streamed: the flush removes every key its rules can render.
	f.waitGoneLong("product:1", "list:cat:3", "product:2", "list:cat:7")
	t.Logf("swap to keys flushed: %s (poll every %s)", time.Since(start).Round(time.Millisecond), catalogPoll)
	w.waitLog("WARN", "table=public.products", "change=swapped")
	if !f.exists("other") {
		t.Error("the flush removed a key no rule renders")
	}

	// From now on the new table streams.
	f.cache("product:3", "list:cat:9")
	f.exec("INSERT INTO products (id, category_id) VALUES (3, 9)")
	f.waitGone("product:3", "list:cat:9")
	f.sync()

	if n := w.logCount("WARN", "table=public.products", "change=swapped"); n != 1 {
		t.Errorf("%d warnings about the swap, want 1:\n%s", n, w.log)
	}
	if got := w.counter(`pg_invalidator_catalog_changes_total{change="swapped",table="public.products"}`); got != 1 {
		t.Errorf(`catalog_changes_total{change="swapped"} = %v, want 1`, got)
	}
	if code, body := httpGet(t, w.addr, "/readyz"); code != http.StatusOK {
		t.Errorf("/readyz = %d %q after the swap was handled, want 200", code, body)
	}
}

// TestCatalogSwapRedeletes: with redelete_after, the keys a swap flushes
// are deleted again that long after the flush, as a TRUNCATE's are: an
// entry that a slow reader, which read the old table before the flush,
// caches after it is gone by then.
func TestCatalogSwapRedeletes(t *testing.T) {
	f := newFixture(t, productsSchema, markerSchema)
	f.exec("INSERT INTO products (id, category_id, name) VALUES (1, 3, 'lamp')")
	rules := strings.Replace(productsRules, "table = \"products\"\n", "table = \"products\"\nredelete_after = \"2s\"\n", 1)
	w := f.startWatched(f.config(f.rules(rules)))

	f.cache("product:1", "list:cat:3")
	f.exec(swapSQL)
	f.waitGoneLong("product:1", "list:cat:3")
	flushed := time.Now()
	f.cache("product:1") // the slow reader's SET, of the row it read before the swap
	f.waitGoneWithin(30*time.Second, "product:1")
	if el := time.Since(flushed); el < time.Second {
		t.Errorf("the entry cached after the flush was gone %s later, before redelete_after (2s): something else deleted it", el.Round(time.Millisecond))
	}
	// The count follows the re-delete's reply: the key may be gone a moment
	// before.
	const redeletes = `pg_invalidator_redeletes_total{target="default"}`
	waitFor(t, 10*time.Second, func() bool { return w.counter(redeletes) >= 1 },
		func() string {
			return fmt.Sprintf("%s = %v after the swap's re-delete, want at least 1", redeletes, w.counter(redeletes))
		})
}

func TestCatalogSwappedTableTheRoleMayNotAdd(t *testing.T) {
	role := newClusterRole(t)
	f := newFixture(t, productsSchema, markerSchema,
		"CREATE ROLE "+role+" LOGIN REPLICATION PASSWORD 'pw'",
		"GRANT SELECT ON products, marker TO "+role)
	f.exec("INSERT INTO products (id, category_id, name) VALUES (1, 3, 'lamp')")
	// The DBA owns the publication, as the docs recommend.
	f.exec("CREATE PUBLICATION pg_invalidator FOR TABLE products, marker WITH (publish_via_partition_root = true)")
	cfg := f.config(f.rules(productsRules))
	cfg.PostgresURL = asRole(t, f.dbURL, role, "pw")
	w := f.startWatched(cfg)

	f.exec(swapSQL + "; GRANT SELECT ON products TO " + role)
	body := w.waitReadyz(http.StatusServiceUnavailable, "rule table public.products is not covered",
		`a DBA must run: ALTER PUBLICATION "pg_invalidator" ADD TABLE "public"."products"`)
	t.Logf("/readyz: %s", body)
	w.waitLog("ERROR", "table=public.products", "change=uncovered", `ALTER PUBLICATION \"pg_invalidator\" ADD TABLE \"public\".\"products\"`)
	if got := w.counter(`pg_invalidator_rule_tables_not_covered`); got != 1 {
		t.Errorf("rule_tables_not_covered = %v, want 1", got)
	}
	// Changes made meanwhile are not streamed; the flush after the DBA's
	// fix covers them.
	f.cache("product:1", "product:5", "list:cat:8")
	f.exec("INSERT INTO products (id, category_id) VALUES (5, 8)")

	f.exec(`ALTER PUBLICATION pg_invalidator ADD TABLE products`)
	start := time.Now()
	f.waitGoneLong("product:1", "product:5", "list:cat:8")
	t.Logf("DBA's ADD TABLE to keys flushed: %s (poll every %s)", time.Since(start).Round(time.Millisecond), catalogPoll)
	w.waitReadyz(http.StatusOK)
	f.cache("product:6")
	f.exec("INSERT INTO products (id, category_id) VALUES (6, 1)")
	f.waitGone("product:6")

	if n := w.logCount("ERROR", "table=public.products", "change=uncovered"); n != 1 {
		t.Errorf("%d errors about the uncovered table, want 1:\n%s", n, w.log)
	}
	w.waitLog("WARN", "table=public.products", "change=restored")
	for change, want := range map[string]float64{"uncovered": 1, "restored": 1, "swapped": 0} {
		series := fmt.Sprintf(`pg_invalidator_catalog_changes_total{change=%q,table="public.products"}`, change)
		if got := w.counter(series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
}

func TestCatalogDroppedAndRenamedRuleTables(t *testing.T) {
	f := newFixture(t, productsSchema, markerSchema,
		"CREATE TABLE categories (id bigint PRIMARY KEY, name text)",
		"INSERT INTO categories VALUES (1, 'lamps')")
	path := f.rules(productsRules + `
[[rule]]
table = "categories"
del = ["{p}category:<id>"]
`)
	cfg := f.config(path)
	reload := make(chan struct{}, 1)
	cfg.Reload = reload
	cfg.LoadRules = func() (*mapping.Rules, error) { return loadRules(path) }
	w := f.startWatched(cfg)

	// Dropped.
	{
		f.cache("category:1")
		start := time.Now()
		f.exec("DROP TABLE categories")
		w.waitReadyz(http.StatusServiceUnavailable, "rule table public.categories does not exist")
		t.Logf("DROP TABLE to /readyz 503: %s (poll every %s)", time.Since(start).Round(time.Millisecond), catalogPoll)
		w.waitLog("ERROR", "table=public.categories", "change=missing")
		// Its rows are gone: so are their keys.
		f.waitGoneLong("category:1")
		// The other rules keep running.
		f.cache("product:1", "list:cat:3")
		f.exec("INSERT INTO products (id, category_id) VALUES (1, 3)")
		f.waitGone("product:1", "list:cat:3")
	}

	// Renamed.
	{
		f.cache("product:2", "list:cat:4")
		f.exec("INSERT INTO products (id, category_id) VALUES (2, 4)")
		f.waitGone("product:2", "list:cat:4")
		f.cache("product:1")
		f.exec("ALTER TABLE products RENAME TO goods")
		body := w.waitReadyz(http.StatusServiceUnavailable, "rule table public.products does not exist")
		if !strings.Contains(body, "rule table public.categories does not exist") {
			t.Errorf("/readyz no longer names the dropped table:\n%s", body)
		}
		w.waitLog("ERROR", "table=public.products", "change=missing")
		f.waitGoneLong("product:1")
		// Renamed back, it is covered again, after a flush: changes made
		// under the other name were not mapped.
		f.cache("product:2")
		f.exec("UPDATE goods SET name = 'x' WHERE id = 2")
		f.exec("ALTER TABLE goods RENAME TO products")
		f.waitGoneLong("product:2")
		w.waitLog("WARN", "table=public.products", "change=restored")
		w.waitReadyz(http.StatusServiceUnavailable, "rule table public.categories does not exist")
		f.cache("product:3")
		f.exec("INSERT INTO products (id, category_id) VALUES (3, 1)")
		f.waitGone("product:3")
	}

	f.sync()
	for _, table := range []string{"public.categories", "public.products"} {
		if n := w.logCount("ERROR", "table="+table, "change=missing"); n != 1 {
			t.Errorf("%d errors about %s missing, want 1:\n%s", n, table, w.log)
		}
		series := fmt.Sprintf(`pg_invalidator_catalog_changes_total{change="missing",table=%q}`, table)
		if got := w.counter(series); got != 1 {
			t.Errorf("%s = %v, want 1", series, got)
		}
	}

	// Rules that no longer name the dropped table make the daemon ready.
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(productsRules, "{p}", f.prefix)), 0o644); err != nil {
		t.Fatal(err)
	}
	reload <- struct{}{}
	w.waitReadyz(http.StatusOK)
	if got := w.counter(`pg_invalidator_rule_tables_not_covered`); got != 0 {
		t.Errorf("rule_tables_not_covered = %v after the reload, want 0", got)
	}
}

func TestCatalogReplicaIdentityWeakened(t *testing.T) {
	f := newFixture(t, productsSchema, markerSchema)
	f.exec("INSERT INTO products (id, category_id) VALUES (1, 3)")
	w := f.startWatched(f.config(f.rules(productsRules)))

	// list:cat:<category_id> needs the old category on update and delete,
	// which only FULL sends.
	f.exec("ALTER TABLE products REPLICA IDENTITY DEFAULT")
	body := w.waitReadyz(http.StatusServiceUnavailable, "rule table public.products", "category_id",
		"ALTER TABLE public.products REPLICA IDENTITY FULL")
	t.Logf("/readyz: %s", body)
	w.waitLog("ERROR", "table=public.products", "change=identity")
	// Meanwhile the old category is not sent: its list key stays.
	f.cache("list:cat:3", "list:cat:5")
	f.exec("UPDATE products SET category_id = 5 WHERE id = 1")
	f.waitGone("list:cat:5")
	f.sync()
	if !f.exists("list:cat:3") {
		t.Fatal("list:cat:3 was invalidated under REPLICA IDENTITY DEFAULT; this test no longer shows the window")
	}

	// Fixed, the keys skipped meanwhile are flushed.
	f.exec("ALTER TABLE products REPLICA IDENTITY FULL")
	w.waitReadyz(http.StatusOK)
	f.waitGoneLong("list:cat:3")
	w.waitLog("WARN", "table=public.products", "change=restored", "serves its rules again")
	if n := w.logCount("ERROR", "table=public.products", "change=identity"); n != 1 {
		t.Errorf("%d errors about the identity, want 1:\n%s", n, w.log)
	}
	if got := w.counter(`pg_invalidator_catalog_changes_total{change="identity",table="public.products"}`); got != 1 {
		t.Errorf(`catalog_changes_total{change="identity"} = %v, want 1`, got)
	}
}

// partitionChanges are the partition changes that produce no row event
// under publish_via_partition_root = true: a TRUNCATE of a leaf is not
// published, and DETACH PARTITION and DROP TABLE of a partition produce no
// row events, nor does ATTACH PARTITION of a table with rows. keys are
// cached before the change and must be gone after it; log is the phrase
// the daemon's warning gives for it.
var partitionChanges = []struct {
	name string
	sql  string
	keys []string
	log  string
}{
	{"truncated", "TRUNCATE events_eu", []string{"event:eu:1", "events:all"}, "public.events_eu truncated or rewritten"},
	{"detached", "ALTER TABLE events DETACH PARTITION events_us", []string{"event:us:2", "events:all"}, "public.events_us detached or dropped"},
	{"dropped", "DROP TABLE events_ap", []string{"event:ap:3", "events:all"}, "public.events_ap detached or dropped"},
	// Rows that appear under the partitioned table: a list key that
	// was cached without them is stale.
	{"attached", "ALTER TABLE events ATTACH PARTITION events_sa FOR VALUES IN ('sa')", []string{"events:all"}, "public.events_sa attached with rows"},
}

// eventsSchema is a table partitioned by region, with a row in each of its
// three partitions, and a table with a row ready to be attached.
const eventsSchema = `
	CREATE TABLE events (id bigint, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
	CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
	CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');
	CREATE TABLE events_ap PARTITION OF events FOR VALUES IN ('ap');
	INSERT INTO events VALUES (1, 'eu'), (2, 'us'), (3, 'ap');
	CREATE TABLE events_sa (LIKE events INCLUDING ALL);
	INSERT INTO events_sa VALUES (5, 'sa');`

const eventsRules = `
[[rule]]
table = "events"
del = ["{p}event:<region>:<id>", "{p}events:all"]
` + markerRule

// TestCatalogPartitionsTruncatedDetachedDropped: each partition change
// runs on a daemon of its own, so that each fails on its own without the
// watch.
func TestCatalogPartitionsTruncatedDetachedDropped(t *testing.T) {
	for _, tt := range partitionChanges {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, eventsSchema, markerSchema)
			w := f.startWatched(f.config(f.rules(eventsRules)))

			f.cache(tt.keys...)
			start := time.Now()
			f.exec(tt.sql)
			f.waitGoneLong(tt.keys...)
			t.Logf("%s to keys flushed: %s (poll every %s)", tt.sql, time.Since(start).Round(time.Millisecond), catalogPoll)
			w.waitLog("WARN", "table=public.events", "change=partition", tt.log)

			// Row events of the partitions left still stream.
			f.cache("event:eu:4")
			f.exec("INSERT INTO events VALUES (4, 'eu')")
			f.waitGone("event:eu:4")
			f.sync()
			if got := w.counter(`pg_invalidator_catalog_changes_total{change="partition",table="public.events"}`); got != 1 {
				t.Errorf(`catalog_changes_total{change="partition"} = %v, want 1`, got)
			}
			if code, body := httpGet(t, w.addr, "/readyz"); code != http.StatusOK {
				t.Errorf("/readyz = %d %q, want 200: a flushed partition leaves the table covered", code, body)
			}
		})
	}
}

// TestCatalogPartitionsChangedWhileStopped: the same changes made while no
// daemon runs. The slot replays the row changes made meanwhile, but not
// these: the daemon that starts next compares the catalog with the reading
// its predecessor left in Redis, and flushes.
func TestCatalogPartitionsChangedWhileStopped(t *testing.T) {
	for _, tt := range partitionChanges {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, eventsSchema, markerSchema)
			cfg := f.config(f.rules(eventsRules))
			first := f.startWatched(cfg)
			f.sync()

			if err := first.run.stop(); err != nil {
				t.Fatal(err)
			}

			f.cache(tt.keys...)
			f.exec(tt.sql)
			w := f.startWatched(cfg)
			f.waitGoneLong(tt.keys...)
			w.waitLog("WARN", "table=public.events", "change=partition", tt.log)
		})
	}
}

// TestCatalogSwappedWhileStopped: a table swapped while no daemon runs.
// Start adds the new table to the publication, and the first reading
// flushes the table that start added. When a DBA added it before the start,
// start adds nothing, and only the reading the last daemon saved shows the
// swap. Either way the keys of the changes made before are flushed.
func TestCatalogSwappedWhileStopped(t *testing.T) {
	tests := []struct {
		name  string
		dba   string // run after the swap, before the start
		added bool   // start adds the table to the publication
		log   string
	}{
		{"added at start", "", true, "added it to the publication"},
		{"published by a DBA", "ALTER PUBLICATION " + replication.DefaultPublication + " ADD TABLE products", false, "which the publication streams already"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, productsSchema, markerSchema)
			f.exec("INSERT INTO products (id, category_id, name) VALUES (1, 3, 'lamp')")
			cfg := f.config(f.rules(productsRules))
			first := f.startWatched(cfg)
			f.sync()
			if err := first.run.stop(); err != nil {
				t.Fatal(err)
			}

			f.cache("product:1", "list:cat:3", "product:2", "list:cat:7")
			f.exec(swapSQL)
			if tt.dba != "" {
				f.exec(tt.dba)
			}
			w := f.startWatched(cfg)
			f.waitGoneLong("product:1", "list:cat:3", "product:2", "list:cat:7")
			w.waitLog("WARN", "table=public.products", "change=swapped", tt.log)
			if added := w.logCount("tables added to publication") > 0; added != tt.added {
				t.Errorf("start added tables to the publication: %v, want %v:\n%s", added, tt.added, w.log)
			}
			f.cache("product:3")
			f.exec("INSERT INTO products (id, category_id) VALUES (3, 9)")
			f.waitGone("product:3")
		})
	}
}

// TestCatalogReadingWithoutGet: a Redis user set up for an earlier version
// of the daemon may not GET the reading the last daemon saved. The daemon
// says so once, and runs on: it still saves its readings, and streams.
func TestCatalogReadingWithoutGet(t *testing.T) {
	f := newFixture(t, productsSchema, markerSchema)
	ctx := context.Background()
	user, pw := "noget-"+testenv.UniqueName(), "noget-pw"
	if err := f.rdb.Do(ctx, "ACL", "SETUSER", user, "on", ">"+pw, "~*", "&*", "+@all", "-get").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.rdb.Do(context.Background(), "ACL", "DELUSER", user) })
	cfg := f.config(f.rules(productsRules))
	cfg.Targets[0].Redis.Username, cfg.Targets[0].Redis.Password = user, pw
	w := f.startWatched(cfg)
	w.waitLog("ERROR", "cannot read the catalog reading the last daemon saved", "NOPERM", "(~pg-invalidator:slot:* +get)")

	f.cache("product:1")
	f.exec("INSERT INTO products (id, category_id) VALUES (1, 3)")
	f.waitGone("product:1")
	if key := f.markers().catalog; f.rdb.Exists(ctx, key).Val() != 1 {
		t.Errorf("the daemon saved no catalog reading (%s)", key)
	}
	if n := w.logCount("cannot read the catalog reading"); n != 1 {
		t.Errorf("%d errors about the catalog reading, want 1:\n%s", n, w.log)
	}
	if logs := w.log.String(); strings.Contains(logs, pw) {
		t.Errorf("the log holds the password:\n%s", logs)
	}
}

// TestCatalogReadingSavedAgain: a Redis emptied while the daemon runs gets
// the catalog reading back within a few polls, though the catalog did not
// change: else a partition detached after the daemon stops would go
// unnoticed at its next start.
func TestCatalogReadingSavedAgain(t *testing.T) {
	f := newFixture(t, eventsSchema, markerSchema)
	f.startWatched(f.config(f.rules(eventsRules)))
	ctx := context.Background()
	key := f.markers().catalog
	saved := func() bool { return f.rdb.Exists(ctx, key).Val() == 1 }
	waitFor(t, 10*time.Second, saved, func() string { return "no catalog reading saved at " + key })
	if err := f.rdb.Del(ctx, key).Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitFor(t, 30*catalogPoll, saved, func() string { return "the catalog reading was not saved again at " + key })
	t.Logf("saved again %s after it was deleted (poll every %s)", time.Since(start).Round(time.Millisecond), catalogPoll)
}

// TestCatalogRenameSeenInTheStream: a Relation message that names a rule
// table's relation otherwise wakes the catalog watch at once. The poll
// interval is an hour, so only the stream can tell.
func TestCatalogRenameSeenInTheStream(t *testing.T) {
	f := newFixture(t, productsSchema, markerSchema)
	cfg := f.config(f.rules(productsRules))
	cfg.CatalogPollInterval = time.Hour
	w := f.startWatched(cfg)

	f.cache("product:1")
	f.exec("ALTER TABLE products RENAME TO goods")
	start := time.Now()
	f.exec("INSERT INTO goods (id, category_id) VALUES (1, 3)")
	w.waitReadyz(http.StatusServiceUnavailable, "rule table public.products does not exist")
	t.Logf("first write under the new name to /readyz 503: %s (poll every %s)", time.Since(start).Round(time.Millisecond), cfg.CatalogPollInterval)
	w.waitLog("ERROR", "table=public.products", "change=missing")
	f.waitGone("product:1")
}
