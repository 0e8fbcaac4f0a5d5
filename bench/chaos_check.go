package main

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// The chaos run's three checks, each able to fail:
//
//   - ackChecker (while the run goes on): no transaction is acknowledged
//     before Redis applied it. Every 200 ms it reads the slot's
//     confirmed_flush_lsn, then the keys of every logged transaction not yet
//     seen applied; a transaction is applied once none of its keys holds a
//     value read before it (whose snapshot does not see its xid) and its
//     version keys hold its LSN or a later one. One the slot acknowledged
//     (confirmed_flush_lsn at or past the WAL position read right after its
//     COMMIT) whose keys still hold such a value is lost: a crash then
//     would never invalidate them. It also measures each transaction's
//     stale window, from its COMMIT to the round that saw it applied.
//   - readySampler (while the run goes on): /readyz is not 200 while
//     nothing is applied. Every 250 ms it reads each daemon's /readyz, then
//     its /metrics: a daemon answering 200 while none of its commands
//     counters for a target moved since before a transaction committed more
//     than the ready window (plus a heartbeat, the canary's period, and a
//     margin) ago says it is ready when it is not.
//   - finalCheck (at the end, once the load stopped and the daemon caught
//     up): every cached entry equals what its row says now, and no entry is
//     left of a row that is gone.

// ackInterval is the ackChecker's period: the resolution of the stale
// windows it measures.
const ackInterval = 200 * time.Millisecond

// swapWindow is the time from a table swap's start until a daemon counted
// it handled (its keys flushed): chaos_items changes committed in it are not
// streamed until the new table joins the publication, and only the flush
// after it covers them, so the slot may pass them before their keys go.
type swapWindow struct {
	start   time.Time
	mu      sync.Mutex // protects handled
	handled time.Time  // zero while open
}

func (w *swapWindow) handledAt() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.handled
}

// covers reports whether a transaction committed at t falls in the window.
func (w *swapWindow) covers(t time.Time) bool {
	if w == nil || t.Before(w.start) {
		return false
	}
	h := w.handledAt()
	return h.IsZero() || !t.After(h)
}

// ackChecker follows every logged transaction until it is applied.
type ackChecker struct {
	c       *chaos
	conn    *ctlConn     // its own connection to the primary
	next    int          // index in the commit log of the next record to take
	pending []*pendingTx // taken, not yet seen applied

	mu sync.Mutex // protects the fields below, which the report reads
	// windows is the stale window of each transaction seen applied, but
	// those of chaos_items committed in a swap's window, which wait for the
	// catalog watch's flush (up to its poll): swapped.
	windows, swapped []time.Duration
	longest          struct {
		d   time.Duration
		xid uint64
		at  time.Time // its commit
	}
	lost       []string // one line per transaction lost
	rounds     int      // rounds that read the slot and every target
	errors     int      // rounds cut short by an error (a server down)
	unverified int      // version keys found seeded or missing after their target lost its data
}

// pendingTx is a transaction not yet seen applied.
type pendingTx struct {
	rec  *txRecord
	swap *swapWindow // the swap window it committed in; nil: none
}

// itemsExempt reports whether rec's chaos_items keys may still be held
// back by an unhandled swap: only then is a stale one not a loss.
func (p *pendingTx) itemsExempt() bool {
	return p.swap != nil && p.swap.handledAt().IsZero()
}

func (a *ackChecker) run(ctx context.Context) {
	t := time.NewTicker(ackInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.round(ctx, false)
	}
}

// keyState is what one round found in one target for one key.
type keyState struct {
	target, key, value string
}

