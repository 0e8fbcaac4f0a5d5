package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// What Config.Visibility may say.
const (
	// VisibilityOn waits, before a batch goes to Redis, until every
	// transaction whose commands it holds is visible on the primary.
	VisibilityOn = "on"
	// VisibilityAuto waits as VisibilityOn does while the server has
	// synchronous_standby_names set, as the catalog watch last read it, and
	// not otherwise.
	VisibilityAuto = "auto"
	// VisibilityOff never waits.
	VisibilityOff = "off"
)

// DefaultVisibilityTimeout is how long a transaction that is not visible
// yet may hold its batch back (Config.VisibilityTimeout).
const DefaultVisibilityTimeout = 5 * time.Second

// Polling the primary's snapshot while a batch waits: the first read at
// once, then after visibilityPollMin, doubling up to visibilityPollMax.
// Without synchronous standbys a commit turns visible microseconds after
// its flush, before the first read; with them, after a standby's round
// trip.
const (
	visibilityPollMin = 500 * time.Microsecond
	visibilityPollMax = 16 * time.Millisecond
)

// lateRecheck is how often the snapshot is read again while a batch
// applied past the timeout waits to be applied again.
const lateRecheck = 100 * time.Millisecond

// visibilityGate holds a batch of commands back until the transactions
// that caused them are visible on the primary (see replication.Snapshot):
// the walsender streams a commit once it is flushed, before its backend
// has waited for its synchronous standbys. A delete applied in between lets
// a cache-aside reader miss, read the old row, and cache it, for good.
//
// Before each flush, wait reads pg_current_snapshot() on a connection of
// its own, once per flush and only when some transaction of the batch is
// not older than the last snapshot's xmin, until each is visible. A
// transaction still not visible after the timeout (a synchronous standby
// that does not answer) does not hold invalidation back for good: its
// batch is applied then, and kept (late); once every transaction of it is
// visible, it is applied again, version keys moved past what they were set
// to. A late batch holds the acknowledgement at its oldest transaction's
// commit position, so a crash replays it.
//
// Every method but notes and oldest runs in a turn of the consumer, under
// its lock (see consumer.go); notes and oldest are read by /readyz and
// /metrics under mu.
type visibilityGate struct {
	mode    string
	timeout time.Duration
	cfg     Config // how to connect
	log     *slog.Logger
	targets fanout    // where late batches are applied again
	conn    *pgx.Conn // opened at the first read, kept; nil after an error
	failing bool      // the last read failed; logged once
	// stopping is told of each failed read, which may say the server is
	// shutting down; nil: nobody listens.
	stopping *serverStopping

	// sync is true while the server has synchronous_standby_names set, as
	// the catalog watch last read it: VisibilityAuto waits then.
	sync atomic.Bool

	xmin    uint32        // xmin of the last snapshot read: transactions older than it are visible; 0: none read
	waiting []invisibleTx // transactions whose commands the sink holds, not yet seen visible
	late    []*lateBatch  // batches applied past the timeout, to apply again once visible
	// raised is the highest position version keys were moved on to by
	// again, in this process: a later again moves them further.
	raised pglogrepl.LSN
	// showing is true while shown holds something: show has work to do.
	showing bool

	m *metrics // visibility_wait_seconds, visibility_waits_total, visibility_timeouts_total

	mu    sync.Mutex    // protects shown
	shown []invisibleTx // the transactions waited for or late, for notes and oldest; refreshed by each turn that changes them
}

// invisibleTx is a transaction whose commit was streamed and that was not
// visible on the primary when last looked at.
type invisibleTx struct {
	xid   uint32
	final pglogrepl.LSN // its commit position: the acknowledgement stays below it while it is late
	since time.Time     // when its first command reached the sink
	late  bool          // its batch was applied past the timeout
}

// lateBatch is a batch applied while some of its transactions were not
// visible: every command of it, to apply again once they are.
type lateBatch struct {
	txs   []invisibleTx
	batch *invalidator.Batch
}

func newVisibilityGate(cfg Config, targets fanout, m *metrics) *visibilityGate {
	g := &visibilityGate{mode: cfg.Visibility, timeout: cfg.VisibilityTimeout, cfg: cfg, log: cfg.Logger, targets: targets, m: m}
	m.vis.Store(g)
	return g
}

// syncStandbys records the server's synchronous_standby_names, which the
// catalog watch reads at every poll.
func (g *visibilityGate) syncStandbys(names string) {
	if g == nil {
		return
	}
	on := names != ""
	if was := g.sync.Swap(on); was == on || g.mode != VisibilityAuto {
		return
	}
	if on {
		g.log.Info("synchronous standbys are named: invalidations wait until each transaction is visible on the primary (visibility = \"auto\")",
			"synchronous_standby_names", names)
	} else {
		g.log.Info("no synchronous standby is named: invalidations no longer wait for visibility (visibility = \"auto\")")
	}
}

// on reports whether batches wait for visibility now.
func (g *visibilityGate) on() bool {
	return g.mode == VisibilityOn || (g.mode == VisibilityAuto && g.sync.Load())
}

