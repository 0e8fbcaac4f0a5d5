package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
	"github.com/pg-invalidator/pg-invalidator/mapping"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// pipeline carries one row change from the stream to Redis and back to an
// acknowledgement. Its fields belong to the goroutine running session.
type pipeline struct {
	cfg    Config
	log    *slog.Logger
	inv    fanout // every Redis deployment; a batch counts as applied once all have applied it
	mapper *mapping.Mapper
	batch  *invalidator.Batch
	cmds   []pginvalidator.Command // scratch for one change's commands
	m      *metrics

	reloaded chan *mapping.Rules // validated rules waiting to be swapped in between transactions

	streamed bool // a session has streamed before: a missing slot now means it was lost
}

// session runs one replication connection until it fails or ctx ends.
func (p *pipeline) session(ctx context.Context) error {
	if p.streamed || p.cfg.Resync {
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
		stream.Close(cctx) // sends the final status: the last acknowledged LSN
	}()

	created, err := replication.EnsureSlot(ctx, stream.Conn(), p.cfg.Slot)
	if err != nil {
		// A lost slot is recreated here under Resync; the connection
		// stays usable for START_REPLICATION.
		if err := p.ensureSlotFailed(ctx, err); err != nil {
			return err
		}
	}
	if created {
		if err := p.slotCreated(ctx, stream.Conn()); err != nil {
			return err
		}
	}
	if err := stream.Start(ctx); err != nil {
		if p.cfg.Resync && slotInvalidated(err) {
			// A failed Start leaves the connection unusable: recreate
			// the slot, then stream from it on a new session.
			if err := p.resync(ctx, "invalidated (START_REPLICATION refused it)", true); err != nil {
				return err
			}
			return errResynced
		}
		return classifyStartError(err, p.cfg.Slot)
	}
	p.streamed = true
	p.m.streaming.Store(true)
	defer p.m.streaming.Store(false)
	p.log.Info("streaming", "slot", p.cfg.Slot, "publication", p.cfg.Publication)

	// The reader runs on its own goroutine and keeps answering the server
	// while this one waits on Redis.
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	events := make(chan []replication.Event, 4)
	streamErr := make(chan error, 1)
	readerDone := make(chan struct{})
	go func() { streamErr <- stream.Run(sctx, events); close(readerDone) }()

	err = p.consume(ctx, stream, events, streamErr)
	stop()
	<-readerDone    // the deferred Close may write to the connection only after the reader left it
	p.batch.Reset() // unacknowledged work is replayed by the next session
	p.m.discard()
	return err
}

// consume applies events until the stream fails or ctx ends.
func (p *pipeline) consume(ctx context.Context, stream *replication.Stream, events <-chan []replication.Event, streamErr <-chan error) error {
	// applyCtx outlives ctx by ShutdownGrace, so that a batch in flight at
	// SIGTERM can still finish and be acknowledged.
	applyCtx, cancelApply := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelApply()
	stopGrace := context.AfterFunc(ctx, func() { time.AfterFunc(p.cfg.ShutdownGrace, cancelApply) })
	defer stopGrace()

	var (
		inTx     bool
		xid      uint32
		ackable  pglogrepl.LSN // end LSN of the last transaction complete in the batch
		batchTxs int
		commitAt time.Time
		// pendingRules are reloaded rules waiting for the end of the
		// transaction in progress: a transaction is mapped by one rule set.
		pendingRules *mapping.Rules
	)
	flush := func() error {
		sent := p.batch.Len() > 0
		if sent {
			if err := p.inv.Apply(applyCtx, p.batch); err != nil {
				return fmt.Errorf("apply batch: %w", err)
			}
		}
		p.m.applied(time.Now())
		if ackable != 0 {
			stream.Ack(ackable)
			p.m.ack(stream.Acked())
			if p.log.Enabled(ctx, slog.LevelDebug) {
				p.log.Debug("acknowledged", "lsn", ackable.String(), "xid", xid, "txs", batchTxs,
					"lag", time.Since(commitAt).String())
			}
			ackable, batchTxs = 0, 0
		}
		return nil
	}

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
				p.m.see(ev.LSN)
			case replication.RowChange:
				p.m.rowChange(&ev.Change)
				p.cmds = p.mapper.Commands(p.cmds[:0], &ev.Change)
				for _, c := range p.cmds {
					p.batch.Add(c)
				}
				// A large transaction is applied in bounded chunks as it
				// arrives; only its commit can be acknowledged.
				if p.batch.Len() >= p.cfg.MaxBatch {
					if err := flush(); err != nil {
						return err
					}
				}
			case replication.Commit:
				inTx = false
				p.batch.EndTx()
				ackable, commitAt = ev.LSN, ev.CommitTime
				batchTxs++
				p.m.committed(ev.LSN, ev.CommitTime)
				if pendingRules != nil {
					p.swapRules(pendingRules)
					pendingRules = nil
				}
			case replication.Idle:
				// Everything the server sent before this keepalive is in the
				// batch or applied, so once the batch is applied the slot
				// may move to the server's position, even when the
				// published tables were quiet and the WAL was busy.
				if !inTx {
					ackable = max(ackable, ev.LSN)
				}
				p.m.see(ev.LSN)
			}
		}
		// Flush when the stream has run dry: no fixed delay, and a batch as
		// large as the backlog allows.
		// A long run of transactions with nothing to send is still flushed
		// now and then, so that they are acknowledged.
		if len(events) == 0 || p.batch.Len() >= p.cfg.MaxBatch || batchTxs >= p.cfg.MaxBatch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
}

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
	slot, err := replication.ReadSlot(ctx, conn, p.cfg.Slot)
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

// classifyStartError turns a lost slot into a fatal error that says what to do.
func classifyStartError(err error, slot string) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "55000" {
		return fatal(fmt.Errorf("%w\nreplication slot %s has been invalidated (it fell behind max_slot_wal_keep_size): "+
			"changes were lost and caches may be stale; drop it with SELECT pg_drop_replication_slot('%s'), flush the affected keys, and restart; %s", err, slot, slot, resyncHint))
	}
	return err
}

// swapRules puts reloaded rules in force. It runs between transactions.
func (p *pipeline) swapRules(rules *mapping.Rules) {
	p.mapper.SetRules(rules)
	p.cfg.Rules = rules
	p.log.Info("reloaded rules in force", "file", rules.File, "tables", rules.Tables())
}
