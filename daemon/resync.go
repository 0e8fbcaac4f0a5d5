package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// A slot is lost when PostgreSQL invalidated it (it fell behind
// max_slot_wal_keep_size) or when it disappeared while the daemon ran (a
// failover, or someone dropped it). Either way changes went by unseen and
// any cached key may be stale. Without Config.Resync that is fatal, and the
// message says what to do; with it, resync recovers and streaming goes on.

// resyncHint ends every fatal lost-slot message: the way out that needs no
// manual flush.
const resyncHint = `or restart with --resync (or [recovery] on_slot_lost = "resync" in the rules file) to have the daemon recreate the slot and flush every key the rules can render`

// errResynced ends a session whose connection a failed START_REPLICATION
// left unusable after the slot was recreated. It is retryable: the next
// session streams from the new slot.
var errResynced = errors.New("replication slot recreated after it was lost; reconnecting to stream from it")

// slotLost is the fatal error, without Resync, for a slot that was lost:
// why says how the daemon knows.
func slotLost(slot, why string) error {
	return fatal(fmt.Errorf("replication slot %s %s (a failover, or someone dropped it): "+
		"changes made since then were not invalidated and caches may be stale; flush the affected keys, then restart the daemon to create a new slot; %s", slot, why, resyncHint))
}

// slotCreated handles a slot that EnsureSlot had to create, on stream's
// connection. On a first start without Resync that is simply the first run.
// Otherwise the slot vanished after requireSlot saw it (or after resync made
// it), or this process had seen it before: it was lost. Under Resync the new
// slot exists already, so the flush is what is left to do; without it the
// slot is dropped again and the loss is fatal.
func (p *pipeline) slotCreated(ctx context.Context, stream *replication.Stream) error {
	if !p.seen && !p.cfg.Resync {
		p.log.Info("replication slot created", "slot", p.cfg.Slot)
		return nil
	}
	const why = "disappeared while the daemon was starting a session"
	if p.cfg.Resync {
		return p.flushAll(ctx, why, false)
	}
	if err := stream.DropSlot(ctx); err != nil {
		return err
	}
	return slotLost(p.cfg.Slot, why)
}

// resync recovers from a lost slot: it drops the slot if it still exists,
// creates a new one, and only then flushes every key the rules can render,
// each template the way a TRUNCATE of its table would. The order matters:
// the new slot already holds every change committed after the flush began,
// so none goes unseen. force drops the slot even when pg_replication_slots
// does not say wal_status lost (START_REPLICATION said it was invalidated).
func (p *pipeline) resync(ctx context.Context, why string, force bool) error {
	slot := p.cfg.Slot
	conn, err := connect(ctx, p.cfg)
	if err != nil {
		return err
	}
	var dropped bool
	if force {
		dropped, err = replication.DropSlot(ctx, conn, slot)
	} else {
		dropped, err = replication.DropLostSlot(ctx, conn, slot)
	}
	conn.Close(context.Background())
	if err != nil {
		return err
	}

	repl, err := replication.Connect(ctx, replication.Config{
		URL:         p.cfg.PostgresURL,
		Slot:        slot,
		Publication: p.cfg.Publication,
		Timeout:     p.cfg.Timeout,
		Logger:      p.log,
	})
	if err != nil {
		return err
	}
	created, err := repl.EnsureSlot(ctx)
	cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	repl.Close(cctx)
	cancel()
	if err != nil {
		return err
	}
	if !created {
		// Another daemon on the same slot (an HA peer) found it lost too,
		// and recreated it first: it flushes, once.
		p.log.Info("another process recreated the lost replication slot first, and flushes the keys", "slot", slot, "reason", why)
		return nil
	}
	return p.flushAll(ctx, why, dropped)
}

