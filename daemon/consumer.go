package daemon

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// consumer is the heart of one session: it maps the events the stream
// reads into the sink, flushes the sink to Redis when the stream runs dry,
// sends re-deletes when they are due, and acknowledges what Redis applied.
// Its fields are the transaction state that lives across events.
//
// Two goroutines take turns on it. The loop (run) handles every chunk that
// went through the stream's channel, the timers and the reloads; the
// stream's reader handles a live chunk itself (handleLive; see
// replication.Stream.HandleLive). Each takes mu for the whole of its turn:
// every method but run and handleLive is called with mu held, and so is
// everything they touch of the pipeline (its sink, redeleter, gate, mapper,
// canaries and metrics' per-change counters). Nothing else touches them
// while the session runs.
//
// A position travels: a Commit event makes it ackable; flush, once the sink
// has delivered it, makes it applied; acknowledge hands the highest applied
// position to the stream (Stream.Ack), unless a re-delete pending holds it
// lower; the stream sends it to the server.
type consumer struct {
	p        *pipeline
	stream   *replication.Stream
	applyCtx context.Context // ends ShutdownGrace after the session's ctx: a batch in flight at SIGTERM may finish

	mu     sync.Mutex // held for a whole turn; guards every field below
	closed bool       // the loop has stopped: the reader hands over no more live chunks

	inTx    bool          // between a Begin and its Commit
	xid     uint32        // the last transaction begun
	final   pglogrepl.LSN // the open transaction's commit position (its Begin's final LSN)
	lastEnd pglogrepl.LSN // end LSN of the last transaction committed; 0: none this session
	// changedEnd is the end LSN of the last transaction committed that
	// rendered commands; 0: none this session. Once flushed, the fork
	// watch notes it.
	changedEnd pglogrepl.LSN
	// visible is true once the open transaction's first command reached
	// the sink, and the visibility gate was told of it.
	visible  bool
	ackable  pglogrepl.LSN // end LSN of the last transaction the sink holds complete; 0: none since the last flush
	applied  pglogrepl.LSN // highest position the sink has delivered; the acknowledgement may wait below it for re-deletes
	replayTo pglogrepl.LSN // where the standbys must have replayed before the sink's commands go
	batchTxs int           // transactions committed since the last flush
	commitAt time.Time     // commit time of the last transaction committed, for the log
	// pendingRules are reloaded rules waiting for the end of the
	// transaction in progress: a transaction is mapped by one rule set.
	// Nil: none.
	pendingRules *reload

	// streams are the transactions the server streams while they run
	// (replication.StreamStart), by xid, from their first block to their
	// StreamCommit or StreamAbort; block is the one whose block is open,
	// nil between blocks.
	streams map[uint32]*streamedTx
	block   *streamedTx

	// While the stream is behind, a batch is not flushed each time the
	// stream runs dry, which on a backlog read in small pieces happens after
	// every few transactions: it lingers up to catchUpLinger for more, so
	// that one round trip to Redis carries many transactions.
	linger    *time.Timer
	lingering bool

	redelTimer *time.Timer   // fires when the next re-delete is due; stopped while none is pending
	paused     bool          // reading stopped on a full re-delete queue
	kick       chan struct{} // the reader queued a re-delete, or the gate kept a late batch: the loop re-arms its timers
	// lateTimer fires every lateRecheck while the visibility gate holds a
	// late batch, to apply it again once visible; stopped otherwise.
	lateTimer *time.Timer
	lateArmed bool
}

// catchUpLinger is how long the consumer waits for more of a backlog
// before it flushes a batch to Redis, while the stream is behind.
const catchUpLinger = 5 * time.Millisecond

func newConsumer(p *pipeline, stream *replication.Stream, applyCtx context.Context) *consumer {
	c := &consumer{p: p, stream: stream, applyCtx: applyCtx,
		linger: time.NewTimer(time.Hour), redelTimer: time.NewTimer(time.Hour), lateTimer: time.NewTimer(time.Hour),
		kick: make(chan struct{}, 1), streams: make(map[uint32]*streamedTx)}
	c.linger.Stop()
	c.redelTimer.Stop()
	c.lateTimer.Stop()
	return c
}

