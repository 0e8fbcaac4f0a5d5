package integration

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

// Transactions larger than logical_decoding_work_mem, which the daemon asks
// the walsender to stream while they run (pgoutput protocol 2). 64kB, the
// least PostgreSQL takes, makes an UPDATE of the 2,000 rows of items one.

// streamingRules add a static incr key and a version key to itemsRules, so
// that a streamed transaction's once-per-transaction commands show.
const streamingRules = itemsRules + `
[[rule]]
table = "items"
incr = ["{p}counter:items"]
version = ["{p}version:items"]
`

// streamedTxs returns how many transactions the daemon's slot streamed, as
// pg_stat_replication_slots counts them.
func (f *fixture) streamedTxs() int64 {
	f.t.Helper()
	var n int64
	err := f.db.QueryRow(context.Background(), `SELECT coalesce(sum(stream_txns), 0)::bigint FROM pg_stat_replication_slots WHERE slot_name = 'pg_invalidator'`).Scan(&n)
	if err != nil {
		f.t.Fatal(err)
	}
	return n
}

// begin opens a transaction of the application's, on a connection of its own.
func (f *fixture) begin() pgx.Tx {
	f.t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, f.dbURL)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { conn.Close(context.Background()) })
	tx, err := conn.Begin(ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	return tx
}

