package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/pg-invalidator/pg-invalidator/invalidator"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// A failover can lose commits. When the standby promoted had not received
// the old primary's last transactions, they are gone from the database; but
// the daemon may have invalidated them already, and readers then cached the
// values they wrote, which the database no longer has. Those entries are
// stale, and no change will ever come to invalidate them.
//
// The daemon notes where it has invalidated: the timeline it streams on, and
// the end of the last transaction whose commands reached Redis. A promotion
// starts a new timeline, whose history says where the old one left off (the
// switchpoint). At the start of each session the daemon compares: a note on
// an older timeline, past where that timeline ended in the server's
// history, means commits it invalidated were lost, and it flushes every
// rule's keys, as a resync does. synchronized_standby_slots prevents the
// case: the daemon is then never sent what the standby has not received.
//
// The note lives in memory, for a process that reconnects after the
// failover, and in Redis (markers.invalidated), for one restarted after it:
// saved by the session's own goroutine at most once a second, never on the
// path of a batch. A process that dies within that second of invalidating
// a transaction the failover then loses is the one case missed.

// forkNote is where the daemon knows it has invalidated.
type forkNote struct {
	timeline uint32        // 0: unknown
	lsn      pglogrepl.LSN // end of the last transaction applied with commands on timeline; 0: none yet
}

func (n forkNote) String() string { return fmt.Sprintf("timeline %d lsn %s", n.timeline, n.lsn) }

// parseForkNote reads what String wrote; the zero note for anything else.
func parseForkNote(s string) forkNote {
	var n forkNote
	var lsn string
	if _, err := fmt.Sscanf(s, "timeline %d lsn %s", &n.timeline, &lsn); err != nil {
		return forkNote{}
	}
	l, err := pglogrepl.ParseLSN(lsn)
	if err != nil {
		return forkNote{}
	}
	n.lsn = l
	return n
}

// forkWatch holds the note of this process.
type forkWatch struct {
	mu    sync.Mutex // guards every field
	note  forkNote
	saved forkNote // what this process last wrote to Redis
	// known is true once note is this process's own: after its first
	// session's check, or a flush. Until then Redis's note is read.
	known bool
	// unreadLogged is set once the Redis user was found unable to read or
	// write the note, and that was logged.
	unreadLogged atomic.Bool
}

// invalidated records that the transaction ending at lsn had its commands
// applied. Under the consumer's lock, after a flush.
func (w *forkWatch) invalidated(lsn pglogrepl.LSN) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.note.lsn = max(w.note.lsn, lsn)
}

// flushed forgets what was invalidated: a flush of every key covers it.
// The note keeps its timeline, so that a session does not read Redis's
// older note again, and checkFork saves it.
func (w *forkWatch) flushed() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.note.lsn, w.known = 0, true
}

func (w *forkWatch) current() (note forkNote, known bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.note, w.known
}

// checkFork runs before each session streams: it reads the server's
// timeline, and when the note is on another one, whether the commits it
// names are in the server's history. When they are not, it flushes every
// rule's keys, with the resync's markers, so that a flush stopped half-way
// is finished by the next session. Then the note moves to the timeline.
func (p *pipeline) checkFork(ctx context.Context, stream *replication.Stream) error {
	now, err := stream.Timeline(ctx)
	if err != nil {
		return err
	}
	note, known := p.fork.current()
	if !known { // a new process: what an earlier one noted
		_, v, err := p.redis.Marker(ctx, p.markers.invalidated)
		switch {
		case errors.Is(err, invalidator.ErrNoPermission):
			p.forkUnread(err) // streams on without the check, as with no note
		case err != nil:
			return fmt.Errorf("read where the daemon last invalidated: %w", err)
		}
		note = parseForkNote(v)
	}
	if note.timeline != 0 && note.timeline != now && note.lsn != 0 {
		lost, why, err := forkLost(ctx, stream, note, now)
		if err != nil {
			return err
		}
		if lost {
			p.log.Warn("a PostgreSQL failover lost transactions whose keys the daemon had invalidated: readers may have cached what they wrote; flushing every rule's keys",
				"slot", p.cfg.Slot, "reason", why)
			if err := p.redis.resyncBegins(ctx, p.markers, p.cfg.Slot, why, time.Now()); err != nil {
				return err
			}
			if err := p.flushAll(ctx, why, false); err != nil {
				return err
			}
		}
	}
	p.fork.mu.Lock()
	if p.fork.note.timeline != now || !p.fork.known {
		p.fork.note = forkNote{timeline: now}
		if note.timeline == now && !p.fork.known {
			p.fork.note = note // the same timeline: an earlier process's note stands
		}
	}
	p.fork.known = true
	p.fork.mu.Unlock()
	if err := p.saveFork(ctx); errors.Is(err, invalidator.ErrNoPermission) {
		p.forkUnread(err)
	} else if err != nil {
		return err
	}
	return nil
}