// consume runs the stream's reader and a consumer on it until the stream
// fails or ctx ends. It acknowledges a transaction only once the sink has
// delivered it, and its re-deletes are sent. It returns only once the
// reader has left the connection.
func (p *pipeline) consume(ctx context.Context, stream *replication.Stream) error {
	applyCtx, endGrace := graceContext(ctx, p.cfg.ShutdownGrace)
	defer endGrace()
	c := newConsumer(p, stream, applyCtx)
	defer c.finish()
	defer c.end()
	return c.run(ctx)
}

// graceContext returns a context that ends grace after ctx ends, and a
// function that ends it at once and returns when its timer goroutine has.
func graceContext(ctx context.Context, grace time.Duration) (context.Context, func()) {
	gctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-ctx.Done():
		case <-gctx.Done():
			return
		}
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-t.C:
			cancel()
		case <-gctx.Done():
		}
	}()
	return gctx, func() { cancel(); <-done }
}

// run starts the stream's reader, and takes every turn that is not a live
// chunk's until the stream fails or ctx ends.
func (c *consumer) run(ctx context.Context) error {
	defer c.linger.Stop()
	defer c.redelTimer.Stop()
	defer c.lateTimer.Stop()
	c.stream.HandleLive(c.handleLive)
	sctx, stopReader := context.WithCancel(ctx)
	events := make(chan []replication.Event, 4)
	streamErr := make(chan error, 1)
	readerDone := make(chan struct{})
	go func() { streamErr <- c.stream.Run(sctx, events); close(readerDone) }()
	defer func() { stopReader(); <-readerDone }()

	for {
		in := c.arm(events)
		var err error
		select {
		case <-ctx.Done():
			return c.stop(ctx.Err())
		case err := <-streamErr:
			return c.stop(err)
		case r := <-c.p.reloaded:
			err = c.step(func() error {
				c.pendingRules = &r
				return c.handle(nil, len(events) > 0)
			})
		case <-c.kick:
		case <-c.redelTimer.C:
			err = c.step(c.sendRedeletes)
		case chunk := <-in:
			err = c.step(func() error { return c.handle(chunk, len(events) > 0) })
			c.stream.Handled(chunk)
		case <-c.linger.C:
			err = c.step(func() error {
				c.lingering = false
				return c.flush()
			})
		case <-c.lateTimer.C:
			err = c.step(c.recheckLate)
		}
		if err != nil {
			return err
		}
	}
}

// arm sets the re-delete timer for the next re-delete due, and returns the
// channel to read chunks from: events, or nil while too many re-deletes are
// pending, until some are sent. The reader keeps answering the server
// meanwhile.
func (c *consumer) arm(events chan []replication.Event) chan []replication.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.p
	if at, ok := p.redel.next(); ok {
		c.redelTimer.Reset(time.Until(at))
	} else {
		c.redelTimer.Stop()
	}
	if p.vis.pendingLate() && !c.lateArmed {
		c.lateArmed = true
		c.lateTimer.Reset(lateRecheck)
	}
	in := events
	if p.redel.full() {
		in = nil
		if !c.paused {
			p.m.redeletePauses.Inc()
			p.log.Warn("too many re-deletes pending; reading from the stream paused until some are sent", "redeletes", p.redel.pending())
		}
	} else if c.paused {
		p.log.Info("reading from the stream resumed", "redeletes", p.redel.pending())
	}
	c.paused = in == nil
	return in
}

// handleLive is the reader's turn: a live chunk, handled where it was
// read. It declines while reading is paused on a full re-delete queue, and
// once the loop has stopped. A re-delete it queued wakes the loop, which
// times re-deletes.
func (c *consumer) handleLive(chunk []replication.Event) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.p.redel.full() {
		return false, nil
	}
	err := c.handle(chunk, false)
	if c.p.redel.pending() > 0 || (c.p.vis.pendingLate() && !c.lateArmed) {
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
	return true, err
}

// step runs f as the loop's turn; once f fails, the reader hands over no
// more live chunks.
func (c *consumer) step(f func() error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := f()
	if err != nil {
		c.closed = true
	}
	return err
}

