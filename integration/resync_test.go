package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// resyncRules add a static version key to itemsRules, so that a resync's
// INCR shows.
const resyncRules = itemsRules + `
[[rule]]
table = "items"
incr = ["{p}version:items"]
`

// cacheForResync caches keys that every rule pattern matches, sets the
// version key to 5, and caches a key no rule names.
func (f *fixture) cacheForResync() {
	f.t.Helper()
	f.cache("item:1", "item:2000", "items:cat:3", "unrelated")
	if err := f.rdb.Set(context.Background(), f.key("version:items"), 5, 0).Err(); err != nil {
		f.t.Fatal(err)
	}
}

// waitResyncs waits until the daemon has counted n resyncs: the counter
// goes up once the flush is done. (The slot is briefly active while it is
// being created, so waiting for an active slot is not enough.)
func (f *fixture) waitResyncs(metrics string, n float64) {
	f.t.Helper()
	var got float64
	waitFor(f.t, 20*time.Second, func() bool {
		got = scrape(f.t, metrics)["pg_invalidator_resyncs_total"]
		return got == n
	}, func() string { return fmt.Sprintf("pg_invalidator_resyncs_total = %v, want %v", got, n) })
}

// checkResynced checks what a resync must have done: the rule keys are
// flushed, the version key went up by one, the unrelated key stayed, the
// resync was counted, and the daemon streams again.
func (f *fixture) checkResynced(metrics string, resyncs float64) {
	f.t.Helper()
	f.waitResyncs(metrics, resyncs)
	for _, k := range []string{"item:1", "item:2000", "items:cat:3"} {
		if f.exists(k) {
			f.t.Errorf("%s is still cached after the resync", k)
		}
	}
	if got := f.get("version:items"); got != "6" {
		f.t.Errorf("version:items = %q after the resync, want 6", got)
	}
	if !f.exists("unrelated") {
		f.t.Error("the resync deleted a key no rule names")
	}
	var status string
	f.db.QueryRow(context.Background(), "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'pg_invalidator'").Scan(&status)
	if status == "lost" || status == "" {
		f.t.Errorf("the new slot has wal_status %q", status)
	}
	// The new slot streams: a write after the resync is invalidated.
	f.cache("item:7")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 7")
	f.waitGone("item:7")
	f.waitValue("version:items", "7")
}

func TestResyncRecreatesAnInvalidatedSlot(t *testing.T) {
	// With the daemon away, the slot falls behind max_slot_wal_keep_size,
	// and a change to items in the meantime is lost with it.
	f, cfg := lostSlotFixture(t, resyncRules, func(f *fixture) {
		f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
	})
	f.cacheForResync()

	cfg.Resync = true
	cfg.MetricsAddr = metricsAddr(t)
	r := f.startConfig(cfg)
	f.checkResynced(cfg.MetricsAddr, 1)
	select {
	case err := <-r.done:
		t.Fatalf("the daemon stopped after the resync: %v", err)
	default:
	}
}

// TestResyncRedeletes: with redelete_after, the keys a resync flushes are
// deleted again that long after the flush, for a reader that read a row
// before it and caches it after.
func TestResyncRedeletes(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	cfg := f.config(f.rules(resyncRules + `
[[rule]]
table = "items"
del = ["{p}item:<id>"]
redelete_after = "2s"
`))
	cfg.Resync = true
	cfg.MetricsAddr = metricsAddr(t)
	f.cache("item:1")
	f.startConfig(cfg)
	// A first start with Resync finds no slot, and flushes.
	f.waitResyncs(cfg.MetricsAddr, 1)
	flushed := time.Now()
	f.cache("item:1") // the slow reader's SET, of the row it read before the flush
	f.waitGoneWithin(30*time.Second, "item:1")
	if el := time.Since(flushed); el < time.Second {
		t.Errorf("the entry cached after the flush was gone %s later, before redelete_after (2s): something else deleted it", el.Round(time.Millisecond))
	}
}

func TestResyncRecreatesASlotDroppedWhileRunning(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	cfg := f.config(f.rules(resyncRules))
	cfg.MaxBackoff = 200 * time.Millisecond
	cfg.Resync = true
	cfg.MetricsAddr = metricsAddr(t)
	f.cache("item:1")
	r := f.startConfig(cfg)
	// A first start with Resync finds no slot, and so resyncs once too.
	f.waitResyncs(cfg.MetricsAddr, 1)
	if f.exists("item:1") || f.get("version:items") != "1" {
		t.Fatalf("a first start with Resync did not flush: item:1 cached %v, version:items = %q", f.exists("item:1"), f.get("version:items"))
	}
	f.sync()
	f.cacheForResync()

	// Someone drops the slot (or a failover loses it) while the daemon runs.
	waitFor(t, 20*time.Second, func() bool {
		f.db.Exec(context.Background(), "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'pg_invalidator' AND active_pid IS NOT NULL")
		_, err := f.db.Exec(context.Background(), "SELECT pg_drop_replication_slot('pg_invalidator')")
		return err == nil
	}, func() string { return "could not drop the slot" })

	f.checkResynced(cfg.MetricsAddr, 2)
	select {
	case err := <-r.done:
		t.Fatalf("the daemon stopped after the resync: %v", err)
	default:
	}
}

