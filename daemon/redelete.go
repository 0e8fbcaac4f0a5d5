package daemon

import (
	"container/heap"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
)

// DefaultRedeleteLimit is how many re-deletes may wait before the daemon
// stops reading the stream until some are sent (Config.RedeleteLimit).
const DefaultRedeleteLimit = 1_000_000

// redeleter holds the re-deletes of rules with redelete_after: each Del key
// (or truncate's DelPattern) is sent a second time, that long after Redis
// applied it the first time. The consumer (see consumer.go) asks it when the
// next one is due and sends them (send), under its lock; nothing in it is
// safe for concurrent use.
//
// Pending re-deletes are kept in time order and coalesced: a key already
// pending is re-deleted once, at the later of the two times. A hot key must
// not postpone its re-delete for ever, though, since that would hold the
// acknowledgement for ever: a re-delete moves to a later time only up to
// its delay past the time it was first due. A later one is carried, and
// pending again, coalesced in its turn, once the first is sent. A key
// deleted without pause is so re-deleted about once per delay, and a
// transaction's acknowledgement waits at most about three delays.
//
// They hold the acknowledgement back. Each remembers the oldest transaction
// it re-deletes for, by the position of its commit record (the final LSN
// of its Begin), and hold returns the lowest such position: the pipeline
// acknowledges no further, so a transaction whose re-deletes are not sent
// is replayed after a crash, its first delete and its re-delete both. An
// acknowledgement at a transaction's commit position replays it: the
// server skips only transactions whose commit record begins before the
// acknowledged position.
type redeleter struct {
	targets fanout             // where re-deletes go; nil in a dry run, which never has any
	batch   *invalidator.Batch // scratch for send, marked Redelete
	limit   int                // full() above it
	max     int                // the most re-deletes one send takes

	queue   redeleteHeap                             // by due time
	byCmd   map[pginvalidator.Command]*redeleteEntry // the pending entry of each command (Redelete zero)
	holds   []holdCount                              // the holds of pending entries, by position, ascending; no zero counts
	fresh   []freshRedelete                          // re-deletes of commands in the sink's batch, waiting for it to be applied
	sent    []*redeleteEntry                         // the entries send took: their holds are released, their carries queued, once applied
	carried int                                      // carries of queued entries

	// onPending is told how many re-deletes are pending whenever that
	// changes (for /metrics); nil: nobody is.
	onPending func(n int)
}

// redeleteEntry is one pending re-delete.
type redeleteEntry struct {
	cmd   pginvalidator.Command // Del or DelPattern; Redelete zero
	due   time.Time
	last  time.Time     // the latest its due may move to: its first due plus its delay
	after time.Duration // its delay
	hold  pglogrepl.LSN // commit position of the oldest transaction it re-deletes for
	index int           // in the heap
	// carry is the re-delete of the same command due after last, for the
	// transactions that came too late to be coalesced into this one; nil:
	// none. Its hold is counted in holds.
	carry *redeleteEntry
}

// holdCount is how many pending entries hold the acknowledgement at lsn.
type holdCount struct {
	lsn pglogrepl.LSN
	n   int
}

// freshRedelete is a command of the sink's batch that asks for a
// re-delete, with the commit position of its transaction.
type freshRedelete struct {
	cmd  pginvalidator.Command
	hold pglogrepl.LSN
}

func newRedeleter(targets fanout, limit, max int) *redeleter {
	if limit <= 0 {
		limit = DefaultRedeleteLimit
	}
	b := invalidator.NewBatch()
	b.Redelete = true
	return &redeleter{targets: targets, batch: b, limit: limit, max: max,
		byCmd: make(map[pginvalidator.Command]*redeleteEntry)}
}

// add notes that cmd, of the transaction whose commit record is at hold,
// is in the batch about to be applied; applied schedules its re-delete once
// Redis has applied it. Commands without Redelete are ignored.
func (r *redeleter) add(cmd pginvalidator.Command, hold pglogrepl.LSN) {
	if cmd.Redelete > 0 && (cmd.Action == pginvalidator.Del || cmd.Action == pginvalidator.DelPattern) {
		r.fresh = append(r.fresh, freshRedelete{cmd, hold})
	}
}

