package daemon

import (
	"context"
	"fmt"
	"log/slog"
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
	sink   sink   // where each transaction's commands go: every Redis target, or a dry run's output
	redis  fanout // every Redis deployment, which resync flushes; nil in a dry run
	mapper *mapping.Mapper
	cmds   []pginvalidator.Command // scratch for one change's commands
	m      *metrics

	reloaded chan *mapping.Rules // validated rules waiting to be swapped in between transactions

	// dryRun streams once from a temporary slot (cfg.Slot names it) that it
	// creates, instead of from the daemon's permanent slot. A lost
	// connection ends it: a new slot would skip the changes in between.
	dryRun   bool
	streamed bool // a session has streamed before: a missing slot now means it was lost
}

// newPipeline returns a pipeline that maps changes with mapper and delivers
// the commands to s. redis is what a resync flushes (nil for a dry run).
func newPipeline(cfg Config, mapper *mapping.Mapper, m *metrics, s sink, redis fanout) *pipeline {
	p := &pipeline{cfg: cfg, log: cfg.Logger, sink: s, redis: redis, mapper: mapper, m: m,
		reloaded: make(chan *mapping.Rules, 1)}
	mapper.OnProblem = func(table, column string, err error) {
		p.log.Error("rule cannot be applied", "table", table, "column", column, "err", err)
	}
	return p
}

// session runs one replication connection until it fails or ctx ends.
func (p *pipeline) session(ctx context.Context) error {
	if !p.dryRun && (p.streamed || p.cfg.Resync) {
		if err := p.requireSlot(ctx); err != nil {
			return err
		}
	}
	stream, err := replication.Connect(ctx, replication.Config{
		URL:            p.cfg.PostgresURL,
		Slot:           p.cfg.Slot,
		Publication:    p.cfg.Publication,
		StatusInterval: p.cfg.StatusInterval,
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
	if err := stream.Start(ctx); err != nil {
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
	p.streamed = true
	p.m.streaming.Store(true)
	defer p.m.streaming.Store(false)
	if p.dryRun {
		p.log.Info("dry run: streaming from a temporary slot; only transactions committed from now on are shown, and nothing is applied",
			"slot", p.cfg.Slot, "publication", p.cfg.Publication)
	} else {
		p.log.Info("streaming", "slot", p.cfg.Slot, "publication", p.cfg.Publication)
	}

	// The reader runs on its own goroutine and keeps answering the server
	// while this one waits on the sink. session waits for it before it
	// returns.
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	events := make(chan []replication.Event, 4)
	streamErr := make(chan error, 1)
	readerDone := make(chan struct{})
	go func() { streamErr <- stream.Run(sctx, events); close(readerDone) }()

	err = p.consume(ctx, stream, events, streamErr)
	stop()
	<-readerDone   // the deferred Close may write to the connection only after the reader left it
	p.sink.reset() // unacknowledged work is replayed by the next session
	p.m.discard()
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
	return nil
}

// consume maps events and hands their commands to the sink until the stream
// fails or ctx ends. It acknowledges a transaction only once the sink has
// delivered it.
func (p *pipeline) consume(ctx context.Context, stream *replication.Stream, events <-chan []replication.Event, streamErr <-chan error) error {
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
		inTx     bool
		xid      uint32
		ackable  pglogrepl.LSN // end LSN of the last transaction the sink holds complete
		batchTxs int
		commitAt time.Time
		// pendingRules are reloaded rules waiting for the end of the
		// transaction in progress: a transaction is mapped by one rule set.
		pendingRules *mapping.Rules
	)
	flush := func() error {
		if err := p.sink.flush(applyCtx); err != nil {
			return err
		}
		p.m.applied(time.Now())
		if ackable != 0 {
			stream.Ack(ackable)
			p.m.ack(stream.Acked())
			if p.log.Enabled(ctx, slog.LevelDebug) {
				if batchTxs > 0 {
					p.log.Debug("acknowledged", "lsn", ackable.String(), "xid", xid, "txs", batchTxs,
						"lag", time.Since(commitAt).String())
				} else { // a keepalive's position: no transaction, no lag
					p.log.Debug("acknowledged", "lsn", ackable.String(), "txs", 0)
				}
			}
			ackable, batchTxs = 0, 0
		}
		return nil
	}

	// While the stream is behind, a batch is not flushed each time the
	// stream runs dry, which on a backlog read in small pieces happens
	// after every few transactions: it lingers up to catchUpLinger for more,
	// so that one round trip to Redis carries many transactions.
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	defer linger.Stop()
	lingering := false

	for {
		var chunk []replication.Event
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-streamErr:
			return err
		case rules := <-p.reloaded:
			pendingRules = rules
		case chunk = <-events:
		case <-linger.C:
			lingering = false
			if err := flush(); err != nil {
				return err
			}
			continue
		}
		if pendingRules != nil && !inTx {
			p.swapRules(pendingRules)
			pendingRules = nil
		}
		for i := range chunk {
			ev := &chunk[i]
			switch ev.Kind {
			case replication.Begin:
				inTx, xid = true, ev.XID
				p.sink.begin(ev.XID, ev.LSN)
				p.m.see(ev.LSN)
			case replication.RowChange:
				p.m.rowChange(&ev.Change)
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
				ackable, commitAt = ev.LSN, ev.CommitTime
				batchTxs++
				p.m.committed(ev.LSN, ev.CommitTime)
				if pendingRules != nil {
					p.swapRules(pendingRules)
					pendingRules = nil
				}
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
		case len(events) > 0:
			continue
		case stream.Behind() && catchUpLinger > 0:
			if !lingering {
				lingering = true
				linger.Reset(catchUpLinger)
			}
			continue
		}
		if lingering {
			lingering = false
			linger.Stop()
		}
		if err := flush(); err != nil {
			return err
		}
	}
}

// catchUpLinger is how long the consumer waits for more of a backlog
// before it flushes a batch to Redis, while the stream is behind.
const catchUpLinger = 5 * time.Millisecond

// requireSlot refuses to recreate a slot that disappeared while the daemon
// was running: the changes in between are gone, and caches may be stale.
// Under Resync it recreates the slot and flushes instead, and it does so
// for a slot missing at start too: after a failover a fresh start cannot
// tell a lost slot from a first one.
func (p *pipeline) requireSlot(ctx context.Context) error {
	conn, err := connect(ctx, p.cfg.PostgresURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	slot, err := replication.SlotState(ctx, conn, p.cfg.Slot)
	if err != nil {
		return err
	}
	if !slot.Exists {
		if p.cfg.Resync {
			why := "missing at start (a first start, or lost in a failover)"
			if p.streamed {
				why = "disappeared while the daemon was running"
			}
			return p.resync(ctx, why, false)
		}
		return slotDisappeared(p.cfg.Slot)
	}
	return nil
}

// swapRules puts reloaded rules in force. It runs between transactions.
func (p *pipeline) swapRules(rules *mapping.Rules) {
	p.mapper.SetRules(rules)
	p.cfg.Rules = rules
	p.log.Info("reloaded rules in force", "file", rules.File, "tables", rules.Tables())
}
