package invalidator

import (
	"math/bits"
	"sync/atomic"

	"github.com/redis/go-redis/v9"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
)

// BatchSizeBounds are the upper bounds of the Stats.BatchSizes buckets.
var BatchSizeBounds = [...]int{1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576}

// Stats are cumulative counters since New.
type Stats struct {
	Del             uint64 // Del keys unlinked, whether they existed or not
	Incr            uint64 // INCR and INCRBY commands applied for Incr
	DelPatternKeys  uint64 // keys a DelPattern unlinked
	IncrPatternKeys uint64 // keys an IncrPattern incremented
	// Version counts Version keys set to a transaction's LSN, and
	// VersionKept those left as they were because they held that LSN or a
	// later one already: a transaction replayed after a restart shows up
	// here.
	Version, VersionKept uint64
	VersionPatternKeys   uint64 // keys a VersionPattern set to an LSN
	// Redeletes counts the keys of re-deletes (Batch.Redelete) unlinked:
	// each Del key, and each key a DelPattern's SCAN found. RedeletesFound
	// counts those that UNLINK removed (its reply counts them): a value
	// cached again between the first delete and the re-delete, which the
	// first delete alone would have left in place if it was read before the
	// change.
	Redeletes, RedeletesFound uint64
	Errors                    uint64 // failed commands and SCAN calls, whether retried or skipped
	Skipped                   uint64 // commands Redis rejected for good, never applied (see Apply)
	Retries                   uint64 // commands and SCAN calls sent again after a failure
	Batches                   uint64 // batches Apply completed
	BatchCommands             uint64 // sum of Batch.Len over those batches
	// BatchSizes[i] counts the batches of more than BatchSizeBounds[i-1] and
	// at most BatchSizeBounds[i] commands; the last counts the larger ones.
	BatchSizes [len(BatchSizeBounds) + 1]uint64
}

// Stats returns the counters. It is safe to call at any time.
func (inv *Invalidator) Stats() Stats { return inv.stats.snapshot() }

type counters struct {
	del, incr, delPatternKeys, incrPatternKeys atomic.Uint64
	version, versionKept, versionPatternKeys   atomic.Uint64
	redeletes, redeletesFound                  atomic.Uint64
	errors, skipped, retries                   atomic.Uint64
	batches, batchCommands                     atomic.Uint64
	batchSizes                                 [len(BatchSizeBounds) + 1]atomic.Uint64
}

// count records the successful reply c to o. An UNLINK's reply is the
// number of its keys it removed.
func (s *counters) count(o op, c redis.Cmder) {
	if o.redelete {
		s.redeletes.Add(uint64(len(o.keys)))
		s.redeletesFound.Add(uint64(c.(*redis.IntCmd).Val()))
		return
	}
	switch o.action {
	case pginvalidator.Del:
		s.del.Add(uint64(len(o.keys)))
	case pginvalidator.Incr:
		s.incr.Add(1)
	case pginvalidator.DelPattern: // the keys gone already do not count
		s.delPatternKeys.Add(uint64(c.(*redis.IntCmd).Val()))
	case pginvalidator.IncrPattern:
		if n, _ := c.(*redis.Cmd).Int64(); n > 0 { // 0: the key was gone already
			s.incrPatternKeys.Add(1)
		}
	case pginvalidator.Version:
		if n, _ := c.(*redis.Cmd).Int64(); n > 0 {
			s.version.Add(1)
		} else { // it held this LSN or a later one
			s.versionKept.Add(1)
		}
	case pginvalidator.VersionPattern:
		if n, _ := c.(*redis.Cmd).Int64(); n > 0 { // 0: gone already, or at this LSN or later
			s.versionPatternKeys.Add(1)
		}
	}
}

func (s *counters) observeBatch(size int) {
	s.batches.Add(1)
	s.batchCommands.Add(uint64(size))
	i := 0
	if size > 1 {
		i = min((bits.Len(uint(size-1))+1)/2, len(BatchSizeBounds)) // bounds are powers of 4
	}
	s.batchSizes[i].Add(1)
}

func (s *counters) snapshot() Stats {
	st := Stats{
		Del:                s.del.Load(),
		Incr:               s.incr.Load(),
		DelPatternKeys:     s.delPatternKeys.Load(),
		IncrPatternKeys:    s.incrPatternKeys.Load(),
		Version:            s.version.Load(),
		VersionKept:        s.versionKept.Load(),
		VersionPatternKeys: s.versionPatternKeys.Load(),
		Redeletes:          s.redeletes.Load(),
		RedeletesFound:     s.redeletesFound.Load(),
		Errors:             s.errors.Load(),
		Skipped:            s.skipped.Load(),
		Retries:            s.retries.Load(),
		Batches:            s.batches.Load(),
		BatchCommands:      s.batchCommands.Load(),
	}
	for i := range s.batchSizes {
		st.BatchSizes[i] = s.batchSizes[i].Load()
	}
	return st
}