// applied schedules the re-deletes of the batch every target has just
// applied, at now plus each one's delay.
func (r *redeleter) applied(now time.Time) {
	for _, f := range r.fresh {
		r.push(f.cmd, f.hold, now.Add(f.cmd.Redelete))
	}
	clear(r.fresh)
	r.fresh = r.fresh[:0]
	r.report()
}

// push schedules cmd's re-delete at due, for the transaction whose commit
// record is at hold. A pending one of the same command moves to due when
// that is later, up to its last; past that, the new one is carried.
func (r *redeleter) push(cmd pginvalidator.Command, hold pglogrepl.LSN, due time.Time) {
	after := cmd.Redelete
	cmd.Redelete = 0
	e := r.byCmd[cmd]
	if e == nil {
		e = &redeleteEntry{cmd: cmd, due: due, last: due.Add(after), after: after, hold: hold}
		r.byCmd[cmd] = e
		heap.Push(&r.queue, e)
		r.holdAt(hold)
		return
	}
	switch {
	case !due.After(e.due): // its re-delete comes late enough already
	case !due.After(e.last):
		e.due = due
		heap.Fix(&r.queue, e.index)
	case e.carry == nil:
		e.carry = &redeleteEntry{cmd: cmd, due: due, last: due.Add(after), after: after, hold: hold}
		r.carried++
		r.holdAt(hold)
		return
	default:
		if due.After(e.carry.due) {
			e.carry.due = due
			e.carry.last = due.Add(e.carry.after)
		}
		return
	}
	if hold < e.hold { // not within a session: positions only grow
		r.release(e.hold)
		e.hold = hold
		r.holdAt(hold)
	}
}

// holdAt counts one more entry holding the acknowledgement at lsn.
func (r *redeleter) holdAt(lsn pglogrepl.LSN) {
	if n := len(r.holds); n > 0 && r.holds[n-1].lsn == lsn { // the usual case: the newest transaction
		r.holds[n-1].n++
		return
	}
	i, found := slices.BinarySearchFunc(r.holds, lsn, func(h holdCount, l pglogrepl.LSN) int { return cmpLSN(h.lsn, l) })
	if found {
		r.holds[i].n++
		return
	}
	r.holds = slices.Insert(r.holds, i, holdCount{lsn, 1})
}

// release counts one entry fewer holding the acknowledgement at lsn.
func (r *redeleter) release(lsn pglogrepl.LSN) {
	i, found := slices.BinarySearchFunc(r.holds, lsn, func(h holdCount, l pglogrepl.LSN) int { return cmpLSN(h.lsn, l) })
	if !found {
		panic(fmt.Sprintf("daemon: re-delete hold at %s released but not held", lsn))
	}
	if r.holds[i].n--; r.holds[i].n == 0 {
		r.holds = slices.Delete(r.holds, i, i+1)
	}
}

func cmpLSN(a, b pglogrepl.LSN) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// hold returns the position the acknowledgement must not pass: the commit
// position of the oldest transaction with a re-delete pending. ok is false
// when none is.
func (r *redeleter) hold() (lsn pglogrepl.LSN, ok bool) {
	if len(r.holds) == 0 {
		return 0, false
	}
	return r.holds[0].lsn, true
}

// next returns when the next re-delete is due; ok is false when none is
// pending.
func (r *redeleter) next() (at time.Time, ok bool) {
	if len(r.queue) == 0 {
		return time.Time{}, false
	}
	return r.queue[0].due, true
}

// pending returns how many re-deletes wait, carried ones included.
func (r *redeleter) pending() int { return len(r.queue) + r.carried }

// full reports whether the pipeline should stop reading the stream until
// some re-deletes are sent.
func (r *redeleter) full() bool { return r.pending() >= r.limit }