// round reads the slot's position, then every pending transaction's keys.
// With final, a transaction the slot passed that is still not applied is
// lost whatever swap it committed in.
func (a *ackChecker) round(ctx context.Context, final bool) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var confirmed uint64
	if err := a.conn.queryRow(rctx, `SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = $1`,
		[]any{chaosSlot}, &confirmed); err != nil {
		a.fail()
		return
	}
	for _, rec := range a.c.log.since(a.next) {
		a.next++
		a.pending = append(a.pending, &pendingTx{rec: rec, swap: a.c.swapFor(rec)})
	}
	if len(a.pending) == 0 {
		return
	}
	var keys []string
	seen := map[string]bool{}
	for _, p := range a.pending {
		for _, k := range p.rec.keys {
			if !seen[k.key] {
				seen[k.key] = true
				keys = append(keys, k.key)
			}
		}
		for _, k := range p.rec.versions {
			if !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	values := make([]map[string]string, len(a.c.targets))
	for i, t := range a.c.targets {
		vs, err := mget(rctx, t.client, keys)
		if err != nil {
			a.fail()
			return // a target is down: its keys say nothing this round
		}
		values[i] = vs
	}
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.rounds++
	left := a.pending[:0]
	for _, p := range a.pending {
		stale, exempt := a.staleKeys(p, values)
		switch {
		case len(stale) == 0:
			a.applied(p, now.Sub(p.rec.commit))
		case confirmed >= p.rec.after && (final || len(stale) > exempt):
			a.lost = append(a.lost, fmt.Sprintf("xid %d committed at %s (WAL %X, acknowledged: confirmed_flush_lsn %X), %s later still not applied: %s",
				p.rec.xid, p.rec.commit.UTC().Format("15:04:05.000"), p.rec.after, confirmed, now.Sub(p.rec.commit).Round(time.Millisecond),
				describe(stale)))
		default:
			left = append(left, p)
		}
	}
	a.pending = left
}

// staleKeys returns the keys of p that hold a value older than it, and how
// many of them are chaos_items keys an open swap window exempts.
func (a *ackChecker) staleKeys(p *pendingTx, values []map[string]string) (stale []keyState, exempt int) {
	for i, t := range a.c.targets {
		for _, k := range p.rec.keys {
			v, ok := values[i][k.key]
			if !ok {
				continue // gone: applied
			}
			if _, snap, ok := cachedValue(v); ok && snap.sees(p.rec.xid) {
				continue // read after the commit
			}
			stale = append(stale, keyState{t.name, k.key, v})
			if k.items && p.itemsExempt() {
				exempt++
			}
		}
		for _, k := range p.rec.versions {
			v, ok := values[i][k]
			lsn, isLSN := isLSN(v)
			switch {
			case !ok:
				continue // never set, or lost: a reader seeds a new one, under which nothing old is cached
			case isLSN && lsn > p.rec.before:
				continue // this transaction's LSN or a later one
			case strings.HasPrefix(v, "seed-") && t.lostSince(p.rec.commit):
				a.unverified++
				continue // seeded by a reader after the target lost the LSN
			}
			stale = append(stale, keyState{t.name, k, v})
		}
	}
	return stale, exempt
}

// lostSince reports whether the target lost its data after t.
func (t *chaosTarget) lostSince(at time.Time) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.lostData.After(at)
}

func (a *ackChecker) applied(p *pendingTx, window time.Duration) {
	if p.swap != nil {
		a.swapped = append(a.swapped, window)
		return
	}
	a.windows = append(a.windows, window)
	if window > a.longest.d {
		a.longest.d, a.longest.xid, a.longest.at = window, p.rec.xid, p.rec.commit
	}
}

func (a *ackChecker) fail() {
	a.mu.Lock()
	a.errors++
	a.mu.Unlock()
}

func describe(ks []keyState) string {
	var b strings.Builder
	for i, k := range ks {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s in %s = %q", k.key, k.target, k.value)
	}
	return b.String()
}

// mget GETs keys in one pipeline, and returns the values of those that
// exist.
func mget(ctx context.Context, rdb *redis.Client, keys []string) (map[string]string, error) {
	out := make(map[string]string, len(keys))
	for chunk := range slices.Chunk(keys, 1000) {
		pipe := rdb.Pipeline()
		cmds := make([]*redis.StringCmd, len(chunk))
		for i, k := range chunk {
			cmds[i] = pipe.Get(ctx, k)
		}
		if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
			return nil, err
		}
		for i, cmd := range cmds {
			v, err := cmd.Result()
			if err == redis.Nil {
				continue
			}
			if err != nil {
				return nil, err
			}
			out[chunk[i]] = v
		}
	}
	return out, nil
}