// TestResyncInterruptedIsFinished stops a resync after it created the new
// slot and before its flush was done, by SIGTERM or by kill -9: the Redis
// user may not UNLINK, so the flush retries meanwhile. The next start,
// without --resync, must flush before it streams: the slot exists, but the
// changes made while it was lost were never invalidated.
func TestResyncInterruptedIsFinished(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			f, _ := lostSlotFixture(t, resyncRules, func(f *fixture) {
				f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
			})
			f.cacheForResync()
			ctx := context.Background()
			user, pw := "nounlink-"+testenv.UniqueName(), "nounlink-pw"
			if err := f.rdb.Do(ctx, "ACL", "SETUSER", user, "on", ">"+pw, "~*", "&*", "+@all", "-unlink").Err(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.rdb.Do(context.Background(), "ACL", "DELUSER", user) })
			admin := f.redisURL
			f.redisURL = strings.Replace(admin, "redis://", "redis://"+user+":"+pw+"@", 1)
			rules := f.rules(resyncRules)

			p := f.startProcess(rules, "--resync")
			keys := f.markers()
			waitFor(t, 30*time.Second, func() bool {
				return strings.HasPrefix(f.rdb.Get(ctx, keys.resync).Val(), "pending: ") && f.slotExists("pg_invalidator") &&
					strings.Contains(p.stderr.String(), "NOPERM")
			}, func() string { return "the resync did not reach its flush; the daemon logged:\n" + p.stderr.String() })
			p.cmd.Process.Signal(sig)
			select {
			case <-p.done:
			case <-time.After(20 * time.Second):
				t.Fatalf("the daemon did not stop on %s", sig)
			}
			if !f.exists("item:1") {
				t.Fatal("item:1 is gone before the flush could run: the test proves nothing")
			}

			// The user may UNLINK again; the next start has no --resync.
			if err := f.rdb.Do(ctx, "ACL", "SETUSER", user, "+unlink").Err(); err != nil {
				t.Fatal(err)
			}
			started := time.Now()
			p = f.startProcess(rules)
			f.waitGone("item:1", "item:2000", "items:cat:3")
			t.Logf("after %s, the next start flushed %s after it started", sig, time.Since(started).Round(time.Millisecond))
			waitFor(t, 10*time.Second, func() bool { return strings.HasPrefix(f.rdb.Get(ctx, keys.resync).Val(), "done: ") },
				func() string { return "the resync marker is " + f.rdb.Get(ctx, keys.resync).Val() })
			if !strings.Contains(p.stderr.String(), "stopped before its flush was done") {
				t.Errorf("the restarted daemon did not say it finished a resync:\n%s", p.stderr)
			}
			f.cache("item:9")
			f.exec("UPDATE items SET v = v + 1 WHERE id = 9")
			f.waitGone("item:9")
		})
	}
}

// dryRunOutput is one line of run --dry-run.
type dryRunOutput struct {
	XID        uint32          `json:"xid"`
	LSN        string          `json:"lsn"`
	CommitTime string          `json:"commit_time"`
	Version    string          `json:"version"`
	Partial    bool            `json:"partial"`
	Commands   []dryRunCommand `json:"commands"`
}

type dryRunCommand struct {
	Action string `json:"action"`
	Key    string `json:"key"`
}

// dryRunLines parses the complete lines written so far.
func dryRunLines(t *testing.T, out *testenv.SyncBuffer) []dryRunOutput {
	t.Helper()
	var lines []dryRunOutput
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var l dryRunOutput
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("dry-run line %q: %v", sc.Text(), err)
		}
		lines = append(lines, l)
	}
	return lines
}

