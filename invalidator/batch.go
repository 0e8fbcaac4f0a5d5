package invalidator

import pginvalidator "github.com/pg-invalidator/pg-invalidator"

// Batch collects the commands of one or more transactions, deduplicated:
//
//   - a Del key is deleted once per batch;
//   - an Incr key is incremented once per transaction that touched it, so a
//     key incremented by three transactions of the batch gets INCRBY key 3.
//     The increments of the open transaction wait for its EndTx: a large
//     transaction applied in several batches still increments each key once.
//     Only when one transaction increments more than MaxOpenIncrs distinct
//     keys are they spilled into the batch early, as if the transaction
//     ended there, to keep memory bounded; a key it touches again after the
//     spill is incremented again;
//   - a DelPattern or IncrPattern pattern runs once per batch.
//
// The maps and slices are kept between batches: Reset empties them without
// freeing their memory. A Batch is not safe for concurrent use.
type Batch struct {
	dels         map[string]struct{}
	incrs        map[string]int64    // key -> transactions of the batch that incremented it
	txIncrs      map[string]struct{} // Incr keys of the open transaction, not yet in incrs
	delPatterns  map[string]struct{}
	incrPatterns map[string]struct{}
}

// NewBatch returns an empty Batch.
func NewBatch() *Batch {
	return &Batch{
		dels:         make(map[string]struct{}),
		incrs:        make(map[string]int64),
		txIncrs:      make(map[string]struct{}),
		delPatterns:  make(map[string]struct{}),
		incrPatterns: make(map[string]struct{}),
	}
}

// Add records one command of the open transaction. It panics on an Action
// that is not one of the four pginvalidator defines: that is a bug in the
// caller, and dropping the command would leave a cache stale.
func (b *Batch) Add(c pginvalidator.Command) {
	switch c.Action {
	case pginvalidator.Del:
		b.dels[c.Key] = struct{}{}
	case pginvalidator.Incr:
		b.txIncrs[c.Key] = struct{}{}
		if len(b.txIncrs) > MaxOpenIncrs {
			b.EndTx()
		}
	case pginvalidator.DelPattern:
		b.delPatterns[c.Key] = struct{}{}
	case pginvalidator.IncrPattern:
		b.incrPatterns[c.Key] = struct{}{}
	default:
		panic("invalidator: unknown action " + c.Action.String())
	}
}

// MaxOpenIncrs bounds the distinct Incr keys one open transaction may hold
// back before they are spilled into the batch.
const MaxOpenIncrs = 100_000

// EndTx marks the open transaction complete: its Incr keys join the batch,
// and an Incr key added after it counts for the next transaction.
func (b *Batch) EndTx() {
	for k := range b.txIncrs {
		b.incrs[k]++
	}
	clear(b.txIncrs)
}

// Len returns the number of commands Apply would send now, after
// deduplication, counting each pattern as one. The open transaction's Incr
// keys do not count until EndTx.
func (b *Batch) Len() int {
	return len(b.dels) + len(b.incrs) + len(b.delPatterns) + len(b.incrPatterns)
}

// Reset empties the batch, the open transaction included, keeping its
// memory for the next one.
func (b *Batch) Reset() {
	b.Clear()
	clear(b.txIncrs)
}

// Clear empties what Apply sends, keeping the open transaction's Incr keys
// for its EndTx. Call it once every Invalidator has applied b.
func (b *Batch) Clear() {
	clear(b.dels)
	clear(b.incrs)
	clear(b.delPatterns)
	clear(b.incrPatterns)
}