// windowStats returns the count, median, 99th percentile and longest of
// the stale windows: of the transactions a swap held back with swapped,
// else of the others.
func (a *ackChecker) windowStats(swapped bool) (n int, p50, p99, longest time.Duration) {
	a.mu.Lock()
	ws := slices.Clone(a.windows)
	if swapped {
		ws = slices.Clone(a.swapped)
	}
	a.mu.Unlock()
	if len(ws) == 0 {
		return 0, 0, 0, 0
	}
	slices.Sort(ws)
	at := func(q float64) time.Duration { return ws[min(len(ws)-1, int(q*float64(len(ws))))] }
	return len(ws), at(0.5), at(0.99), ws[len(ws)-1]
}

// The readiness sampler.

// readyInterval is the readySampler's period.
const readyInterval = 250 * time.Millisecond

// readySlack is how much later than the ready window a daemon may still
// answer 200 with nothing applied: one heartbeat, since the canary that
// reports a stall reporting no error goes out once per heartbeat, plus a
// second for the sampling and a loaded machine.
const readySlack = chaosHeartbeat + time.Second

// readySampler watches every daemon's /readyz and its applied counters.
type readySampler struct {
	c     *chaos
	procs map[int]*procState // by pid; the sampler's goroutine alone writes it, under mu

	mu         sync.Mutex // protects the fields below
	last       time.Time  // the last sample
	lastReady  bool       // some daemon answered 200 at the last sample
	notReady   time.Duration
	longestOff time.Duration // the longest stretch no daemon was ready
	offSince   time.Time     // when the current stretch began; zero: ready
	violations []string
	samples    int
}

// procState is what the sampler knows of one daemon process.
type procState struct {
	applied  map[string]float64   // by target: commands applied, as /metrics counts them
	advanced map[string]time.Time // by target: when applied last moved (the process's first scrape, before it did)
	reported map[string]bool      // by target: a violation reported since applied last moved
	counts   map[string]float64   // the last value of each of reportedCounts
}

// reportedCounts are the daemons' counters the report sums: what they did
// about the faults.
var reportedCounts = []struct{ series, what string }{
	{"pg_invalidator_reconnects_total", "sessions ended and retried"},
	{`pg_invalidator_replica_timeouts_total{standby="chaos_standby"}`, "standby given up on (readers of it could cache old rows)"},
	{"pg_invalidator_visibility_timeouts_total", "transactions applied before visible"},
	{`pg_invalidator_catalog_changes_total{change="swapped",table="public.chaos_items"}`, "swaps flushed"},
	{`pg_invalidator_catalog_changes_total{change="partition",table="public.chaos_events"}`, "partition changes flushed"},
	{"pg_invalidator_redelete_pauses_total", "re-delete queue full"},
}

// counts sums reportedCounts over every daemon process seen.
func (s *readySampler) counts() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var parts []string
	for _, rc := range reportedCounts {
		sum := 0.0
		for _, st := range s.procs {
			sum += st.counts[rc.series]
		}
		parts = append(parts, fmt.Sprintf("%s %.0f", rc.what, sum))
	}
	return strings.Join(parts, ", ")
}

func (s *readySampler) run(ctx context.Context) {
	t := time.NewTicker(readyInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.sample()
	}
}