func TestDryRunPrintsCommandsAndTouchesNothing(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	cfg := f.config(f.rules(itemsRules))
	cfg.Targets[0].Redis.URL = "redis://127.0.0.1:1/0" // nothing listens: a dry run must not need Redis
	out := &testenv.SyncBuffer{}
	cfg.DryRun, cfg.DryRunOut = true, out
	cfg.DecodingWorkMem = "64kB" // the large transaction below is streamed while it runs

	// Without the publication it refuses, says why, and creates nothing.
	err := daemon.Run(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "pg-invalidator setup") || !strings.Contains(err.Error(), "CREATE PUBLICATION") {
		t.Fatalf("dry run without a publication = %v, want an error pointing at setup", err)
	}
	var pubs int
	f.db.QueryRow(context.Background(), "SELECT count(*) FROM pg_publication").Scan(&pubs)
	if pubs != 0 {
		t.Fatal("the dry run created a publication")
	}
	f.exec(replication.CreatePublicationSQL("pg_invalidator", cfg.Rules.Tables()))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- daemon.Run(ctx, cfg) }()
	// Wait for the temporary slot to stream. (It is active while being
	// created too, before the position it starts from is fixed.)
	waitFor(t, 30*time.Second, func() bool {
		select {
		case err := <-done:
			t.Fatalf("dry run stopped before streaming: %v", err)
		default:
		}
		var n int
		f.db.QueryRow(context.Background(), `
SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
WHERE s.database = current_database() AND s.temporary AND r.state = 'streaming'`).Scan(&n)
		return n == 1
	}, func() string { return "no temporary slot streaming" })

	f.cache("item:5", "items:cat:5", "items:cat:6")
	f.exec("UPDATE items SET cat = 6 WHERE id = 5") // item 5 moves from category 5 to 6
	var lines []dryRunOutput
	waitFor(t, 20*time.Second, func() bool { lines = dryRunLines(t, out); return len(lines) >= 1 },
		func() string { return "no dry-run line" })
	got := lines[0]
	var cmds []string
	for _, c := range got.Commands {
		cmds = append(cmds, c.Action+" "+c.Key)
	}
	slices.Sort(cmds)
	want := []string{"del " + f.key("item:5"), "del " + f.key("items:cat:5"), "del " + f.key("items:cat:6")}
	if !slices.Equal(cmds, want) {
		t.Errorf("commands = %q, want %q", cmds, want)
	}
	if got.XID == 0 || got.LSN == "" || got.Partial {
		t.Errorf("line = %+v, want an xid, an lsn and no partial", got)
	}
	if _, err := time.Parse(time.RFC3339Nano, got.CommitTime); err != nil {
		t.Errorf("commit_time %q: %v", got.CommitTime, err)
	}
	if lsn, err := pglogrepl.ParseLSN(got.LSN); err != nil || len(got.Version) != 16 ||
		got.Version <= pginvalidator.LSN(lsn).VersionValue() {
		t.Errorf("version %q, lsn %q: want the end LSN as 16 hex digits, after the commit record's start", got.Version, got.LSN)
	}

	// A large transaction comes in bounded partial lines, then its commit.
	f.exec("UPDATE items SET v = v + 1 WHERE id <= 1500")
	waitFor(t, 20*time.Second, func() bool { lines = dryRunLines(t, out); return len(lines) >= 3 && !lines[len(lines)-1].Partial },
		func() string { return "the large transaction was not printed" })
	large := lines[1:]
	items := make(map[string]bool)
	for i, l := range large {
		if l.XID != large[0].XID {
			t.Fatalf("line %d has xid %d, want %d", i, l.XID, large[0].XID)
		}
		if len(l.Commands) > 1000 {
			t.Errorf("line %d has %d commands, want at most 1000", i, len(l.Commands))
		}
		last := i == len(large)-1
		if l.Partial == last || (l.CommitTime != "") != last || (l.Version != "") != last {
			t.Errorf("line %d: partial %v, commit_time %q, version %q; want partial lines without either, then the commit", i, l.Partial, l.CommitTime, l.Version)
		}
		for _, c := range l.Commands {
			if strings.HasPrefix(c.Key, f.key("item:")) {
				items[c.Key] = true
			}
		}
	}
	if len(items) != 1500 {
		t.Errorf("the large transaction printed %d distinct item keys, want 1500", len(items))
	}

	// Nothing was applied, and the real slot was never created.
	for _, k := range []string{"item:5", "items:cat:5", "items:cat:6"} {
		if !f.exists(k) {
			t.Errorf("the dry run deleted %s", k)
		}
	}
	var slots int
	f.db.QueryRow(context.Background(), "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pg_invalidator'").Scan(&slots)
	if slots != 0 {
		t.Error("the dry run created the slot pg_invalidator")
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("dry run after cancel = %v, want nil", err)
	}
	waitFor(t, 10*time.Second, func() bool {
		var n int
		f.db.QueryRow(context.Background(), "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()").Scan(&n)
		return n == 0
	}, func() string { return "the temporary slot outlived the dry run" })
}

func TestDryRunThroughTheBinary(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	rules := f.rules(itemsRules)
	f.exec(replication.CreatePublicationSQL("pg_invalidator", []string{"public.items", "public.marker"}))
	cmd := exec.Command(daemonBinary(t), "run", "--dry-run", "--config", rules, "--postgres", f.dbURL)
	cmd.Env = append(os.Environ(), "REDIS_URL=") // no Redis URL anywhere
	stdout, stderr := &testenv.SyncBuffer{}, &testenv.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("stderr:\n%s", stderr)
		}
	})
	waitFor(t, 30*time.Second, func() bool { return strings.Contains(stderr.String(), "dry run: streaming") },
		func() string { return "the dry run did not start streaming" })
	f.exec("DELETE FROM items WHERE id = 42")
	waitFor(t, 20*time.Second, func() bool { return len(dryRunLines(t, stdout)) == 1 },
		func() string { return "no line on stdout: " + stdout.String() })
	got := dryRunLines(t, stdout)[0]
	if len(got.Commands) != 2 || got.Commands[0] != (dryRunCommand{Action: "del", Key: f.key("item:42")}) {
		t.Errorf("commands = %+v, want item:42 and items:cat:2 deleted", got.Commands)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		if waitErr != nil {
			t.Errorf("dry run after SIGTERM: %v, want exit 0", waitErr)
		}
	case <-time.After(10 * time.Second):
		t.Error("the dry run did not stop on SIGTERM")
	}
}
