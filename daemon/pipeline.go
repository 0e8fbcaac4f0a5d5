package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/mapping"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// pipeline carries one row change from the stream to its sink and back to
// an acknowledgement. Its fields belong to the goroutine running session.
type pipeline struct {
	cfg    Config
	log    *slog.Logger
	sink   sink         // where each transaction's commands go: every Redis target, or a dry run's output
	redel  *redeleter   // re-deletes waiting for their time; they hold the acknowledgement back
	gate   *standbyGate // holds each batch until the standbys named in cfg.Replicas replayed it
	redis  fanout       // every Redis deployment, which resync flushes; nil in a dry run
	mapper *mapping.Mapper
	cmds   []pginvalidator.Command // scratch for one change's commands
	m      *metrics

	reloaded chan reload // validated rules waiting to be swapped in between transactions

	// dryRun streams once from a temporary slot (cfg.Slot names it) that it
	// creates, instead of from the daemon's permanent slot. A lost
	// connection ends it: a new slot would skip the changes in between.
	dryRun   bool
	streamed bool // a session has streamed before
	// seen is true once this process has seen the slot exist: it streamed
	// from it, found it existing, or found it busy, as a standby does. A
	// missing slot then means it was lost, never a first start.
	seen bool
	// marker is the key of the slot's marker in Redis (see SlotMarker);
	// empty until the first session has read the database's name.
	marker string
	// remembered is true once the marker was set in every target, by this
	// process and since the last session that streamed: each reconnection
	// sets it again, in case Redis was emptied meanwhile.
	remembered bool
	// silentPID is the walsender of the last session's connection when that
	// session was dropped as silent: it may still hold the slot. 0: none.
	silentPID uint32

	// canary is the end-to-end canary; nil: off (and always in a dry run).
	canary *canary
	// canaries are the tokens of the canaries whose deletion the sink
	// holds, reported to canary once it has been applied.
	canaries []string
}

// newPipeline returns a pipeline that maps changes with mapper and delivers
// the commands to s, which hands their re-deletes to redel. redis is what a
// resync flushes (nil for a dry run).
func newPipeline(cfg Config, mapper *mapping.Mapper, m *metrics, s sink, redel *redeleter, redis fanout) *pipeline {
	p := &pipeline{cfg: cfg, log: cfg.Logger, sink: s, redel: redel, redis: redis, mapper: mapper, m: m,
		reloaded: make(chan reload, 1)}
	redel.onPending = func(n int) { m.redeletesPending.Set(float64(n)) }
	p.gate = newStandbyGate(cfg, m)
	if len(cfg.Replicas) > 0 {
		m.gate = p.gate
		for _, name := range cfg.Replicas {
			m.replicaTimeouts.WithLabelValues(name)
			m.replicaLagging.WithLabelValues(name).Set(0)
		}
	}
	mapper.OnProblem = func(table, column string, err error) {
		p.log.Error("rule cannot be applied", "table", table, "column", column, "err", err)
	}
	return p
}