// stop waits for a live chunk the reader may be handling (a batch in
// flight at SIGTERM still has ShutdownGrace to finish), tells the reader to
// hand over no more, and returns err.
func (c *consumer) stop(err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return err
}

// finish puts reloaded rules in force that waited for the transaction in
// progress: the next session replays that transaction whole.
func (c *consumer) finish() {
	if c.pendingRules != nil {
		c.p.swapRules(*c.pendingRules)
		c.pendingRules = nil
	}
}

// end drops what the session held of streamed transactions: the next
// session receives them again, from their first block.
func (c *consumer) end() {
	for xid, t := range c.streams {
		t.close()
		delete(c.streams, xid)
	}
	c.block = nil
}

// handle maps a chunk of events into the sink, and flushes the sink when
// the stream has run dry; more says that another chunk is already waiting.
func (c *consumer) handle(chunk []replication.Event, more bool) error {
	if c.pendingRules != nil && !c.inTx && len(c.streams) == 0 {
		c.finish()
	}
	for i := range chunk {
		if err := c.event(&chunk[i]); err != nil {
			return err
		}
	}
	// Flush when the stream has run dry: no fixed delay, and a batch as
	// large as the backlog allows. A long run of transactions with nothing
	// to send is still flushed now and then, so that they are acknowledged.
	switch {
	case c.p.sink.pending() >= c.p.cfg.MaxBatch || c.batchTxs >= c.p.cfg.MaxBatch:
	case more:
		return nil
	case c.stream.Behind() && catchUpLinger > 0:
		if !c.lingering {
			c.lingering = true
			c.linger.Reset(catchUpLinger)
		}
		return nil
	}
	if c.lingering {
		c.lingering = false
		c.linger.Stop()
	}
	return c.flush()
}

// event handles one event of a chunk.
func (c *consumer) event(ev *replication.Event) error {
	p := c.p
	switch ev.Kind {
	case replication.Begin:
		c.begin(ev.XID, ev.LSN)
	case replication.RowChange:
		if ev.XID != 0 && c.block != nil {
			return c.streamedChange(&ev.Change)
		}
		return c.rowChange(&ev.Change)
	case replication.Commit:
		return c.commit(ev.LSN, ev.CommitTime)
	case replication.Canary:
		// The canary's key is deleted in the batch of its transaction, like
		// a row change's keys, and the canary counts as back once that
		// batch is applied.
		if p.canary == nil {
			break
		}
		if ev.XID != 0 && c.block != nil {
			c.block.canaries = append(c.block.canaries, ev.Token)
			return c.block.add([]pginvalidator.Command{{Action: pginvalidator.Del, Key: p.canary.key}})
		}
		if err := p.sink.add(nil, []pginvalidator.Command{{Action: pginvalidator.Del, Key: p.canary.key}}); err != nil {
			return err
		}
		c.tellVisibility()
		p.canaries = append(p.canaries, ev.Token)
	case replication.StreamStart:
		t := c.streams[ev.XID]
		if t == nil {
			t = newStreamedTx(ev.XID, c.p.cfg.StreamMemory, time.Now())
			c.streams[ev.XID] = t
		}
		c.block = t
	case replication.StreamStop:
		c.block = nil
	case replication.StreamCommit:
		return c.commitStreamed(ev)
	case replication.StreamAbort:
		// A subtransaction's abort keeps the keys its rows rendered: an
		// extra delete is harmless, and the keys are not told apart by
		// subtransaction.
		if t := c.streams[ev.XID]; t != nil && ev.SubXID == ev.XID {
			t.close()
			delete(c.streams, ev.XID)
			c.p.log.Debug("streamed transaction aborted", "xid", ev.XID, "rows", t.rows)
		}
	case replication.Keepalive:
		// Everything the server sent before this keepalive is in the sink
		// or delivered, so once the sink has delivered it the slot may move
		// to the server's position, even when the published tables were
		// quiet and the WAL was busy.
		if !c.inTx {
			c.ackable = max(c.ackable, ev.LSN)
		}
		p.m.keepalive(ev.LSN)
	}
	return nil
}

