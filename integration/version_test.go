package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

const versionRules = `
[[rule]]
table = "items"
del = ["{p}item:<id>"]
version = ["{p}version:items", "{p}version:cat:<cat>"]

[[rule]]
table = "items"
incr = ["{p}counter:items"]
` + markerRule

// versionRulesCats adds a second table that sets the same version key.
const versionRulesCats = versionRules + `
[[rule]]
table = "cats"
version = ["{p}version:items"]
`

// commitProbe is a test_decoding slot in the fixture's database that
// reports the end LSN of each transaction: test_decoding's COMMIT row
// carries the same position as pgoutput's TransactionEndLSN, the one the
// daemon acknowledges.
type commitProbe struct {
	f    *fixture
	slot string
}

func (f *fixture) commitProbe() *commitProbe {
	f.t.Helper()
	p := &commitProbe{f: f, slot: testenv.UniqueName() + "_probe"}
	f.exec("SELECT pg_create_logical_replication_slot($1, 'test_decoding')", p.slot)
	return p // dropped with the database
}

// commits returns the end LSN of every transaction committed since the
// last call, in commit order, leaving out the daemon's canaries (a
// transaction that carries a pg_invalidator message).
func (p *commitProbe) commits() []pginvalidator.LSN {
	p.f.t.Helper()
	rows, err := p.f.db.Query(context.Background(), `
WITH c AS (SELECT lsn, xid, data FROM pg_logical_slot_get_changes($1, NULL, NULL))
SELECT lsn::text FROM c WHERE data LIKE 'COMMIT%'
AND xid NOT IN (SELECT xid FROM c WHERE data LIKE 'message: transactional: 1 prefix: pg_invalidator,%')
ORDER BY lsn`, p.slot)
	if err != nil {
		p.f.t.Fatal(err)
	}
	defer rows.Close()
	var out []pginvalidator.LSN
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			p.f.t.Fatal(err)
		}
		lsn, err := pglogrepl.ParseLSN(s)
		if err != nil {
			p.f.t.Fatal(err)
		}
		out = append(out, pginvalidator.LSN(lsn))
	}
	if err := rows.Err(); err != nil {
		p.f.t.Fatal(err)
	}
	return out
}

// onlyCommit returns the end LSN of the one transaction committed since
// the last call.
func (p *commitProbe) onlyCommit() pginvalidator.LSN {
	p.f.t.Helper()
	c := p.commits()
	if len(c) != 1 {
		p.f.t.Fatalf("%d transactions committed, want 1: %v", len(c), c)
	}
	return c[0]
}