func (s *readySampler) sample() {
	ready := false
	for _, u := range s.c.units {
		ready = s.sampleUnit(u) || ready
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples++
	if !s.last.IsZero() && !s.lastReady {
		s.notReady += now.Sub(s.last)
	}
	switch {
	case !ready && s.offSince.IsZero():
		s.offSince = now
	case ready && !s.offSince.IsZero():
		s.longestOff = max(s.longestOff, now.Sub(s.offSince))
		s.offSince = time.Time{}
	}
	s.last, s.lastReady = now, ready
}

// sampleUnit reads u's /readyz, then its /metrics, notes what it applied to
// each target, and reports whether it answered 200.
func (s *readySampler) sampleUnit(u *unit) bool {
	p, _ := u.running()
	if p == nil {
		return false
	}
	code, body := httpGetBody(u.metrics, "/readyz")
	readyAt := time.Now()
	m := scrapeMetrics(u.metrics)
	if m == nil {
		return code == http.StatusOK
	}
	scrapedAt := time.Now()
	st := s.procs[p.pid()]
	if st == nil {
		st = &procState{applied: map[string]float64{}, advanced: map[string]time.Time{}, reported: map[string]bool{},
			counts: map[string]float64{}}
		s.mu.Lock()
		s.procs[p.pid()] = st
		s.mu.Unlock()
	}
	s.mu.Lock()
	for _, rc := range reportedCounts {
		st.counts[rc.series] = m[rc.series]
	}
	s.mu.Unlock()
	for _, t := range s.c.targets {
		v := appliedCount(m, t.name)
		if prev, ok := st.applied[t.name]; !ok || v != prev {
			st.applied[t.name], st.advanced[t.name] = v, scrapedAt
			st.reported[t.name] = false
			continue
		}
		if code != http.StatusOK || st.reported[t.name] {
			continue
		}
		first, ok := s.c.firstCommitAfter(st.advanced[t.name])
		if idle := readyAt.Sub(first); ok && idle > chaosReadyWindow+readySlack {
			st.reported[t.name] = true
			s.mu.Lock()
			s.violations = append(s.violations, fmt.Sprintf("daemon %s (pid %d) answered /readyz 200 at %s with nothing applied to target %s for %s while a transaction committed at %s waited; /readyz said %q",
				u.name, p.pid(), readyAt.UTC().Format("15:04:05.000"), t.name, readyAt.Sub(st.advanced[t.name]).Round(time.Millisecond),
				first.UTC().Format("15:04:05.000"), strings.TrimSpace(body)))
			s.mu.Unlock()
		}
	}
	return code == http.StatusOK
}

// appliedCount sums what a daemon's /metrics says it applied to target:
// its commands (del, incr, version and the pattern scans), the version
// keys it left as they were, and its re-deletes.
func appliedCount(m map[string]float64, target string) float64 {
	sum := 0.0
	for series, v := range m {
		name, labels := seriesLabels(series)
		switch name {
		case "pg_invalidator_commands_total", "pg_invalidator_version_keys_kept_total", "pg_invalidator_redeletes_total":
			if labels["target"] == target {
				sum += v
			}
		}
	}
	return sum
}

// seriesLabels splits a series of the text format, name{a="x",b="y"}, into
// its name and labels. Label values here hold no quotes or commas.
func seriesLabels(series string) (string, map[string]string) {
	name, rest, ok := strings.Cut(series, "{")
	if !ok {
		return series, nil
	}
	labels := map[string]string{}
	for kv := range strings.SplitSeq(strings.TrimSuffix(rest, "}"), ",") {
		k, v, _ := strings.Cut(kv, "=")
		labels[k] = strings.Trim(v, `"`)
	}
	return name, labels
}

// firstCommitAfter returns the commit time of the first transaction logged
// after t that the daemon had to apply (not one an open swap window keeps
// out of the stream).
func (c *chaos) firstCommitAfter(t time.Time) (time.Time, bool) {
	c.log.mu.Lock()
	defer c.log.mu.Unlock()
	txs := c.log.txs
	i := sort.Search(len(txs), func(i int) bool { return txs[i].commit.After(t) })
	for ; i < len(txs); i++ {
		if txs[i].touchesOnlyItems() && c.swapFor(txs[i]) != nil {
			continue
		}
		return txs[i].commit, true
	}
	return time.Time{}, false
}

// The final check.

// finalResult is what the final check found.
type finalResult struct {
	checked int      // cached entries compared with their rows
	stale   []string // one line per entry that is not what its row says now
}

// finalCheck compares every cached entry of every target with the rows, read
// in one snapshot of the primary.
func (c *chaos) finalCheck(ctx context.Context) (finalResult, error) {
	var res finalResult
	want, err := c.currentPayloads(ctx)
	if err != nil {
		return res, err
	}
	for _, t := range c.targets {
		var keys []string
		iter := t.client.Scan(ctx, 0, chaosPrefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		if err := iter.Err(); err != nil {
			return res, fmt.Errorf("scan %s: %w", t.name, err)
		}
		values, err := mget(ctx, t.client, keys)
		if err != nil {
			return res, fmt.Errorf("read %s: %w", t.name, err)
		}
		for _, k := range keys {
			v, ok := values[k]
			if !ok {
				continue // expired or deleted since the scan
			}
			entry, expect, isEntry, known := k, "", true, true
			switch {
			case strings.HasPrefix(k, chaosPrefix+"pver:"):
				// A version key: the entry it makes reachable must be right.
				id, _ := strconv.Atoi(strings.TrimPrefix(k, chaosPrefix+"pver:"))
				entry = priceKey(id, v)
				got, err := t.client.Get(ctx, entry).Result()
				if err == redis.Nil {
					continue
				}
				if err != nil {
					return res, err
				}
				v = got
				expect, isEntry = want[priceRowKey(id)], want[priceRowKey(id)] != ""
			case strings.HasPrefix(k, chaosPrefix+"price:"), strings.HasPrefix(k, chaosPrefix+"note:"), k == chaosPrefix+"pcount":
				continue // unreachable under an old version, or never cached
			default:
				expect, known = want[k]
				isEntry = expect != ""
				if !known && !isRowKey(k) {
					res.stale = append(res.stale, fmt.Sprintf("%s in %s = %q: a key no rule of the run renders", k, t.name, v))
					continue
				}
			}
			res.checked++
			payload, _, ok := cachedValue(v)
			switch {
			case !ok:
				res.stale = append(res.stale, fmt.Sprintf("%s in %s = %q: not a value the harness wrote", entry, t.name, v))
			case !isEntry:
				res.stale = append(res.stale, fmt.Sprintf("%s in %s = %q: its row is gone", entry, t.name, v))
			case payload != expect:
				res.stale = append(res.stale, fmt.Sprintf("%s in %s = %q: the row says %q", entry, t.name, v, expect))
			}
		}
	}
	return res, nil
}

// priceRowKey is the key of chaos_prices row id in currentPayloads' map.
func priceRowKey(id int) string { return "row:price:" + strconv.Itoa(id) }

// isRowKey reports whether k is the key of a row that may not exist now:
// an item or an event, whose absence from currentPayloads means the row
// is gone.
func isRowKey(k string) bool {
	if id, ok := strings.CutPrefix(k, chaosPrefix+"item:"); ok {
		_, err := strconv.Atoi(id)
		return err == nil
	}
	if rest, ok := strings.CutPrefix(k, chaosPrefix+"event:"); ok {
		region, id, _ := strings.Cut(rest, ":")
		_, err := strconv.Atoi(id)
		return err == nil && slices.Contains(chaosRegions, region)
	}
	return false
}

// currentPayloads reads what every key should hold now, in one snapshot:
// each item, category, event, region and price (the last under
// priceRowKey). A row that is gone has no entry.
func (c *chaos) currentPayloads(ctx context.Context) (map[string]string, error) {
	want := map[string]string{}
	for cat := range chaosCats {
		want[catKey(cat)] = "0:0"
	}
	for _, r := range chaosRegions {
		want[eventsKey(r)] = "0:0"
	}
	err := c.ctl.do(ctx, func(conn *pgx.Conn) error {
		tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx)
		for _, q := range []struct{ sql, prefix string }{
			{`SELECT id::text, cat::text || ':' || ver FROM chaos_items`, chaosPrefix + "item:"},
			{`SELECT cat::text, count(*) || ':' || coalesce(sum(ver), 0) FROM chaos_items GROUP BY cat`, chaosPrefix + "cat:"},
			{`SELECT region || ':' || id, ver::text FROM chaos_events`, chaosPrefix + "event:"},
			{`SELECT region, count(*) || ':' || coalesce(sum(ver), 0) FROM chaos_events GROUP BY region`, chaosPrefix + "events:"},
			{`SELECT id::text, amount::text FROM chaos_prices`, "row:price:"},
		} {
			rows, err := tx.Query(ctx, q.sql)
			if err != nil {
				return err
			}
			for rows.Next() {
				var k, v string
				if err := rows.Scan(&k, &v); err != nil {
					return err
				}
				want[q.prefix+k] = v
			}
			if err := rows.Err(); err != nil {
				return err
			}
		}
		return nil
	})
	return want, err
}