// begin opens transaction xid, whose commit record is at final.
func (c *consumer) begin(xid uint32, final pglogrepl.LSN) {
	c.inTx, c.xid, c.final, c.visible = true, xid, final, false
	c.p.sink.begin(xid, final)
	c.p.m.see(final)
}

// commit closes the open transaction, whose end LSN is end: it is ackable
// once the sink has delivered it.
func (c *consumer) commit(end pglogrepl.LSN, at time.Time) error {
	p := c.p
	c.inTx = false
	if err := p.sink.commit(end, at); err != nil {
		return err
	}
	c.ackable, c.commitAt, c.replayTo, c.lastEnd = end, at, end, end
	if c.visible {
		c.changedEnd = end
	}
	c.batchTxs++
	p.m.committed(end, at)
	if len(c.streams) == 0 {
		c.finish()
	}
	return nil
}

// streamedChange maps one row change of the open streamed block into its
// transaction's commands, which wait for its StreamCommit.
func (c *consumer) streamedChange(ch *pginvalidator.Change) error {
	return c.block.change(ch.Rel, c.mapChange(ch))
}

// mapChange counts one row change and returns the commands the rules
// render from it, in the pipeline's scratch, valid until the next call.
func (c *consumer) mapChange(ch *pginvalidator.Change) []pginvalidator.Command {
	p := c.p
	p.m.rowChange(ch)
	p.m.cover.see(ch.Rel) // a rule table renamed wakes the catalog watch
	p.cmds = p.mapper.Commands(p.cmds[:0], ch)
	return p.cmds
}

// commitStreamed hands a streamed transaction's commands to the sink at its
// StreamCommit, as if it had come whole, between a Begin and a Commit, at
// this point of the stream: in commit order with the other transactions.
func (c *consumer) commitStreamed(ev *replication.Event) error {
	p := c.p
	t := c.streams[ev.XID]
	delete(c.streams, ev.XID)
	if t == nil { // it rendered nothing the session kept: a transaction of no rule table
		t = newStreamedTx(ev.XID, c.p.cfg.StreamMemory, time.Now())
	}
	defer t.close()
	began := time.Now()
	c.begin(ev.XID, ev.Final)
	// A dry run prints a transaction that changed a rule table even when
	// its rules rendered nothing: each relation is shown to the sink once.
	for _, rel := range t.rels {
		if err := p.sink.add(&pginvalidator.Change{Rel: rel}, nil); err != nil {
			return err
		}
	}
	var ch *pginvalidator.Change // nil for a canary alone, which only the Redis sink is given
	if len(t.rels) > 0 {
		ch = &pginvalidator.Change{Rel: t.rels[0]}
	}
	limit := max(p.cfg.MaxBatch, streamedBatch)
	err := t.replay(p.cfg.MaxBatch, func(cmds []pginvalidator.Command) error {
		if err := p.sink.add(ch, cmds); err != nil {
			return err
		}
		c.tellVisibility()
		if p.sink.pending() >= limit {
			return c.flush()
		}
		return nil
	})
	if err != nil {
		return err
	}
	p.canaries = append(p.canaries, t.canaries...)
	p.m.streamedTxs.Inc()
	p.m.streamedSpill.Add(float64(t.spilled()))
	if p.log.Enabled(c.applyCtx, slog.LevelDebug) {
		p.log.Debug("streamed transaction committed", "xid", ev.XID, "rows", t.rows, "spilled_bytes", t.spilled(),
			"streamed_for", began.Sub(t.firstSeen).String(), "handed_over_in", time.Since(began).String())
	}
	return c.commit(ev.LSN, ev.CommitTime)
}

// rowChange maps one row change into the sink. A large transaction is
// delivered in bounded chunks as it arrives; only its commit can be
// acknowledged.
func (c *consumer) rowChange(ch *pginvalidator.Change) error {
	p := c.p
	cmds := c.mapChange(ch)
	if err := p.sink.add(ch, cmds); err != nil {
		return err
	}
	if len(cmds) > 0 {
		c.tellVisibility()
	}
	if p.sink.pending() >= p.cfg.MaxBatch {
		return c.flush()
	}
	return nil
}