// add notes that the sink holds commands of transaction xid, whose commit
// record is at final. The consumer calls it once per transaction, with its
// first command.
func (g *visibilityGate) add(xid uint32, final pglogrepl.LSN, now time.Time) {
	if !g.on() {
		return
	}
	late := g.isLate(xid)
	g.waiting = append(g.waiting, invisibleTx{xid: xid, final: final, since: now, late: late})
}

// isLate reports whether a batch of transaction xid was applied past the
// timeout already: a large transaction flushed in several batches waits
// once.
func (g *visibilityGate) isLate(xid uint32) bool {
	for _, l := range g.late {
		for _, tx := range l.txs {
			if tx.xid == xid {
				return true
			}
		}
	}
	return false
}

// wait returns once every transaction added since the last wait is
// visible, or late: added once already late, or still not visible after
// the timeout. It returns the late ones, whose batch is to be kept (keep).
// Only ctx ending fails it.
func (g *visibilityGate) wait(ctx context.Context) ([]invisibleTx, error) {
	if len(g.waiting) == 0 {
		return nil, nil
	}
	start := time.Now()
	defer func() { g.m.visibilityWait.Observe(time.Since(start).Seconds()) }()
	var late []invisibleTx
	pause := visibilityPollMin
	for {
		g.waiting = g.visible(g.waiting, g.olderThanXmin)
		late, g.waiting = splitLate(late, g.waiting, time.Now(), g.timeout)
		if len(g.waiting) == 0 {
			g.show()
			return late, nil
		}
		snap, err := g.snapshot(ctx)
		if err != nil && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err == nil {
			g.waiting = g.visible(g.waiting, snap.Visible)
			if len(g.waiting) == 0 {
				g.show()
				return late, nil
			}
		}
		if pause == visibilityPollMin {
			g.m.visibilityWaits.Inc()
		}
		g.show()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(pause):
		}
		pause = min(2*pause, visibilityPollMax)
	}
}

// olderThanXmin reports whether xid is older than the last snapshot's
// xmin, and so visible without another read.
func (g *visibilityGate) olderThanXmin(xid uint32) bool {
	return g.xmin != 0 && replication.Precedes(xid, g.xmin)
}

// splitLate moves from waiting to late the transactions late already, and
// those that have waited timeout or longer at now.
func splitLate(late, waiting []invisibleTx, now time.Time, timeout time.Duration) (_, _ []invisibleTx) {
	kept := waiting[:0]
	for _, tx := range waiting {
		if tx.late || now.Sub(tx.since) >= timeout {
			late = append(late, tx)
		} else {
			kept = append(kept, tx)
		}
	}
	return late, kept
}

// visible drops from txs the transactions visible says are visible.
func (g *visibilityGate) visible(txs []invisibleTx, visible func(xid uint32) bool) []invisibleTx {
	kept := txs[:0]
	for _, tx := range txs {
		if !visible(tx.xid) {
			kept = append(kept, tx)
		}
	}
	return kept
}

// snapshot reads the primary's snapshot, connecting first when needed, and
// notes its xmin. After an error the connection is closed; the next call
// opens a new one. A failure is logged once per streak: the batch waits
// for visibility up to the timeout, as for a transaction not visible.
func (g *visibilityGate) snapshot(ctx context.Context) (replication.Snapshot, error) {
	snap, err := func() (replication.Snapshot, error) {
		// No longer than the primary may stay silent: see standbyGate.positions.
		qctx, cancel := context.WithTimeout(ctx, gateQueryTimeout(g.timeout, g.cfg.Timeout))
		defer cancel()
		if g.conn == nil {
			c, err := connectPrimary(qctx, g.cfg) // where readers see commits; a standby that decodes has replayed them
			if err != nil {
				return replication.Snapshot{}, err
			}
			g.conn = c
		}
		snap, err := replication.CurrentSnapshot(qctx, g.conn)
		if err != nil {
			g.close()
		}
		return snap, err
	}()
	if err != nil && g.stopping != nil {
		g.stopping.note(err)
	}
	switch {
	case err != nil && !g.failing && ctx.Err() == nil:
		g.failing = true
		g.log.Warn("cannot read the primary's snapshot; invalidations wait up to visibility_timeout for their transactions to be visible", "err", err)
	case err == nil && g.failing:
		g.failing = false
		g.log.Info("reading the primary's snapshot again")
	}
	if err == nil {
		g.xmin = uint32(snap.Xmin)
	}
	return snap, err
}

// keep keeps batch, a copy of the batch about to be applied while the
// transactions late are not visible, to apply it again once they are. A
// nil batch (a dry run's sink) keeps nothing.
func (g *visibilityGate) keep(late []invisibleTx, batch *invalidator.Batch) {
	if batch == nil {
		return
	}
	for i := range late {
		if !late[i].late {
			late[i].late = true
			g.m.visibilityTimeouts.Inc()
			g.log.Warn("a transaction is still not visible on the primary after visibility_timeout (a synchronous standby that does not answer?): "+
				"its invalidations are applied now, and again once it is visible; the acknowledgement waits for it",
				"xid", late[i].xid, "lsn", late[i].final.String(), "waited", time.Since(late[i].since).Round(time.Millisecond).String(),
				"visibility_timeout", g.timeout.String())
		}
	}
	g.late = append(g.late, &lateBatch{txs: late, batch: batch})
	g.show()
}

