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
//   - a Version key is set once per batch, to the end LSN of the last
//     transaction of the batch that touched it (the highest: transactions
//     end in LSN order). The open transaction's Version keys wait for its
//     EndTx, which brings the LSN. Past MaxOpenVersions distinct keys they
//     are spilled early with the LSN of a position inside the transaction's
//     commit record (see BeginTx), which is above every earlier
//     transaction's end LSN and below this one's;
//   - a DelPattern or IncrPattern pattern runs once per batch, and a
//     VersionPattern pattern once, with the highest LSN, like a Version key.
//
// The maps and slices are kept between batches: Reset empties them without
// freeing their memory. A Batch is not safe for concurrent use.
type Batch struct {
	// Redelete marks a batch of re-deletes, Del keys and DelPattern
	// patterns sent a second time, some time after a transaction's own
	// batch (see pginvalidator.Command.Redelete): Apply counts them in
	// Stats.Redeletes and Stats.RedeletesFound instead of Del and
	// DelPatternKeys. False: an ordinary batch.
	Redelete bool

	dels         map[string]struct{}
	delOrder     []string            // the keys of dels, in the order Add first saw them
	incrs        map[string]int64    // key -> transactions of the batch that incremented it
	txIncrs      map[string]struct{} // Incr keys of the open transaction, not yet in incrs
	delPatterns  map[string]struct{}
	incrPatterns map[string]struct{}

	versions          map[string]pginvalidator.LSN // Version key -> highest LSN to set it to
	versionPatterns   map[string]pginvalidator.LSN // VersionPattern pattern -> highest LSN
	txVersions        map[string]struct{}          // Version keys of the open transaction
	txVersionPatterns map[string]struct{}          // VersionPattern patterns of the open transaction
	txCommit          pginvalidator.LSN            // the open transaction's commit LSN; zero: BeginTx not called
	force             bool                         // versions are set whatever the keys hold (EndResync)
}

// NewBatch returns an empty Batch.
func NewBatch() *Batch {
	return &Batch{
		dels:              make(map[string]struct{}),
		incrs:             make(map[string]int64),
		txIncrs:           make(map[string]struct{}),
		delPatterns:       make(map[string]struct{}),
		incrPatterns:      make(map[string]struct{}),
		versions:          make(map[string]pginvalidator.LSN),
		versionPatterns:   make(map[string]pginvalidator.LSN),
		txVersions:        make(map[string]struct{}),
		txVersionPatterns: make(map[string]struct{}),
	}
}

// BeginTx starts a transaction whose commit record begins at commit: the
// final LSN that pgoutput's Begin message carries. The batch needs it only
// to spill the Version keys of a transaction that holds more than
// MaxOpenVersions of them; without it they wait for EndTx, however many.
func (b *Batch) BeginTx(commit pginvalidator.LSN) { b.txCommit = commit }

// Add records one command of the open transaction. It panics on an Action
// that is not one of the six pginvalidator defines: that is a bug in the
// caller, and dropping the command would leave a cache stale.
func (b *Batch) Add(c pginvalidator.Command) {
	switch c.Action {
	case pginvalidator.Del:
		b.addDel(c.Key)
	case pginvalidator.Incr:
		b.txIncrs[c.Key] = struct{}{}
		if len(b.txIncrs) > MaxOpenIncrs {
			b.endIncrs()
		}
	case pginvalidator.DelPattern:
		b.delPatterns[c.Key] = struct{}{}
	case pginvalidator.IncrPattern:
		b.incrPatterns[c.Key] = struct{}{}
	case pginvalidator.Version:
		b.txVersions[c.Key] = struct{}{}
		b.spillVersions()
	case pginvalidator.VersionPattern:
		b.txVersionPatterns[c.Key] = struct{}{}
		b.spillVersions()
	default:
		panic("invalidator: unknown action " + c.Action.String())
	}
}

// addDel adds k to the Del keys, unless it is there already. Apply sends
// them in the order they came, which is the order of the rows in the WAL.
// Redis deletes keys faster in the order it stored them, the memory of
// keys stored one after the other lying together, we think: with
// redis-cli --pipe, 100 keys per UNLINK, a million keys item:<id> stored
// in id order took 0.41-0.44 s of Redis CPU to delete in id order, and
// 0.88-0.93 s in a random order, which is what the map's order was. Keys
// that readers cached in another order than the rows' gain nothing, and
// lose nothing.
func (b *Batch) addDel(k string) {
	n := len(b.dels)
	b.dels[k] = struct{}{}
	if len(b.dels) > n {
		b.delOrder = append(b.delOrder, k)
	}
}

// MaxOpenIncrs bounds the distinct Incr keys one open transaction may hold
// back before they are spilled into the batch.
const MaxOpenIncrs = 100_000

// MaxOpenVersions bounds the distinct Version keys and VersionPattern
// patterns one open transaction may hold back before they are spilled into
// the batch, when BeginTx gave its commit LSN.
const MaxOpenVersions = 100_000