func txExec(t *testing.T, tx pgx.Tx, sqls ...string) {
	t.Helper()
	for _, sql := range sqls {
		if _, err := tx.Exec(context.Background(), sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
}

// waitStreamed waits until the slot has streamed n transactions, or some of
// the n-th: the walsender counts a transaction once it sent its first block.
func (f *fixture) waitStreamed(n int64) {
	f.t.Helper()
	waitFor(f.t, 20*time.Second, func() bool { return f.streamedTxs() >= n },
		func() string { return fmt.Sprintf("the slot streamed %d transactions, want %d", f.streamedTxs(), n) })
}

// TestStreamedTransaction: a transaction the server streams while it runs
// is mapped as it comes, but its keys go only at its commit: while it is
// open, readers still read the old rows, and the cached entries are right.
// At its commit every key goes, its incr key counts once and its version key
// is set to its end LSN, as for a transaction sent whole.
func TestStreamedTransaction(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	probe := f.commitProbe()
	cfg := f.config(f.rules(streamingRules))
	cfg.DecodingWorkMem = "64kB"
	f.startConfig(cfg)
	probe.commits()
	keys := f.cacheItems(2000)

	tx := f.begin()
	txExec(t, tx, "UPDATE items SET v = v + 1")
	f.waitStreamed(1)
	f.sync() // the daemon is past every block streamed so far
	if !f.exists("item:1") || !f.exists("item:2000") {
		t.Fatal("keys of an open streamed transaction were deleted before its commit")
	}
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	committed := time.Now()
	commits := probe.commits() // the marker's, then the UPDATE's
	end := commits[len(commits)-1]
	f.waitGone(keys...)
	t.Logf("2,000 keys of a streamed transaction gone %s after its COMMIT", time.Since(committed).Round(time.Millisecond))
	f.sync()
	if got := f.get("counter:items"); got != "1" {
		t.Errorf("counter:items = %q after one streamed transaction, want 1", got)
	}
	if got := f.get("version:items"); got != end.VersionValue() {
		t.Errorf("version:items = %q, want the streamed transaction's end LSN %s as %s", got, end, end.VersionValue())
	}
}

// TestStreamedTransactionAborted: a streamed transaction rolled back
// deletes nothing; one with a subtransaction rolled back to a savepoint
// deletes, at its commit, the keys of the rest. (Those of the
// subtransaction's rows go too when its changes were streamed before its
// abort: an extra delete is harmless.)
func TestStreamedTransactionAborted(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	cfg := f.config(f.rules(itemsRules))
	cfg.DecodingWorkMem = "64kB"
	f.startConfig(cfg)
	f.cacheItems(2000)

	tx := f.begin()
	txExec(t, tx, "UPDATE items SET v = v + 1")
	f.waitStreamed(1)
	if err := tx.Rollback(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.sync()
	if !f.exists("item:1") || !f.exists("item:2000") || !f.exists("items:cat:3") {
		t.Fatal("a streamed transaction rolled back deleted keys")
	}

	tx = f.begin()
	txExec(t, tx, "UPDATE items SET v = v + 1 WHERE id <= 1000", "SAVEPOINT sp", "UPDATE items SET v = v + 1 WHERE id > 1000",
		"ROLLBACK TO SAVEPOINT sp")
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The rows the subtransaction changed did not change: whether their
	// keys go (its changes were streamed before the rollback) or not (they
	// were dropped in the walsender first), no entry is stale.
	f.waitGone("item:1", "item:1000")
}

// TestStreamedTransactionsInterleaved: two streamed transactions open at
// once, their blocks interleaved, committed in the other order.
func TestStreamedTransactionsInterleaved(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	cfg := f.config(f.rules(itemsRules))
	cfg.DecodingWorkMem = "64kB"
	f.startConfig(cfg)
	f.cacheItems(2000)

	a, b := f.begin(), f.begin()
	txExec(t, a, "UPDATE items SET v = v + 1 WHERE id <= 1000")
	txExec(t, b, "UPDATE items SET v = v + 1 WHERE id > 1000")
	txExec(t, a, "UPDATE items SET v = v + 1 WHERE id <= 500")
	f.waitStreamed(2)
	if err := b.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.waitGone("item:1001", "item:2000")
	f.sync()
	if !f.exists("item:1") || !f.exists("item:1000") {
		t.Fatal("the keys of the transaction still open were deleted with the other's commit")
	}
	if err := a.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.waitGone("item:1", "item:1000", "items:cat:0", "items:cat:9")
}

// TestStreamedTransactionSpilled: a streamed transaction whose keys outgrow
// the memory one may hold spills them to a file, and deletes every one at
// its commit.
func TestStreamedTransactionSpilled(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	cfg := f.config(f.rules(itemsRules))
	cfg.DecodingWorkMem = "64kB"
	cfg.StreamMemory = 16 << 10 // about 200 keys
	cfg.MetricsAddr = metricsAddr(t)
	f.startConfig(cfg)
	keys := f.cacheItems(2000)
	tx := f.begin()
	txExec(t, tx, "UPDATE items SET v = v + 1")
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.waitGone(keys...)
	m := scrape(t, cfg.MetricsAddr)
	if m["pg_invalidator_streamed_transactions_total"] != 1 || m["pg_invalidator_streamed_spilled_bytes_total"] < 2000*10 {
		t.Errorf("streamed_transactions_total %v, streamed_spilled_bytes_total %v: want 1, and the keys spilled",
			m["pg_invalidator_streamed_transactions_total"], m["pg_invalidator_streamed_spilled_bytes_total"])
	}
}

// TestStreamedTransactionKill9: the daemon killed while a streamed
// transaction is open, and again while it applies its commit (the Redis user
// may not UNLINK meanwhile, so the batch retries): each time the next start
// receives the transaction again, whole, and deletes every key.
func TestStreamedTransactionKill9(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	rules := f.rules(`
[postgres]
logical_decoding_work_mem = "64kB"
` + itemsRules)
	ctx := context.Background()
	user, pw := "streamkill-"+testenv.UniqueName(), "streamkill-pw"
	if err := f.rdb.Do(ctx, "ACL", "SETUSER", user, "on", ">"+pw, "~*", "&*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.rdb.Do(context.Background(), "ACL", "DELUSER", user) })
	f.redisURL = strings.Replace(f.redisURL, "redis://", "redis://"+user+":"+pw+"@", 1)
	keys := f.cacheItems(2000)

	// Killed mid-stream.
	p := f.startProcess(rules)
	f.waitSlotActive("pg_invalidator", nil)
	tx := f.begin()
	txExec(t, tx, "UPDATE items SET v = v + 1")
	f.waitStreamed(1)
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	p = f.startProcess(rules)
	f.waitGone(keys...)

	// Killed while it applies the commit.
	keys = f.cacheItems(2000)
	if err := f.rdb.Do(ctx, "ACL", "SETUSER", user, "-unlink").Err(); err != nil {
		t.Fatal(err)
	}
	streamed := f.streamedTxs()
	tx = f.begin()
	txExec(t, tx, "UPDATE items SET v = v + 1")
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	f.waitStreamed(streamed + 1)
	waitFor(t, 20*time.Second, func() bool { return strings.Contains(p.stderr.String(), "NOPERM") },
		func() string { return "the commit's batch never reached Redis:\n" + p.stderr.String() })
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	if !f.exists("item:1") {
		t.Fatal("item:1 gone though the user may not UNLINK: the test proves nothing")
	}
	if err := f.rdb.Do(ctx, "ACL", "SETUSER", user, "+unlink").Err(); err != nil {
		t.Fatal(err)
	}
	f.startProcess(rules)
	f.waitGone(keys...)
}