// TestVersionKeyIsTheCommitLSN checks that an UPDATE sets each version key
// it renders to its transaction's end LSN, as 16 hex digits; that the
// transactions replayed from a copy of the slot (made before them, as a
// crash before the acknowledgement would replay them) leave every version
// key as it is, even one that a later transaction they do not include had
// set, while the INCR beside them counts the replay again; and that a
// TRUNCATE sets the static key and every existing key of a pattern, and
// creates none.
func TestVersionKeyIsTheCommitLSN(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema, "CREATE TABLE cats (id int PRIMARY KEY, name text)",
		"INSERT INTO cats VALUES (1, 'one')",
		// The replaying daemon's publication leaves cats out. It must exist
		// before the transactions it is to decode.
		"CREATE PUBLICATION replay FOR TABLE items, marker")
	probe := f.commitProbe()
	cfg := f.config(f.rules(versionRulesCats))
	r := f.startConfig(cfg)
	// A copy of the daemon's slot, taken before the changes below: a daemon
	// streaming from it gets the same transactions again.
	replaySlot := testenv.UniqueName() + "_replay"
	f.exec("SELECT pg_copy_logical_replication_slot('pg_invalidator', $1)", replaySlot)
	probe.commits() // whatever came before

	tx, err := f.db.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{"UPDATE items SET cat = 3 WHERE id = 1", "UPDATE items SET v = v + 1 WHERE id IN (2, 12, 22)"} {
		if _, err := tx.Exec(context.Background(), sql); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	first := probe.onlyCommit()
	f.sync()
	probe.commits() // the marker
	for _, k := range []string{"version:items", "version:cat:1", "version:cat:2", "version:cat:3"} {
		if got := f.get(k); got != first.VersionValue() {
			t.Errorf("%s = %q, want the commit's end LSN %s as %s", k, got, first, first.VersionValue())
		}
	}
	if f.exists("version:cat:4") {
		t.Error("version:cat:4 was set, though no row of category 4 changed")
	}
	if got := f.get("counter:items"); got != "1" {
		t.Errorf("counter:items = %q, want 1", got)
	}

	f.exec("UPDATE items SET v = v + 1 WHERE id = 4")
	second := probe.onlyCommit()
	f.exec("UPDATE cats SET name = 'uno'") // the last word on version:items, outside the replay
	third := probe.onlyCommit()
	f.sync()
	probe.commits()
	if !(first < second && second < third) {
		t.Fatalf("the transactions end at %s, %s, %s: not in commit order", first, second, third)
	}
	want := map[string]pginvalidator.LSN{"version:items": third, "version:cat:1": first, "version:cat:2": first,
		"version:cat:3": first, "version:cat:4": second}
	f.checkVersions(want)

	// The replay: stop the daemon, stream the items transactions again.
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	cfg = f.config(f.rules(versionRules))
	cfg.Slot, cfg.Publication = replaySlot, "replay"
	f.startConfig(cfg)
	// The replay passes the marker rows of the syncs above too, and each
	// deletes the marker key, so a sync alone may return before the replay
	// has reached the second transaction: wait for the counter.
	waitFor(t, 20*time.Second, func() bool { return f.get("counter:items") == "4" }, func() string { // 2 before, 2 replayed
		return fmt.Sprintf("counter:items = %q after the replay, want 4: did the replay happen?", f.get("counter:items"))
	})
	f.sync()
	probe.commits()
	f.checkVersions(want)

	// A TRUNCATE: the static key and every existing version:cat:* key move
	// to its LSN; no key is created for categories nothing cached.
	f.exec("TRUNCATE items")
	trunc := probe.onlyCommit()
	f.sync()
	want = map[string]pginvalidator.LSN{"version:items": trunc, "version:cat:1": trunc, "version:cat:2": trunc,
		"version:cat:3": trunc, "version:cat:4": trunc}
	f.checkVersions(want)
	if keys := f.rdb.Keys(context.Background(), f.key("version:cat:*")).Val(); len(keys) != 4 {
		t.Errorf("version:cat:* keys after TRUNCATE: %v, want the 4 that existed", keys)
	}
}

// checkVersions checks that each key holds its LSN as a version value.
func (f *fixture) checkVersions(want map[string]pginvalidator.LSN) {
	f.t.Helper()
	var bad []string
	for k, lsn := range want {
		if got := f.get(k); got != lsn.VersionValue() {
			bad = append(bad, fmt.Sprintf("%s = %q, want %s (%s)", k, got, lsn.VersionValue(), lsn))
		}
	}
	if len(bad) > 0 {
		f.t.Error(strings.Join(bad, "\n"))
	}
}

// TestResyncSetsVersionKeysToTheNewSlot starts with --resync and no slot,
// which resyncs once, over version keys left above the server's WAL
// position, as a failover to a standby that had not replayed everything
// leaves them, and a counter left by incr: the flush brings each down to the
// new slot's start, and the next transaction moves them on again.
func TestResyncSetsVersionKeysToTheNewSlot(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	probe := f.commitProbe()
	ahead := pginvalidator.LSN(0xFFFF_FFFF_0000_0000).VersionValue()
	for k, v := range map[string]string{"version:items": ahead, "version:cat:1": ahead, "version:cat:2": "17"} {
		if err := f.rdb.Set(context.Background(), f.key(k), v, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	cfg := f.config(f.rules(versionRules))
	cfg.Resync = true
	cfg.MetricsAddr = metricsAddr(t)
	before := pginvalidator.LSN(f.walLSN())
	f.startConfig(cfg)
	f.waitResyncs(cfg.MetricsAddr, 1)
	after := pginvalidator.LSN(f.walLSN())

	start := f.get("version:items")
	if len(start) != 16 || start < before.VersionValue() || start > after.VersionValue() {
		t.Fatalf("version:items = %q after the resync, want the new slot's start, between %s and %s",
			start, before.VersionValue(), after.VersionValue())
	}
	for _, k := range []string{"version:cat:1", "version:cat:2"} {
		if got := f.get(k); got != start {
			t.Errorf("%s = %q after the resync, want %q like version:items", k, got, start)
		}
	}
	if f.exists("version:cat:3") {
		t.Error("the resync created version:cat:3")
	}

	probe.commits()
	f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
	lsn := probe.onlyCommit()
	f.sync()
	f.checkVersions(map[string]pginvalidator.LSN{"version:items": lsn, "version:cat:1": lsn})
	if got := f.get("version:cat:2"); got != start {
		t.Errorf("version:cat:2 = %q, want %q: no row of category 2 changed", got, start)
	}
}