// flushAll runs every rule's FlushCommands on every Redis target once the
// new slot exists, logs the resync and counts it. When the flush does not
// finish, the new slot is dropped again so that a start with Resync finds
// it missing and resyncs anew.
//
// Version keys are set to the position the new slot streams from, whatever
// they hold (see invalidator.Batch.EndResync): every transaction it sends
// ends above that position, so they move forward again from there, even
// when a failover left the new primary's WAL behind LSNs already written.
func (p *pipeline) flushAll(ctx context.Context, why string, dropped bool) error {
	slot := p.cfg.Slot
	cmds := p.cfg.Rules.FlushCommands()
	var from pginvalidator.LSN
	if slices.ContainsFunc(cmds, func(c pginvalidator.Command) bool {
		return c.Action == pginvalidator.Version || c.Action == pginvalidator.VersionPattern
	}) {
		var err error
		if from, err = p.slotStart(ctx); err != nil {
			return err
		}
	}
	b := invalidator.NewBatch()
	for _, c := range cmds {
		b.Add(c)
	}
	b.EndResync(from)
	before := p.redis.Stats()
	if err := p.redis.Apply(ctx, b); err != nil {
		// Apply gives up only when ctx ends. A start would stream from the
		// new slot without flushing, so drop it again: a start with Resync
		// then finds it missing and resyncs anew.
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if derr := dropNewSlot(dctx, p.cfg, slot); derr != nil {
			p.log.Error("resync interrupted before the flush finished, and the new replication slot could not be dropped again: caches may be stale; "+
				"flush the rules' keys by hand, or drop the slot and start with --resync", "slot", slot, "err", derr)
		} else {
			p.log.Warn("resync interrupted before the flush finished; dropped the new replication slot so that the next start with --resync starts over", "slot", slot)
		}
		return fmt.Errorf("flush after recreating replication slot %s: %w", slot, err)
	}
	after := p.redis.Stats()
	p.m.resyncs.Inc()
	p.log.Warn("resync: the replication slot was lost or missing, so a new one was created and every key the rules can render was flushed",
		"slot", slot, "reason", why, "old_slot_dropped", dropped, "commands", len(cmds),
		"keys_deleted", (after.Del+after.DelPatternKeys)-(before.Del+before.DelPatternKeys),
		"keys_incremented", (after.Incr+after.IncrPatternKeys)-(before.Incr+before.IncrPatternKeys),
		"version_keys_set", (after.Version+after.VersionPatternKeys)-(before.Version+before.VersionPatternKeys),
		"lsn", from.String())
	return nil
}

// slotStart returns where the slot, just created, streams from: its
// confirmed_flush_lsn, the consistent point it was created at.
func (p *pipeline) slotStart(ctx context.Context) (pginvalidator.LSN, error) {
	conn, err := connect(ctx, p.cfg)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	info, err := replication.SlotState(ctx, conn, p.cfg.Slot)
	if err != nil {
		return 0, err
	}
	if !info.Exists || info.ConfirmedFlushLSN == 0 {
		return 0, fmt.Errorf("read the start of replication slot %s: it has no confirmed_flush_lsn", p.cfg.Slot)
	}
	return pginvalidator.LSN(info.ConfirmedFlushLSN), nil
}

// dropNewSlot drops the slot a resync created when its flush did not finish.
func dropNewSlot(ctx context.Context, cfg Config, slot string) error {
	conn, err := connect(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = replication.DropSlot(ctx, conn, slot)
	return err
}

// ensureSlotFailed handles an error from replication.EnsureSlot. When the
// slot is lost (wal_status lost) it resyncs under Resync, and otherwise
// says how --resync would recover. Any other error is returned as it is.
func (p *pipeline) ensureSlotFailed(ctx context.Context, err error) error {
	var slotErr *replication.SlotError
	if !errors.As(err, &slotErr) {
		return err
	}
	conn, cerr := connect(ctx, p.cfg)
	if cerr != nil {
		return cerr
	}
	info, rerr := replication.SlotState(ctx, conn, p.cfg.Slot)
	conn.Close(context.Background())
	if rerr != nil {
		return rerr
	}
	if !info.Exists || info.WALStatus != "lost" {
		return err // not lost: a wrong plugin, database or kind, which resync must not touch
	}
	if !p.cfg.Resync {
		return fmt.Errorf("%w; %s", err, resyncHint)
	}
	return p.resync(ctx, "invalidated (wal_status lost)", false)
}
