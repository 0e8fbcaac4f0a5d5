package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
)

// sink is where the pipeline delivers the commands the rules render from
// each transaction. Run's sink applies them to every Redis target; a dry
// run's prints them. Both are fed by the same consumer (consumer.go), so
// a dry run sees the same transactions, row changes and commands as a run,
// in WAL order, by construction.
type sink interface {
	// begin opens transaction xid, whose commit record is at final.
	begin(xid uint32, final pglogrepl.LSN)
	// add takes the commands the rules rendered from one row change of the
	// open transaction; cmds is empty when they render none, and is reused
	// after add returns. ch is nil for the canary's deletion, which only
	// the Redis sink is given.
	add(ch *pginvalidator.Change, cmds []pginvalidator.Command) error
	// commit closes the open transaction, whose end LSN is end and which
	// committed at at.
	commit(end pglogrepl.LSN, at time.Time) error
	// pending returns how many commands wait for flush.
	pending() int
	// held returns a copy of the commands flush would deliver now, to
	// deliver again later; nil when the sink keeps none (a dry run's).
	held() *invalidator.Batch
	// flush delivers every command held. Once it returns nil, every
	// transaction committed before it may be acknowledged.
	flush(ctx context.Context) error
	// reset drops what is held and not delivered: the next session
	// receives it again.
	reset()
}

// redisSink batches the commands and applies each batch to every Redis
// target. Once a batch is applied, the re-deletes its commands ask for go
// to redel, which sends them later.
type redisSink struct {
	targets fanout
	batch   *invalidator.Batch
	redel   *redeleter
	final   pglogrepl.LSN // the open transaction's commit position, which its re-deletes hold the acknowledgement at
}

func newRedisSink(ts fanout, redel *redeleter) *redisSink {
	return &redisSink{targets: ts, batch: invalidator.NewBatch(), redel: redel}
}

// begin gives the batch the commit record's position, with which it spills
// the version keys of a transaction that holds too many of them.
func (s *redisSink) begin(_ uint32, final pglogrepl.LSN) {
	s.batch.BeginTx(pginvalidator.LSN(final))
	s.final = final
}

func (s *redisSink) add(_ *pginvalidator.Change, cmds []pginvalidator.Command) error {
	for _, c := range cmds {
		s.batch.Add(c)
		s.redel.add(c, s.final)
	}
	return nil
}

// commit ends the transaction in the batch: its version keys are set to
// end, the position the transaction is acknowledged at.
func (s *redisSink) commit(end pglogrepl.LSN, _ time.Time) error {
	s.batch.EndTx(pginvalidator.LSN(end))
	return nil
}

func (s *redisSink) pending() int { return s.batch.Len() }

func (s *redisSink) held() *invalidator.Batch { return s.batch.Copy() }

// flush applies the batch to every target; it returns only once all have
// applied it, or ctx ends. The re-deletes of its commands are due from
// then on.
func (s *redisSink) flush(ctx context.Context) error {
	if s.batch.Len() == 0 {
		return nil
	}
	if err := s.targets.Apply(ctx, s.batch); err != nil {
		return fmt.Errorf("apply batch: %w", err)
	}
	s.redel.applied(time.Now())
	return nil
}

func (s *redisSink) reset() { s.batch.Reset() }