// tellVisibility tells the visibility gate, once per transaction, that
// the sink holds commands of the open transaction.
func (c *consumer) tellVisibility() {
	if !c.visible {
		c.visible = true
		c.p.vis.add(c.xid, c.final, time.Now())
	}
}

// flush waits for the transactions whose commands the sink holds to be
// visible on the primary and replayed by the standbys, delivers the
// commands, applies again the batches of transactions that turned visible
// after visibility_timeout, and acknowledges what that completed.
func (c *consumer) flush() error {
	p := c.p
	if p.sink.pending() > 0 {
		late, err := p.vis.wait(c.applyCtx)
		if err != nil {
			return err
		}
		if len(late) > 0 {
			p.vis.keep(late, p.sink.held())
		}
		// The open transaction's commands may be in the batch: it is
		// replayed once a standby is past the start of its commit record.
		if c.inTx {
			c.replayTo = max(c.replayTo, c.final+1)
		}
		if err := p.gate.wait(c.applyCtx, c.replayTo); err != nil {
			return err
		}
	}
	if err := p.sink.flush(c.applyCtx); err != nil {
		return err
	}
	if c.changedEnd != 0 {
		p.fork.invalidated(c.changedEnd)
	}
	now := time.Now()
	p.m.applied(now)
	if len(p.canaries) > 0 {
		p.canary.back(p.canaries, p.redis.appliedAt())
		p.canaries = p.canaries[:0]
	}
	late := p.vis.pendingLate()
	if late {
		if err := p.vis.again(c.applyCtx, c.past()); err != nil {
			return err
		}
	}
	if c.ackable != 0 {
		c.applied = max(c.applied, c.ackable)
		c.acknowledge()
		c.ackable, c.batchTxs = 0, 0
	} else if late {
		c.acknowledge() // a late batch applied again lets the acknowledgement move
	}
	return nil
}

// recheckLate applies again the late batches whose transactions turned
// visible. Commands the sink holds go first, through flush: the version
// keys that a batch applied again moves on must not pass those of a
// transaction not applied yet.
func (c *consumer) recheckLate() error {
	c.lateArmed = false
	if c.p.sink.pending() > 0 {
		return c.flush()
	}
	if err := c.p.vis.again(c.applyCtx, c.past()); err != nil {
		return err
	}
	c.acknowledge()
	return nil
}

// past returns a position above every one a version key of a transaction
// handled so far was set to, and below the end of every transaction still
// to come: just past the last one committed, or past the spill position
// of the open one (see invalidator.Batch.BeginTx).
func (c *consumer) past() pglogrepl.LSN {
	past := c.lastEnd + 1
	if c.inTx {
		past = max(past, c.final+2)
	}
	return past
}

// sendRedeletes sends the re-deletes due, and acknowledges what they held
// back.
func (c *consumer) sendRedeletes() error {
	if err := c.p.redel.send(c.applyCtx, time.Now()); err != nil {
		return err
	}
	c.acknowledge()
	return nil
}

// acknowledge tells the server the highest position delivered, unless a
// re-delete pending, or a late batch to apply again, holds it lower.
func (c *consumer) acknowledge() {
	p := c.p
	lsn := c.applied
	if held, ok := p.redel.hold(); ok && held < lsn {
		lsn = held
	}
	if held, ok := p.vis.hold(); ok && held < lsn {
		lsn = held
	}
	if lsn <= c.stream.Acked() {
		return
	}
	c.stream.Ack(lsn)
	p.m.ack(c.stream.Acked())
	if p.log.Enabled(c.applyCtx, slog.LevelDebug) {
		switch {
		case lsn < c.applied:
			p.log.Debug("acknowledged", "lsn", lsn.String(), "held_below", c.applied.String(), "redeletes", p.redel.pending(),
				"late", p.vis.pendingLate())
		case c.batchTxs > 0:
			p.log.Debug("acknowledged", "lsn", lsn.String(), "xid", c.xid, "txs", c.batchTxs,
				"lag", time.Since(c.commitAt).String())
		default: // a keepalive's position: no transaction, no lag
			p.log.Debug("acknowledged", "lsn", lsn.String(), "txs", 0)
		}
	}
}
