package replication

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
)

// statusReporter carries the consumer's acknowledgement to the server, in
// standby status updates. A position travels in four steps:
//
//  1. The consumer calls Stream.Ack(lsn) once Redis has applied everything
//     before lsn: acked moves up to lsn, never down.
//  2. Ack asks for an update (want). While the reader runs the LiveHandler,
//     it only notes that (ackedInLive), and the reader sends the update
//     itself once the handler returns (afterLive), as a hand-written loop
//     would. Otherwise it wakes the sender goroutine (poke), unless the
//     sender already waits for the gap to end.
//  3. The sender (Stream.sendStatusLoop) sends at once, unless an update
//     went out less than minStatusGap ago and the server has not asked for
//     a reply: then it waits for the gap to end (armed), and sends then if
//     acked is still above the position last sent.
//  4. send writes the update, acked as the write, flush and apply position,
//     and notes what it sent, and when.
//
// No acknowledgement is left waiting for the next timed update: the sender
// clears armed before it reads acked, and Ack writes acked before it reads
// armed, so an Ack racing the end of a gap either is sent then or wakes the
// sender again. An Ack racing a send wakes the sender too, which sends again
// once the gap has passed.
//
// The sender also sends every StatusInterval whatever happened, which keeps
// the server's wal_sender_timeout from firing while the consumer waits on
// Redis. Any goroutine may call Ack and want; send is serialised by mu.
type statusReporter struct {
	conn    *pgconn.PgConn
	timeout time.Duration // how long one write may take

	acked atomic.Uint64 // highest position the consumer applied (step 1)
	sent  atomic.Uint64 // the position in the last update written
	last  atomic.Int64  // when the last update went out (see epoch)
	// armed is true while the sender waits for minStatusGap to pass, and
	// will then send what is acknowledged; replyNow while the server has
	// asked for a reply.
	armed, replyNow atomic.Bool
	// inLive is true while the reader runs the LiveHandler; an Ack then
	// sets ackedInLive instead of waking the sender.
	inLive, ackedInLive atomic.Bool
	poke                chan struct{} // wakes the sender; buffered, one wake-up pending at most

	mu    sync.Mutex   // serialises writes of updates to conn
	count atomic.Int64 // updates sent, for tests
	// beforeWrite, when not nil, runs in send after the position to send
	// was read and before it is written: a test's seam for a race.
	beforeWrite func()
}

func newStatusReporter(timeout time.Duration) *statusReporter {
	return &statusReporter{timeout: timeout, poke: make(chan struct{}, 1)}
}

// minStatusGap is the shortest time between two status updates sent for
// acknowledgements. Following live traffic, the consumer acknowledges every
// transaction; at thousands a second, a status update each would cost the
// walsender a read and a slot update each, on the core it needs to decode.
// An acknowledgement then waits at most this long to reach the server.
const minStatusGap = 10 * time.Millisecond

// ack records that everything up to lsn has been applied (step 1), and asks
// for an update (step 2).
func (r *statusReporter) ack(lsn pglogrepl.LSN) {
	for {
		cur := r.acked.Load()
		if uint64(lsn) <= cur {
			return
		}
		if r.acked.CompareAndSwap(cur, uint64(lsn)) {
			break
		}
	}
	if r.inLive.Load() {
		r.ackedInLive.Store(true)
		return
	}
	r.want()
}

// acknowledged returns the highest position acknowledged.
func (r *statusReporter) acknowledged() pglogrepl.LSN { return pglogrepl.LSN(r.acked.Load()) }

// since returns how long ago the last update went out.
func (r *statusReporter) since() time.Duration {
	return time.Since(epoch) - time.Duration(r.last.Load())
}

// want wakes the sender for an update, unless it is armed: then it sends
// acked once the gap has passed.
func (r *statusReporter) want() {
	if r.armed.Load() {
		return
	}
	r.wake()
}

// wake wakes the sender, unless a wake-up is pending already.
func (r *statusReporter) wake() {
	select {
	case r.poke <- struct{}{}:
	default:
	}
}

// replyAsked notes that the server asked for a reply: the next update goes
// at once, whatever minStatusGap says.
func (r *statusReporter) replyAsked() {
	r.replyNow.Store(true)
	r.wake()
}

// live runs handle as the reader's turn with a live chunk, and then sends
// the update its acknowledgements asked for: at once when the gap allows,
// or through the sender once it has passed.
func (r *statusReporter) live(handle func() error) error {
	r.inLive.Store(true)
	err := handle()
	r.inLive.Store(false)
	if r.ackedInLive.Swap(false) {
		if r.since() >= minStatusGap {
			if serr := r.send(false); serr != nil && err == nil {
				err = serr
			}
		} else {
			r.want()
		}
	}
	return err
}

// woken returns how long the sender, woken, must wait before it sends;
// 0: send now. When it must wait, the sender is armed from now on.
func (r *statusReporter) woken() time.Duration {
	if r.replyNow.Load() {
		return 0
	}
	wait := minStatusGap - r.since()
	if wait > 0 {
		r.armed.Store(true)
	}
	return max(0, wait)
}

// gapEnded disarms the sender once the gap has passed, and reports whether
// an update is still to send: acked is above what was last sent.
func (r *statusReporter) gapEnded() bool {
	r.armed.Store(false) // before acked is read: see the type's comment
	return r.acked.Load() > r.sent.Load()
}

// send writes the acknowledged position in an update, asking the server
// for a reply when replyRequested (step 4). A write that cannot finish
// within the timeout (the socket full, the server not reading) fails.
func (r *statusReporter) send(replyRequested bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	lsn := pglogrepl.LSN(r.acked.Load())
	if r.beforeWrite != nil {
		r.beforeWrite()
	}
	nc := r.conn.Conn()
	nc.SetWriteDeadline(time.Now().Add(r.timeout))
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), r.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: lsn,
		WALFlushPosition: lsn,
		WALApplyPosition: lsn,
		ReplyRequested:   replyRequested,
	})
	nc.SetWriteDeadline(time.Time{})
	if err != nil {
		return fmt.Errorf("send standby status update at %s: %w", lsn, err)
	}
	r.sent.Store(uint64(lsn))
	r.last.Store(int64(time.Since(epoch)))
	r.count.Add(1)
	r.replyNow.Store(false)
	return nil
}
