package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/mapping"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// pipeline carries one row change from the stream to its sink and back to
// an acknowledgement, session after session. Its fields belong to the
// goroutine running session; while a session streams, its consumer (see
// consumer.go) takes turns on the sink, redel, gate, mapper, cmds and
// canaries with the stream's reader, under the consumer's lock.
type pipeline struct {
	cfg    Config
	log    *slog.Logger
	sink   sink            // where each transaction's commands go: every Redis target, or a dry run's output
	redel  *redeleter      // re-deletes waiting for their time; they hold the acknowledgement back
	later  *flushRedeletes // re-deletes of a resync's flush; nil: none
	gate   *standbyGate    // holds each batch until the standbys named in cfg.Replicas replayed it
	vis    *visibilityGate // holds each batch until its transactions are visible on the primary
	redis  fanout          // every Redis deployment, which resync flushes; nil in a dry run
	mapper *mapping.Mapper
	cmds   []pginvalidator.Command // scratch for one change's commands
	m      *metrics

	reloaded chan reload // validated rules waiting to be swapped in between transactions
	// stopping is the news, from the daemon's other connections, that the
	// server is shutting down: the session ends on it (see stopping.go).
	stopping *serverStopping

	// dryRun streams once from a temporary slot (cfg.Slot names it) that it
	// creates, instead of from the daemon's permanent slot. A lost
	// connection ends it: a new slot would skip the changes in between.
	dryRun   bool
	streamed bool // a session has streamed before
	// seen is true once this process has seen the slot exist: it streamed
	// from it, found it existing, or found it busy, as a standby does. A
	// missing slot then means it was lost, never a first start.
	seen bool
	// markers are the keys of the slot's notes in Redis (see markers.go);
	// zero until the first session has read the server's identity.
	markers markerKeys
	// resyncUnread is true once the Redis user was found unable to read
	// the resync marker, and that was logged.
	resyncUnread bool
	// remembered is true once the marker was set in every target, by this
	// process and since the last session that streamed: each reconnection
	// sets it again, in case Redis was emptied meanwhile.
	remembered bool
	// silentPID is the walsender of the last session's connection when that
	// session was dropped as silent: it may still hold the slot. 0: none.
	silentPID uint32

	// fork notes where the daemon invalidated, to find the transactions a
	// failover lost (fork.go).
	fork forkWatch

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
		reloaded: make(chan reload, 1), stopping: newServerStopping()}
	redel.onPending = func(n int) { m.redeletesPending.Set(float64(n)) }
	p.gate = newStandbyGate(cfg, m)
	p.gate.stopping = p.stopping
	if redis == nil { // a dry run prints each transaction at once
		cfg.Visibility = VisibilityOff
	}
	p.vis = newVisibilityGate(cfg, redis, m)
	p.vis.stopping = p.stopping
	if len(cfg.Replicas) > 0 {
		m.gate.Store(p.gate)
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
		Streaming:      !p.cfg.NoStreaming,
		// The walsender's limit, past which it streams a transaction (and
		// spills one it does not stream): see DefaultDecodingWorkMem.
		DecodingWorkMem: p.cfg.DecodingWorkMem,
		// A standby's slot cannot be a failover slot.
		Failover: !p.cfg.NoFailoverSlot && p.cfg.PrimaryURL == "",
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
	} else if err = p.checkFork(ctx, stream); err == nil {
		// Before the slot is ensured: between that and START_REPLICATION,
		// a slot dropped meanwhile is not told from any other refusal.
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
	p.stopping.clear() // news of an earlier server, or of this one before it streamed
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
	if !p.dryRun {
		fctx, stopSaving := context.WithCancel(ctx)
		var saving sync.WaitGroup
		saving.Go(func() { p.keepForkSaved(fctx) })
		defer saving.Wait()
		defer stopSaving()
	}
	p.m.streaming.Store(true)
	defer p.m.streaming.Store(false)
	if p.canary != nil {
		p.canary.start(stream.Messages())
		defer func() { p.canary.stop(time.Now()) }()
	}
	if p.dryRun {
		p.log.Info("dry run: streaming from a temporary slot; only transactions committed from now on are shown, and nothing is applied",
			"slot", p.cfg.Slot, "publication", p.cfg.Publication)
	} else {
		p.log.Info("streaming", "slot", p.cfg.Slot, "publication", p.cfg.Publication)
	}

	// The session ends when the server is found shutting down: a fast
	// shutdown waits for its walsender until everything sent is confirmed.
	sctx, endSession := context.WithCancelCause(ctx)
	watching := make(chan struct{})
	go func() { defer close(watching); p.watchStopping(sctx, endSession) }()
	err = p.consume(sctx, stream) // the deferred Close may write to the connection: consume returns only once the reader left it
	if cause := context.Cause(sctx); errors.Is(cause, errServerStopping) {
		err = cause
	}
	endSession(nil)
	<-watching
	var silent *replication.SilenceError
	if errors.As(err, &silent) {
		p.silentPID = stream.PID()
	}
	p.sink.reset() // unacknowledged work is replayed by the next session
	p.redel.reset()
	p.vis.reset()
	p.m.discard()
	p.canaries = p.canaries[:0]
	return err
}

// ensureSlot makes sure the daemon's permanent slot exists and can be
// streamed from, on the stream's connection, before Start.
func (p *pipeline) ensureSlot(ctx context.Context, stream *replication.Stream) error {
	stop := nudgeSnapshots(ctx, p.cfg) // on a standby, creation waits for a snapshot record
	created, err := stream.EnsureSlot(ctx)
	stop()
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
	if err := p.loadMarkers(ctx, conn); err != nil {
		return err
	}
	// Read again before each session: a standby promoted since the last
	// one may name its old primary's standby slots, and would send nothing.
	if problem, err := replication.StandbySlotsProblem(ctx, conn); err != nil {
		return err
	} else if problem != nil {
		return &ConfigError{Problems: []error{problem}}
	}
	slot, err := replication.SlotState(ctx, conn, p.cfg.Slot)
	if err != nil {
		return err
	}
	if slot.Exists {
		// A resync that created the slot and stopped before its flush
		// was done is finished now, whatever stopped it.
		return p.finishResync(ctx)
	}
	var why string
	switch {
	case p.streamed:
		why = "disappeared while the daemon was running"
	case p.seen:
		why = "disappeared while the daemon stood by for it"
	default:
		key, target, err := p.redis.slotRemembered(ctx, p.markers)
		if err != nil {
			return fmt.Errorf("look for the replication slot's marker: %w", err)
		}
		if target != "" {
			why = fmt.Sprintf("is missing, but Redis remembers that it existed (key %s", key)
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