// spillVersions moves the open transaction's Version keys into the batch
// when they are too many, with the LSN just past the start of its commit
// record. That LSN is above the end LSN of every transaction before (whose
// commit records end before this one's starts) and below this one's own
// end LSN, so the keys still only move forward, and EndTx moves the keys
// the transaction touches after the spill on to its end LSN.
func (b *Batch) spillVersions() {
	if b.txCommit == 0 || len(b.txVersions)+len(b.txVersionPatterns) <= MaxOpenVersions {
		return
	}
	b.endVersions(b.txCommit + 1)
}

// EndTx marks the open transaction complete, end being its end LSN (the
// position just past its commit record, which is what the replication
// slot acknowledges): its Incr keys join the batch, and its Version keys
// and VersionPattern patterns too, to be set to end. A command added after
// it counts for the next transaction.
func (b *Batch) EndTx(end pginvalidator.LSN) {
	b.endIncrs()
	b.endVersions(end)
	b.txCommit = 0
}

// EndResync ends the open transaction like EndTx, for the flush of a
// resync: every Version key and VersionPattern key of the batch is then set
// to at whatever it holds, even an LSN above at. After a failover to a
// standby that had not replayed everything, the new primary's WAL position
// is below LSNs the daemon already wrote; the keys must come down to it, or
// every transaction up to their old value would leave them unchanged. at
// should be the position the new slot streams from: every transaction it
// sends ends above it.
func (b *Batch) EndResync(at pginvalidator.LSN) {
	b.EndTx(at)
	b.force = true
}

func (b *Batch) endIncrs() {
	for k := range b.txIncrs {
		b.incrs[k]++
	}
	clear(b.txIncrs)
}

func (b *Batch) endVersions(lsn pginvalidator.LSN) {
	for k := range b.txVersions {
		b.versions[k] = max(b.versions[k], lsn)
	}
	for k := range b.txVersionPatterns {
		b.versionPatterns[k] = max(b.versionPatterns[k], lsn)
	}
	clear(b.txVersions)
	clear(b.txVersionPatterns)
}

// Len returns the number of commands Apply would send now, after
// deduplication, counting each pattern as one. The open transaction's Incr
// and Version keys do not count until EndTx.
func (b *Batch) Len() int {
	return len(b.dels) + len(b.incrs) + len(b.delPatterns) + len(b.incrPatterns) +
		len(b.versions) + len(b.versionPatterns)
}

// Reset empties the batch, the open transaction included, keeping its
// memory for the next one.
func (b *Batch) Reset() {
	b.Clear()
	clear(b.txIncrs)
	clear(b.txVersions)
	clear(b.txVersionPatterns)
	b.txCommit = 0
}

// Clear empties what Apply sends, keeping the open transaction's Incr and
// Version keys for its EndTx. Call it once every Invalidator has applied b.
func (b *Batch) Clear() {
	clear(b.dels)
	clear(b.delOrder) // drops the keys, keeps the memory
	b.delOrder = b.delOrder[:0]
	clear(b.incrs)
	clear(b.delPatterns)
	clear(b.incrPatterns)
	clear(b.versions)
	clear(b.versionPatterns)
	b.force = false
}

// Copy returns a new Batch that holds what Apply would send of b now: not
// the open transaction's Incr and Version keys, which wait for its EndTx.
func (b *Batch) Copy() *Batch {
	c := NewBatch()
	c.Redelete, c.force = b.Redelete, b.force
	for _, k := range b.delOrder {
		c.addDel(k)
	}
	for k, n := range b.incrs {
		c.incrs[k] = n
	}
	for k := range b.delPatterns {
		c.delPatterns[k] = struct{}{}
	}
	for k := range b.incrPatterns {
		c.incrPatterns[k] = struct{}{}
	}
	for k, lsn := range b.versions {
		c.versions[k] = lsn
	}
	for k, lsn := range b.versionPatterns {
		c.versionPatterns[k] = lsn
	}
	return c
}

// Merge adds what Apply would send of o to b, as if its transactions had
// been b's.
func (b *Batch) Merge(o *Batch) {
	for _, k := range o.delOrder {
		b.addDel(k)
	}
	for k, n := range o.incrs {
		b.incrs[k] += n
	}
	for k := range o.delPatterns {
		b.delPatterns[k] = struct{}{}
	}
	for k := range o.incrPatterns {
		b.incrPatterns[k] = struct{}{}
	}
	for k, lsn := range o.versions {
		b.versions[k] = max(b.versions[k], lsn)
	}
	for k, lsn := range o.versionPatterns {
		b.versionPatterns[k] = max(b.versionPatterns[k], lsn)
	}
}

// HasVersions reports whether b sets a Version key or VersionPattern.
func (b *Batch) HasVersions() bool { return len(b.versions)+len(b.versionPatterns) > 0 }

// RaiseVersions moves every Version key and VersionPattern of b that would
// be set below at up to at: a batch applied again later must move its
// version keys past what its first application set them to, or a value
// cached under that version in between would stay reachable.
func (b *Batch) RaiseVersions(at pginvalidator.LSN) {
	for k, lsn := range b.versions {
		b.versions[k] = max(lsn, at)
	}
	for k, lsn := range b.versionPatterns {
		b.versionPatterns[k] = max(lsn, at)
	}
}
