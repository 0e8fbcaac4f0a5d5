package invalidator

import "github.com/redis/go-redis/v9"

// unlinkBatch is the most keys one UNLINK carries, for Del keys and the
// keys of a DelPattern's SCAN page. Redis answers a multi-key UNLINK with
// the number of keys it removed, so the stats stay exact per key.
//
// Measured with BenchmarkApplyDel1M, and the same Apply with other sizes:
// 1,000,000 existing keys item:<id>, stored and deleted in id order, on a
// redis-server 7.0.15 on loopback, AMD EPYC, 2 cores shared with other
// work, medians of 3 to 5 runs, on this one host only. Apply took 1.1-1.8
// s with one key per UNLINK; with 20, 50, 100, 200 and 500 keys 0.49,
// 0.47, 0.51, 0.51 and 0.50 s, about the same, and with 1,000 keys 0.57 s.
// redis-cli --pipe took 0.83 s with one key per UNLINK and 0.49 s with 100.
const unlinkBatch = 100

// slotStride is the step with which unlinkOps walks the slots of a cluster:
// odd, so that it visits each of the 16,384 slots once, and close to 16,384
// divided by the golden ratio, so that slots visited one after the other lie
// far apart, on different masters, however many masters share the slots in
// ranges. A pipeline of consecutive UNLINKs then reaches every master at once.
const slotStride = 10127

// unlinkOps appends to ops the UNLINKs that delete keys: ops like proto (a
// Del or DelPattern op without its keys), of up to inv.unlinkKeys keys each.
// In a cluster the keys of each UNLINK share a hash slot (Redis refuses a
// multi-key command across slots with CROSSSLOT). The ops hold slices of
// keys, or of c's scratch: neither may change until they are sent.
func (c *call) unlinkOps(ops []op, keys []string, proto op) []op {
	if c.inv.cluster == nil || len(keys) < 2 {
		return appendUnlinks(ops, keys, proto, c.inv.unlinkKeys)
	}
	// A counting sort by slot, into sorted: at the end, slot s's keys are
	// sorted[at[s]:at[s+1]].
	if c.slotAt == nil {
		c.slotAt = make([]int32, clusterSlots+1)
	}
	at := c.slotAt
	clear(at)
	slots := c.keySlots[:0]
	for _, k := range keys {
		s := uint16(keySlot(k))
		slots = append(slots, s)
		at[s+1]++
	}
	c.keySlots = slots
	for s := range clusterSlots { // at[s]: the keys of the slots before s
		at[s+1] += at[s]
	}
	if cap(c.sorted) < len(keys) {
		c.sorted = make([]string, len(keys))
	}
	sorted := c.sorted[:len(keys)]
	for i, k := range keys {
		s := slots[i]
		sorted[at[s]] = k
		at[s]++
	}
	copy(at[1:], at[:clusterSlots]) // at[s] moved to where slot s ends: back one
	at[0] = 0
	for i := range clusterSlots {
		s := i * slotStride % clusterSlots
		ops = appendUnlinks(ops, sorted[at[s]:at[s+1]], proto, c.inv.unlinkKeys)
	}
	return ops
}

// appendUnlinks appends to ops the UNLINKs of keys, per keys each at most,
// each an op like proto.
func appendUnlinks(ops []op, keys []string, proto op, per int) []op {
	for len(keys) > 0 {
		n := min(per, len(keys))
		o := proto
		o.key, o.keys = keys[0], keys[:n:n]
		ops = append(ops, o)
		keys = keys[n:]
	}
	return ops
}

// splitUnlink reports whether a multi-key UNLINK that failed with err must
// be sent again one key at a time: Redis answers TRYAGAIN while some of its
// keys have migrated to another master and some not (a slot being moved),
// and CROSSSLOT when they do not share a slot, which keySlot rules out unless a
// proxy hashes otherwise. An ASK redirect splits it too (see call.send).
func splitUnlink(err error) bool {
	return redis.HasErrorPrefix(err, "TRYAGAIN") || redis.HasErrorPrefix(err, "CROSSSLOT")
}