// pendingLate reports whether a late batch waits to be applied again.
func (g *visibilityGate) pendingLate() bool { return len(g.late) > 0 }

// again applies again every late batch whose transactions are all visible
// now, its version keys moved on to past, and drops it. past must be above
// every position a version key has been set to, and below the end of every
// transaction still to come: the consumer passes the position just past
// the last transaction it handled, and again goes past what it set before.
//
// A transaction replayed after the session ended (its batch applied once
// more as it is) sets its version keys to its own end LSN: a key that an
// again moved further meanwhile does not move for it.
func (g *visibilityGate) again(ctx context.Context, past pglogrepl.LSN) error {
	if len(g.late) == 0 {
		return nil
	}
	past = max(past, g.raised+1)
	snap, err := g.snapshot(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return nil // tried again at the next recheck
	}
	kept := g.late[:0]
	for _, l := range g.late {
		if len(g.visible(slicesClone(l.txs), snap.Visible)) > 0 {
			kept = append(kept, l)
			continue
		}
		l.batch.RaiseVersions(pginvalidator.LSN(past))
		if err := g.targets.Apply(ctx, l.batch); err != nil {
			return fmt.Errorf("apply again the batch of a transaction that turned visible: %w", err)
		}
		if l.batch.HasVersions() {
			g.raised = past
		}
		for _, tx := range l.txs {
			g.log.Info("a transaction not visible at visibility_timeout is visible now: its invalidations were applied again",
				"xid", tx.xid, "lsn", tx.final.String(), "waited", time.Since(tx.since).Round(time.Millisecond).String())
		}
	}
	clear(g.late[len(kept):])
	g.late = kept
	g.show()
	return nil
}

// slicesClone returns a copy of txs, which visible may reorder in place.
func slicesClone(txs []invisibleTx) []invisibleTx { return append([]invisibleTx(nil), txs...) }

// hold returns the position the acknowledgement must not pass: the commit
// position of the oldest late transaction. ok is false when none is.
func (g *visibilityGate) hold() (lsn pglogrepl.LSN, ok bool) {
	for _, l := range g.late {
		for _, tx := range l.txs {
			if !ok || tx.final < lsn {
				lsn, ok = tx.final, true
			}
		}
	}
	return lsn, ok
}

// reset drops what is waited for and what is late: the session ends, and
// the next one replays every transaction not acknowledged.
func (g *visibilityGate) reset() {
	g.waiting = g.waiting[:0]
	clear(g.late)
	g.late = g.late[:0]
	g.show()
}

// close closes the connection, if any.
func (g *visibilityGate) close() {
	if g.conn != nil {
		g.conn.Close(context.Background())
		g.conn = nil
	}
}

// show refreshes what notes and oldest report.
func (g *visibilityGate) show() {
	if !g.showing && len(g.late) == 0 && len(g.waiting) == 0 {
		return
	}
	var txs []invisibleTx
	for _, l := range g.late {
		txs = append(txs, l.txs...)
	}
	txs = append(txs, g.waiting...)
	g.showing = len(txs) > 0
	g.mu.Lock()
	g.shown = txs
	g.mu.Unlock()
}

// oldest returns how long the oldest transaction waited for, or late, has
// waited at now; 0: none, and for a nil gate.
func (g *visibilityGate) oldest(now time.Time) time.Duration {
	if g == nil {
		return 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var d time.Duration
	for _, tx := range g.shown {
		d = max(d, now.Sub(tx.since))
	}
	return d
}

// notes returns the lines /readyz shows, still ready: one for the oldest
// transaction that has not been visible for a second or more, with how
// many others.
func (g *visibilityGate) notes(now time.Time) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var oldest *invisibleTx
	n := 0
	for i := range g.shown {
		tx := &g.shown[i]
		if now.Sub(tx.since) < time.Second {
			continue
		}
		n++
		if oldest == nil || tx.since.Before(oldest.since) {
			oldest = tx
		}
	}
	if oldest == nil {
		return nil
	}
	line := fmt.Sprintf("degraded: transaction %d (commit at %s) is not visible on the primary after %s (a synchronous standby that does not answer?): ",
		oldest.xid, oldest.final, now.Sub(oldest.since).Round(100*time.Millisecond))
	if oldest.late {
		line += "its invalidations were applied at visibility_timeout and are applied again once it is visible; the acknowledgement waits for it"
	} else {
		line += "its invalidations wait, up to visibility_timeout"
	}
	if n > 1 {
		line += fmt.Sprintf(" (%d transactions in all)", n)
	}
	return []string{line}
}