// forkUnread logs, once per process, that the Redis user may not read or
// write the note (an ACL of an older version): a failover that loses
// transactions then goes unnoticed by a process restarted after it.
func (p *pipeline) forkUnread(err error) {
	if p.fork.unreadLogged.Swap(true) {
		return
	}
	p.log.Error("cannot read or write where the daemon last invalidated: a process restarted after a failover that lost transactions would not flush; let the Redis user read and write the markers: ACL SETUSER <user> (~"+SlotMarkerPrefix+"* +get +set), as setup --redis-acl prints",
		"key", p.markers.invalidated, "err", err)
}

// forkLost says whether the transactions note names are missing from the
// history of timeline now, and why, for the log.
func forkLost(ctx context.Context, stream *replication.Stream, note forkNote, now uint32) (bool, string, error) {
	if note.timeline > now {
		return true, fmt.Sprintf("the daemon invalidated up to %s, but the server is on the older timeline %d (restored from a backup?)", note, now), nil
	}
	end, found, err := stream.TimelineEnd(ctx, now, note.timeline)
	if err != nil {
		return false, "", err
	}
	switch {
	case !found:
		return true, fmt.Sprintf("the daemon invalidated up to %s, which is not in the history of timeline %d", note, now), nil
	case note.lsn > end:
		return true, fmt.Sprintf("the daemon invalidated up to %s, but timeline %d ended at %s in the history of timeline %d: the transactions in between were lost by the failover",
			note, note.timeline, end, now), nil
	}
	return false, "", nil
}

// saveFork writes the note to every target when it changed since the last
// write.
func (p *pipeline) saveFork(ctx context.Context) error {
	p.fork.mu.Lock()
	if !p.fork.known {
		p.fork.mu.Unlock()
		return nil // before the first check: nothing of this process's yet
	}
	note, saved := p.fork.note, p.fork.saved
	p.fork.mu.Unlock()
	if note == saved {
		return nil
	}
	if err := p.redis.SetMarker(ctx, p.markers.invalidated, note.String()); err != nil {
		return fmt.Errorf("note where the daemon invalidated: %w", err)
	}
	p.fork.mu.Lock()
	p.fork.saved = note
	p.fork.mu.Unlock()
	return nil
}

// keepForkSaved saves the note once a second until ctx ends, and once more
// then, for a session's lifetime. A failure is logged once per session and
// retried: the note is a safeguard, not a reason to stop invalidating.
func (p *pipeline) keepForkSaved(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	logged := false
	for {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), time.Second)
			p.saveFork(sctx)
			cancel()
			return
		case <-tick.C:
		}
		if err := p.saveFork(ctx); errors.Is(err, invalidator.ErrNoPermission) {
			p.forkUnread(err)
		} else if err != nil && !logged && !strings.Contains(err.Error(), context.Canceled.Error()) {
			p.log.Warn("cannot note in redis where the daemon invalidated; a restart after a failover that lost transactions would not flush",
				"key", p.markers.invalidated, "err", err)
			logged = true
		}
	}
}