// session runs one replication connection until it fails or ctx ends.
func (p *pipeline) session(ctx context.Context) error {
	// Between sessions no transaction is in progress: rules reloaded
	// meanwhile (on a standby, say) go in force now.
	select {
	case r := <-p.reloaded:
		p.swapRules(r)
	default:
	}
	if p.silentPID != 0 && !p.dryRun {
		if err := p.endSilentWalsender(ctx); err != nil {
			return err
		}
	}
	// A standby that has seen the slot skips the check: should the slot
	// vanish, slotCreated finds it lost.
	if !p.dryRun && (p.streamed || p.cfg.Resync || !p.seen) {
		if err := p.requireSlot(ctx); err != nil {
			return err
		}
	}
	stream, err := replication.Connect(ctx, replication.Config{
		URL:            p.cfg.PostgresURL,
		Slot:           p.cfg.Slot,
		Publication:    p.cfg.Publication,
		StatusInterval: p.cfg.StatusInterval,
		Timeout:        p.cfg.Timeout,
		Logger:         p.log,
	})
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		stream.Close(cctx) // sends the final status: the last acknowledged LSN; a temporary slot goes with the connection
	}()

	if p.dryRun {
		err = stream.CreateTemporarySlot(ctx)
	} else {
		err = p.ensureSlot(ctx, stream)
	}
	if err != nil {
		return err
	}
	if !p.dryRun && !p.remembered {
		if err := p.rememberSlot(ctx); err != nil {
			return err
		}
	}
	if err := stream.Start(ctx); err != nil {
		if replication.SlotActive(err) {
			p.seen = true // busy: it exists, another process streams from it
		}
		if !p.dryRun && replication.SlotInvalidated(err) {
			if !p.cfg.Resync {
				return fmt.Errorf("%w; %s", err, resyncHint)
			}
			// A failed Start leaves the connection unusable: recreate
			// the slot, then stream from it on a new session.
			if err := p.resync(ctx, "invalidated (START_REPLICATION refused it)", true); err != nil {
				return err
			}
			return errResynced
		}
		return err
	}
	p.streamed, p.seen = true, true
	defer func() { p.remembered = false }()
	p.m.streaming.Store(true)
	defer p.m.streaming.Store(false)
	if p.canary != nil {
		p.canary.start(stream.Messages())
		defer p.canary.stop()
	}
	if p.dryRun {
		p.log.Info("dry run: streaming from a temporary slot; only transactions committed from now on are shown, and nothing is applied",
			"slot", p.cfg.Slot, "publication", p.cfg.Publication)
	} else {
		p.log.Info("streaming", "slot", p.cfg.Slot, "publication", p.cfg.Publication)
	}

	err = p.consume(ctx, stream) // the deferred Close may write to the connection: consume returns only once the reader left it
	var silent *replication.SilenceError
	if errors.As(err, &silent) {
		p.silentPID = stream.PID()
	}
	p.sink.reset() // unacknowledged work is replayed by the next session
	p.redel.reset()
	p.m.discard()
	p.canaries = p.canaries[:0]
	return err
}

// ensureSlot makes sure the daemon's permanent slot exists and can be
// streamed from, on the stream's connection, before Start.
func (p *pipeline) ensureSlot(ctx context.Context, stream *replication.Stream) error {
	created, err := stream.EnsureSlot(ctx)
	if err != nil {
		// A lost slot is recreated here under Resync; the connection
		// stays usable for START_REPLICATION.
		return p.ensureSlotFailed(ctx, err)
	}
	if created {
		return p.slotCreated(ctx, stream)
	}
	p.seen = true
	return nil
}

