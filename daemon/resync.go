package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

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

// resync recovers from a lost slot: it notes in Redis that a resync
// begins, drops the slot if it still exists, creates a new one, and only
// then flushes every key the rules can render, each template the way a
// TRUNCATE of its table would, and notes that the flush is done. The order
// matters: the new slot already holds every change committed after the
// flush began, so none goes unseen; and a resync stopped anywhere after the
// note, kill -9 included, is finished by the next session (finishResync)
// before it streams. force drops the slot even when pg_replication_slots
// does not say wal_status lost (START_REPLICATION said it was invalidated).
func (p *pipeline) resync(ctx context.Context, why string, force bool) error {
	slot := p.cfg.Slot
	conn, err := connect(ctx, p.cfg)
	if err != nil {
		return err
	}
	if err := p.loadMarkers(ctx, conn); err != nil {
		conn.Close(context.Background())
		return err
	}
	if err := p.redis.resyncBegins(ctx, p.markers, slot, why, time.Now()); err != nil {
		conn.Close(context.Background())
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
		Failover:    !p.cfg.NoFailoverSlot && p.cfg.PrimaryURL == "",
	})
	if err != nil {
		return err
	}
	stop := nudgeSnapshots(ctx, p.cfg)
	created, err := repl.EnsureSlot(ctx)
	stop()
	cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	repl.Close(cctx)
	cancel()
	if err != nil {
		return err
	}
	if !created {
		// Another daemon on the same slot (an HA peer) found it lost too,
		// and recreated it first: it flushes, once, and notes when it is
		// done. Should it stop first, the next session here finishes.
		p.log.Info("another process recreated the lost replication slot first, and flushes the keys", "slot", slot, "reason", why)
		return nil
	}
	return p.flushAll(ctx, why, dropped)
}

// loadMarkers reads the server's identity on conn, for the keys of the
// slot's notes in Redis, unless they are known.
func (p *pipeline) loadMarkers(ctx context.Context, conn *pgx.Conn) error {
	if p.markers.slot != "" {
		return nil
	}
	id, err := replication.ReadIdentity(ctx, conn)
	if err != nil {
		return err
	}
	p.markers = newMarkerKeys(id, p.cfg.Slot)
	return nil
}

// finishResync, before a session streams from a slot that exists, finishes
// the flush of a resync that created the slot and stopped before its flush
// was done (a blip, SIGTERM, kill -9, in this process or another). The
// resync marker says so.
//
// A Redis user that may not read the note (an ACL of an older version) is
// logged once, and the session streams on as before this check existed.
func (p *pipeline) finishResync(ctx context.Context) error {
	note, err := p.redis.resyncUnfinished(ctx, p.markers)
	switch {
	case errors.Is(err, invalidator.ErrNoPermission):
		if !p.resyncUnread {
			p.resyncUnread = true
			p.log.Error("cannot read whether a resync was left unfinished: a resync stopped before its flush would go unnoticed; let the Redis user read the markers: ACL SETUSER <user> (~"+SlotMarkerPrefix+"* +get), as setup --redis-acl prints",
				"key", p.markers.resync, "err", err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("look for a resync left unfinished: %w", err)
	}
	if note == "" {
		return nil
	}
	p.log.Warn("a resync created the replication slot and stopped before its flush was done: flushing now, before streaming",
		"slot", p.cfg.Slot, "note", strings.TrimPrefix(note, resyncPending))
	return p.flushAll(ctx, "finishing a resync that stopped before its flush was done", false)
}

// flushAll runs every rule's FlushCommands on every Redis target once the
// new slot exists (or, after a failover that lost transactions, before the
// session streams: see checkFork), notes in Redis that the flush is done,
// logs the resync and counts it. When it does not finish, the resync marker still says the
// flush is to do, and the next session does it (finishResync).
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
		// Apply gives up only when ctx ends; the next session, or the next
		// start, finishes the flush.
		return fmt.Errorf("flush after recreating replication slot %s (the next start finishes it): %w", slot, err)
	}
	p.later.schedule(ctx, "resync", cmds)
	if err := p.redis.resyncFinished(ctx, p.markers, slot, time.Now()); err != nil {
		return err
	}
	p.fork.flushed()
	after := p.redis.Stats()
	p.m.resyncs.Inc()
	p.log.Warn("resync: every key the rules can render was flushed (the reason says why)",
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

// ensureSlotFailed handles an error from replication.EnsureSlot. When the
// slot is lost (invalidated) it resyncs under Resync, and otherwise
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
	if !info.Exists || !info.Invalidated() {
		return err // not lost: a wrong plugin, database or kind, which resync must not touch
	}
	if !p.cfg.Resync {
		return fmt.Errorf("%w; %s", err, resyncHint)
	}
	return p.resync(ctx, "invalidated "+info.LostHow(), false)
}