// send applies the re-deletes due at now, at most max of them, to every
// target, and then lets go of the acknowledgement they held and queues
// their carries. On an error the re-deletes it took are lost with the
// session, and their transactions are replayed by the next one, since they
// were never acknowledged.
func (r *redeleter) send(ctx context.Context, now time.Time) error {
	clear(r.sent)
	r.sent = r.sent[:0]
	for len(r.queue) > 0 && !r.queue[0].due.After(now) && len(r.sent) < r.max {
		e := heap.Pop(&r.queue).(*redeleteEntry)
		delete(r.byCmd, e.cmd)
		r.batch.Add(e.cmd)
		r.sent = append(r.sent, e)
	}
	if len(r.sent) == 0 {
		return nil
	}
	if err := r.targets.Apply(ctx, r.batch); err != nil {
		return fmt.Errorf("apply re-deletes: %w", err)
	}
	for _, e := range r.sent {
		r.release(e.hold)
		if c := e.carry; c != nil { // its hold is counted already
			r.carried--
			r.byCmd[c.cmd] = c
			heap.Push(&r.queue, c)
		}
	}
	r.report()
	return nil
}

// reset drops every pending re-delete, and the holds with them: the
// session ends, and the next one replays every transaction that was not
// acknowledged, re-deletes included.
func (r *redeleter) reset() {
	clear(r.queue)
	r.queue = r.queue[:0]
	clear(r.byCmd)
	r.carried = 0
	r.holds = r.holds[:0]
	clear(r.fresh)
	r.fresh = r.fresh[:0]
	clear(r.sent)
	r.sent = r.sent[:0]
	r.batch.Reset()
	r.report()
}

func (r *redeleter) report() {
	if r.onPending != nil {
		r.onPending(r.pending())
	}
}

// redeleteHeap orders pending re-deletes by due time (container/heap).
type redeleteHeap []*redeleteEntry

func (h redeleteHeap) Len() int           { return len(h) }
func (h redeleteHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h redeleteHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *redeleteHeap) Push(x any) {
	e := x.(*redeleteEntry)
	e.index = len(*h)
	*h = append(*h, e)
}
func (h *redeleteHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return e
}

// flushRedeletes sends the Del and DelPattern commands of a flush made
// outside the stream's batches (a resync's, the catalog watch's after a
// table swap) again, each after its rule's redelete_after, as the
// redeleter repairs a TRUNCATE: a reader that read a row before the flush
// and caches it after finds its entry gone again. They are not held in the
// acknowledgement, since the flush they repeat is not part of the stream:
// a crash before one is due loses it.
type flushRedeletes struct {
	targets fanout
	log     *slog.Logger
	wg      *sync.WaitGroup // Run's: it waits for them once its ctx ends
}

// schedule sends cmds' re-deletes when each is due, until ctx ends; what
// names the flush in the log. A nil r schedules nothing.
func (r *flushRedeletes) schedule(ctx context.Context, what string, cmds []pginvalidator.Command) {
	if r == nil {
		return
	}
	byDelay := make(map[time.Duration]*invalidator.Batch)
	for _, c := range cmds {
		if c.Redelete <= 0 || (c.Action != pginvalidator.Del && c.Action != pginvalidator.DelPattern) {
			continue
		}
		b := byDelay[c.Redelete]
		if b == nil {
			b = invalidator.NewBatch()
			b.Redelete = true // counted as re-deletes in the metrics
			byDelay[c.Redelete] = b
		}
		b.Add(c)
	}
	for after, b := range byDelay {
		r.wg.Go(func() {
			t := time.NewTimer(after)
			defer t.Stop()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if err := r.targets.Apply(ctx, b); err != nil && ctx.Err() == nil {
				r.log.Warn("cannot re-delete the keys of a flush; an entry a slow reader cached from the old rows meanwhile stays until its TTL",
					"flush", what, "err", err)
			}
		})
	}
}