// consume runs the stream's reader and maps the events it reads, and hands
// their commands to the sink, until the stream fails or ctx ends. It
// acknowledges a transaction only once the sink has delivered it, and its
// re-deletes are sent. It sends them when they are due, between chunks of
// events, and stops reading events while too many are pending.
//
// The reader runs on its own goroutine. While the stream is behind, it
// hands chunks of events to this one through a channel, and keeps reading
// the socket while this one waits on Redis. While the stream is live, it
// handles each chunk itself (see replication.Stream.HandleLive): a live
// transaction then goes from the socket to Redis on one goroutine, as in a
// hand-written loop. mu makes the two take turns.
func (p *pipeline) consume(ctx context.Context, stream *replication.Stream) error {
	// applyCtx outlives ctx by ShutdownGrace, so that a batch in flight at
	// SIGTERM can still finish and be acknowledged. The goroutine that ends
	// it is waited for before consume returns.
	applyCtx, cancelApply := context.WithCancel(context.WithoutCancel(ctx))
	graceDone := make(chan struct{})
	go func() {
		defer close(graceDone)
		select {
		case <-ctx.Done():
		case <-applyCtx.Done():
			return
		}
		t := time.NewTimer(p.cfg.ShutdownGrace)
		defer t.Stop()
		select {
		case <-t.C:
			cancelApply()
		case <-applyCtx.Done():
		}
	}()
	defer func() { cancelApply(); <-graceDone }()

	var (
		// mu guards the state below, and the pipeline's, while a
		// goroutine handles a chunk: this one, or the reader with a live
		// chunk. closed, once set, tells the reader to hand over no more.
		mu     sync.Mutex
		closed bool

		inTx     bool
		xid      uint32
		ackable  pglogrepl.LSN // end LSN of the last transaction the sink holds complete
		applied  pglogrepl.LSN // highest position the sink has delivered; the acknowledgement may wait below it for re-deletes
		final    pglogrepl.LSN // the open transaction's commit position
		replayTo pglogrepl.LSN // where the standbys must have replayed before the sink's commands go
		batchTxs int
		commitAt time.Time
		// pendingRules are reloaded rules waiting for the end of the
		// transaction in progress: a transaction is mapped by one rule set.
		pendingRules *reload
	)
	defer func() {
		// The transaction in progress is replayed by the next session,
		// whole: the rules can go in force now.
		if pendingRules != nil {
			p.swapRules(*pendingRules)
		}
	}()
	// acknowledge tells the server the highest position delivered, unless
	// a re-delete pending holds it lower.
	acknowledge := func() {
		lsn := applied
		if held, ok := p.redel.hold(); ok && held < lsn {
			lsn = held
		}
		if lsn <= stream.Acked() {
			return
		}
		stream.Ack(lsn)
		p.m.ack(stream.Acked())
		if p.log.Enabled(ctx, slog.LevelDebug) {
			if lsn < applied {
				p.log.Debug("acknowledged", "lsn", lsn.String(), "held_below", applied.String(), "redeletes", p.redel.pending())
			} else if batchTxs > 0 {
				p.log.Debug("acknowledged", "lsn", lsn.String(), "xid", xid, "txs", batchTxs,
					"lag", time.Since(commitAt).String())
			} else { // a keepalive's position: no transaction, no lag
				p.log.Debug("acknowledged", "lsn", lsn.String(), "txs", 0)
			}
		}
	}
	flush := func() error {
		if p.sink.pending() > 0 {
			// The open transaction's commands may be in the batch: it is
			// replayed once a standby is past the start of its commit
			// record.
			if inTx {
				replayTo = max(replayTo, final+1)
			}
			if err := p.gate.wait(applyCtx, replayTo); err != nil {
				return err
			}
		}
		if err := p.sink.flush(applyCtx); err != nil {
			return err
		}
		now := time.Now()
		p.m.applied(now)
		if len(p.canaries) > 0 {
			p.canary.back(p.canaries, p.redis.appliedAt())
			p.canaries = p.canaries[:0]
		}
		if ackable != 0 {
			applied = max(applied, ackable)
			acknowledge()
			ackable, batchTxs = 0, 0
		}
		return nil
	}
	// The timer of the next re-delete; a stopped timer while none is
	// pending.
	redelTimer := time.NewTimer(time.Hour)
	redelTimer.Stop()
	defer redelTimer.Stop()
	paused := false // reading stopped on a full re-delete queue

	// While the stream is behind, a batch is not flushed each time the
	// stream runs dry, which on a backlog read in small pieces happens
	// after every few transactions: it lingers up to catchUpLinger for more,
	// so that one round trip to Redis carries many transactions.
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	defer linger.Stop()
	lingering := false

	// handle maps a chunk of events into the sink, and flushes the sink
	// when the stream has run dry; more says that another chunk is already
	// waiting. Called with mu held.
	handle := func(chunk []replication.Event, more bool) error {
		if pendingRules != nil && !inTx {
			p.swapRules(*pendingRules)
			pendingRules = nil
		}
		for i := range chunk {
			ev := &chunk[i]
			switch ev.Kind {
			case replication.Begin:
				inTx, xid, final = true, ev.XID, ev.LSN
				p.sink.begin(ev.XID, ev.LSN)
				p.m.see(ev.LSN)
			case replication.RowChange:
				p.m.rowChange(&ev.Change)
				p.m.cover.see(ev.Change.Rel) // a rule table renamed wakes the catalog watch
				p.cmds = p.mapper.Commands(p.cmds[:0], &ev.Change)
				if err := p.sink.add(&ev.Change, p.cmds); err != nil {
					return err
				}
				// A large transaction is delivered in bounded chunks as it
				// arrives; only its commit can be acknowledged.
				if p.sink.pending() >= p.cfg.MaxBatch {
					if err := flush(); err != nil {
						return err
					}
				}
			case replication.Commit:
				inTx = false
				if err := p.sink.commit(ev.LSN, ev.CommitTime); err != nil {
					return err
				}
				ackable, commitAt, replayTo = ev.LSN, ev.CommitTime, ev.LSN
				batchTxs++
				p.m.committed(ev.LSN, ev.CommitTime)
				if pendingRules != nil {
					p.swapRules(*pendingRules)
					pendingRules = nil
				}
			case replication.Canary:
				// The canary's key is deleted in the batch of its
				// transaction, like a row change's keys, and the canary
				// counts as back once that batch is applied.
				if p.canary == nil {
					break
				}
				if err := p.sink.add(nil, []pginvalidator.Command{{Action: pginvalidator.Del, Key: p.canary.key}}); err != nil {
					return err
				}
				p.canaries = append(p.canaries, ev.Token)
			case replication.Keepalive:
				// Everything the server sent before this keepalive is in the
				// sink or delivered, so once the sink has delivered it the
				// slot may move to the server's position, even when the
				// published tables were quiet and the WAL was busy.
				if !inTx {
					ackable = max(ackable, ev.LSN)
				}
				p.m.keepalive(ev.LSN)
			}
		}
		// Flush when the stream has run dry: no fixed delay, and a batch as
		// large as the backlog allows.
		// A long run of transactions with nothing to send is still flushed
		// now and then, so that they are acknowledged.
		switch {
		case p.sink.pending() >= p.cfg.MaxBatch || batchTxs >= p.cfg.MaxBatch:
		case more:
			return nil
		case stream.Behind() && catchUpLinger > 0:
			if !lingering {
				lingering = true
				linger.Reset(catchUpLinger)
			}
			return nil
		}
		if lingering {
			lingering = false
			linger.Stop()
		}
		return flush()
	}

	// The reader's share: a live chunk, handled where it was read. It
	// declines while reading is paused on a full re-delete queue, and once
	// this goroutine has stopped. A re-delete it queued wakes this
	// goroutine, which times re-deletes.
	kick := make(chan struct{}, 1)
	stream.HandleLive(func(chunk []replication.Event) (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		if closed || p.redel.full() {
			return false, nil
		}
		err := handle(chunk, false)
		if p.redel.pending() > 0 {
			select {
			case kick <- struct{}{}:
			default:
			}
		}
		return true, err
	})
	sctx, stopReader := context.WithCancel(ctx)
	events := make(chan []replication.Event, 4)
	streamErr := make(chan error, 1)
	readerDone := make(chan struct{})
	go func() { streamErr <- stream.Run(sctx, events); close(readerDone) }()
	defer func() { stopReader(); <-readerDone }()

	// step runs f with mu held; once f fails, the reader hands over no
	// more live chunks.
	step := func(f func() error) error {
		mu.Lock()
		defer mu.Unlock()
		err := f()
		if err != nil {
			closed = true
		}
		return err
	}
	// stop waits for a live chunk the reader may be handling (a batch in
	// flight at SIGTERM still has ShutdownGrace to finish), and tells the
	// reader to hand over no more.
	stop := func(err error) error {
		mu.Lock()
		defer mu.Unlock()
		closed = true
		return err
	}

	for {
		mu.Lock()
		if at, ok := p.redel.next(); ok {
			redelTimer.Reset(time.Until(at))
		} else {
			redelTimer.Stop()
		}
		// Past the limit of pending re-deletes, wait for some to be sent
		// before reading on: the reader goroutine keeps answering the
		// server meanwhile.
		in := events
		if p.redel.full() {
			in = nil
			if !paused {
				p.m.redeletePauses.Inc()
				p.log.Warn("too many re-deletes pending; reading from the stream paused until some are sent", "redeletes", p.redel.pending())
			}
		} else if paused {
			p.log.Info("reading from the stream resumed", "redeletes", p.redel.pending())
		}
		paused = in == nil
		mu.Unlock()
		var err error
		select {
		case <-ctx.Done():
			return stop(ctx.Err())
		case err := <-streamErr:
			return stop(err)
		case r := <-p.reloaded:
			err = step(func() error {
				pendingRules = &r
				return handle(nil, len(events) > 0)
			})
		case <-kick:
		case <-redelTimer.C:
			err = step(func() error {
				if err := p.redel.send(applyCtx, time.Now()); err != nil {
					return err
				}
				acknowledge()
				return nil
			})
		case chunk := <-in:
			err = step(func() error { return handle(chunk, len(events) > 0) })
			stream.Handled(chunk)
		case <-linger.C:
			err = step(func() error {
				lingering = false
				return flush()
			})
		}
		if err != nil {
			return err
		}
	}
}

// catchUpLinger is how long the consumer waits for more of a backlog
// before it flushes a batch to Redis, while the stream is behind.
const catchUpLinger = 5 * time.Millisecond

// requireSlot, before each session, tells a lost slot from a first start.
// A slot that is missing was lost when this process saw it before, or when
// a Redis target holds its marker (a process restarted after the loss).
// Without Resync a lost slot is fatal; with it, requireSlot recreates the
// slot and flushes, and it does so for a slot missing at start too, since
// the caches may hold entries older than any slot.
func (p *pipeline) requireSlot(ctx context.Context) error {
	conn, err := connect(ctx, p.cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if p.marker == "" {
		db, err := replication.CurrentDatabase(ctx, conn)
		if err != nil {
			return err
		}
		p.marker = SlotMarker(db, p.cfg.Slot)
	}
	slot, err := replication.SlotState(ctx, conn, p.cfg.Slot)
	if err != nil {
		return err
	}
	if slot.Exists {
		return nil
	}
	var why string
	switch {
	case p.streamed:
		why = "disappeared while the daemon was running"
	case p.seen:
		why = "disappeared while the daemon stood by for it"
	default:
		target, err := p.redis.MarkerIn(ctx, p.marker)
		if err != nil {
			return fmt.Errorf("look for the replication slot's marker: %w", err)
		}
		if target != "" {
			why = fmt.Sprintf("is missing, but Redis remembers that it existed (key %s", p.marker)
			if len(p.redis) > 1 || target != DefaultTarget {
				why += " in target " + target
			}
			why += "): it was lost while this process was not streaming"
		}
	}
	if p.cfg.Resync {
		if why == "" {
			why = "missing at start, and no Redis target remembers it (a first start, or an emptied Redis)"
		}
		return p.resync(ctx, why, false)
	}
	if why != "" {
		return slotLost(p.cfg.Slot, why)
	}
	return nil
}

// SlotMarkerPrefix begins the key of the marker that records, in every
// Redis target, that the daemon's slot existed: SlotMarkerPrefix, then the
// database and the slot, "pg-invalidator:slot:app:pg_invalidator".
const SlotMarkerPrefix = "pg-invalidator:slot:"

// SlotMarker is the key of the marker of slot in database db.
func SlotMarker(db, slot string) string { return SlotMarkerPrefix + db + ":" + slot }

// rememberSlot sets the slot's marker in every target, once the slot is
// known to exist (once per process on a standby, before every session that
// streams on the active daemon): a process started later that finds the
// marker but not the slot knows the slot was lost. It lives in Redis, with the entries that
// would be stale: an emptied Redis forgets the slot and holds nothing stale
// either. See docs/high-availability.md for why not in PostgreSQL.
func (p *pipeline) rememberSlot(ctx context.Context) error {
	value := fmt.Sprintf("replication slot %s existed at %s", p.cfg.Slot, time.Now().UTC().Format(time.RFC3339))
	if err := p.redis.SetMarker(ctx, p.marker, value); err != nil {
		return fmt.Errorf("set the replication slot's marker: %w", err)
	}
	p.remembered = true
	return nil
}

// endSilentWalsender ends the walsender of a connection dropped as silent
// when it still holds the slot. The server would end it only once its own
// wal_sender_timeout (60s by default) passes, and the slot stays busy until
// then. Failing to end it is logged, not returned: the slot frees itself
// later, and the daemon waits for it as a standby would.
func (p *pipeline) endSilentWalsender(ctx context.Context) error {
	conn, err := connect(ctx, p.cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	pid := p.silentPID
	p.silentPID = 0
	ended, err := replication.TerminateSlotHolder(ctx, conn, p.cfg.Slot, pid)
	switch {
	case err != nil && ctx.Err() == nil:
		p.log.Warn("could not end the walsender of the silent connection; the slot stays busy until the server's wal_sender_timeout ends it",
			"slot", p.cfg.Slot, "pid", pid, "err", err)
	case ended:
		p.log.Info("ended the walsender of the silent connection, which still held the slot", "slot", p.cfg.Slot, "pid", pid)
	}
	return nil
}

// swapRules puts reloaded rules in force, and says so to the reload that
// waits for it. It runs between transactions, or between sessions.
func (p *pipeline) swapRules(r reload) {
	p.mapper.SetRules(r.rules)
	p.cfg.Rules = r.rules
	p.log.Info("reloaded rules in force", "file", r.rules.File, "tables", r.rules.Tables())
	close(r.swapped)
}
