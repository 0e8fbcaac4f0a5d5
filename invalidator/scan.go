package invalidator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
)

// scan runs proto (a DelPattern, IncrPattern or VersionPattern op without
// its key) on every key matching pattern, on every master, one SCAN page at
// a time. It returns nil only once every master was scanned to the end, and
// in a cluster the slot map read again as below; when ctx ends first, an
// error that wraps ctx's.
//
// A SCAN cursor means something only to the server process that issued it:
// a restarted Redis, or another master after a failover (even at the same
// address), hashes keys differently, and resuming there would skip keys.
// So each page is read together with the server's run_id, on the same
// connection, and a page from another process than the cursor's is thrown
// away: that master is scanned again from cursor 0. After a failure the
// scan goes on where it stopped on each master it knows by address, if the
// process there is the same; a master scanned to the end is not scanned
// again, unless its slots changed.
//
// In a cluster, the masters scanned must own all 16,384 slots, as each says
// itself (CLUSTER NODES, its "myself" line): a slot map with fewer (a seed
// node that has not joined the cluster, slots being reassigned) is an
// error, retried like any other. A key moves between masters with its slot
// (resharding, rebalancing): MIGRATE copies it to the master that imports
// the slot, and only then is the slot assigned to that master. A key that
// moves from a master not yet scanned to one scanned already would be found
// by neither scan. So the slot map is read before the scans and again after
// them, and a master is scanned again, from the start, when between two
// readings it gained a slot, or its config epoch changed (Redis raises it
// when a master takes a slot it imported, so a slot that came back to it
// between two readings shows there), or it imported a slot at either
// reading. While a reading shows a slot importing or migrating, the
// masters wait to be scanned again until a reading shows none: the scan
// waits, with backoff, and logs its progress; only ctx ends the wait. It
// ends once a reading after the scans shows every master's slots and
// config epoch as the reading before them did, and no slot importing or
// migrating.
//
// What that guarantees: when scan returns nil, every key that matched
// pattern when it began and still exists was acted on (an IncrPattern key
// at least once: see scanPos.seen), wherever its slot moved meanwhile, as
// long as keys moved only that way. Keys created during the scan may be
// missed; so may keys that a migration aborted between two readings
// (CLUSTER SETSLOT ... STABLE) left on a master that does not own their
// slot, where no client can read them.
func (c *call) scan(ctx context.Context, pattern string, proto op) error {
	inv := c.inv
	s := &patternScan{c: c, pattern: pattern, proto: proto, pos: make(map[string]*scanPos),
		prog: inv.newScanProgress(pattern, proto.action)}
	failures, waits := 0, 0 // failed steps in a row; steps in a row that scanned nothing
	for {
		settled, scanned, err := s.step(ctx)
		switch {
		case err == nil && settled:
			s.prog.done()
			return nil
		case err == nil && scanned:
			failures, waits = 0, 0
		case err == nil: // a migration is in progress, or slots changed hands
			failures = 0
			if err := s.wait(ctx, waits); err != nil {
				return err
			}
			waits++
		case ctx.Err() != nil:
			if !errors.Is(err, ctx.Err()) { // a SCAN page that failed as ctx ended
				err = fmt.Errorf("redis %s: %w (last error: %v)", inv.addr, ctx.Err(), inv.redactErr(err))
			}
			return err
		default:
			inv.stats.errors.Add(1)
			if inv.cluster != nil {
				inv.cluster.ReloadState(ctx)
			}
			if err := c.backoff(ctx, failures, err); err != nil {
				return err
			}
			inv.stats.retries.Add(1)
			failures++
		}
	}
}

// patternScan is the scan of one pattern, for scan: how far it got on each
// master, and the slot map as it last read it. One goroutine uses it.
type patternScan struct {
	c       *call // the Apply's
	pattern string
	proto   op
	pos     map[string]*scanPos // by master address ("" outside a cluster); a master without one was not scanned yet
	last    *slotReading        // the last reading of the slot map; nil before the first
	passes  int                 // the times every master of a reading was scanned to the end
	prog    *scanProgress
}

// step reads the slot map, marks for a new scan the masters it may have
// moved keys to since the last reading, and scans every master not scanned
// to the end, unless they were all scanned once and a slot is importing or
// migrating: those wait until the migration ends. settled reports that
// there is nothing to scan, nor will be (see scan); scanned that it scanned
// some master to the end.
func (s *patternScan) step(ctx context.Context) (settled, scanned bool, err error) {
	r, err := s.c.inv.readSlots(ctx)
	if err != nil {
		return false, false, err
	}
	changed := s.compare(r)
	first := s.last == nil
	s.last = r
	var pending []*redis.Client
	for _, m := range r.masters {
		if p := s.pos[s.addr(m)]; p == nil || !p.done {
			pending = append(pending, m)
		}
	}
	migrating := r.migration() != ""
	switch {
	case !first && !changed && !migrating && len(pending) == 0:
		return true, false, nil
	case len(pending) == 0, migrating && s.passes > 0:
		return false, false, nil
	}
	for _, m := range pending {
		if ctx.Err() != nil { // it may end just as a master's last page was applied
			return false, false, fmt.Errorf("redis %s: %w, before the scan of %s", s.c.inv.addr, ctx.Err(), s.c.inv.masterAddr(m))
		}
		if err := s.c.scanNode(ctx, m, s.pattern, s.proto, s.posOf(m), s.prog); err != nil {
			return false, false, err
		}
	}
	s.passes++
	return false, true, nil
}

// addr is the key of m's scanPos: its address in a cluster, "" otherwise
// (the one master, whatever its address).
func (s *patternScan) addr(m *redis.Client) string {
	if s.c.inv.cluster == nil {
		return ""
	}
	return m.Options().Addr
}

// posOf returns how far the scan of m got, made on first use.
func (s *patternScan) posOf(m *redis.Client) *scanPos {
	addr := s.addr(m)
	p := s.pos[addr]
	if p == nil {
		p = &scanPos{}
		if s.proto.action == pginvalidator.IncrPattern { // the one that counts twice
			p.seen = newKeyWindow(scanDedupe)
		}
		s.pos[addr] = p
	}
	return p
}

// compare marks for a new scan, from cursor 0, each master scanned to the
// end that may hold keys it did not hold when its scan began: one that,
// since the last reading, gained a slot or a new config epoch, or that
// imports a slot now or did then. It reports whether any master's slots or
// epoch changed, or a master came or went. The first reading changes
// nothing.
func (s *patternScan) compare(r *slotReading) (changed bool) {
	if s.last == nil {
		return false
	}
	changed = len(r.nodes) != len(s.last.nodes)
	for addr, now := range r.nodes {
		then := s.last.nodes[addr]
		if then == nil {
			then = &masterSlots{}
		}
		changed = changed || now.slots != then.slots || now.epoch != then.epoch
		gained := now.slots.gains(&then.slots) || now.epoch != then.epoch
		if p := s.pos[addr]; p != nil && p.done && (gained || len(now.importing) > 0 || len(then.importing) > 0) {
			p.done, p.cursor = false, 0
			s.c.inv.log.Info("slots moved during a pattern scan; scanning a master again", "addr", addr, "pattern", s.pattern)
		}
	}
	return changed
}

// wait waits before the slot map is read again, n+1 times in a row: the
// n-th wait is as long as the n-th backoff. While a migration is in
// progress, it logs so every Options.ProgressInterval, and Waiting reports
// it as the last error.
func (s *patternScan) wait(ctx context.Context, n int) error {
	why := s.last.migration()
	if why != "" {
		s.prog.waiting(why)
		s.c.inv.fail(s.c, errors.New("a pattern scan waits for a slot migration to end: "+why))
	}
	t := time.NewTimer(s.c.inv.delay(n))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("redis %s: %w, while a pattern scan waited for the slot map to settle (%s)", s.c.inv.addr, ctx.Err(),
			cmp.Or(why, "slots changed hands"))
	case <-t.C:
		return nil
	}
}

// scanPos is how far the scan of one pattern got on one master.
type scanPos struct {
	runID  string // the server process cursor belongs to; empty before the first page
	cursor uint64 // the next page's; 0 at the start
	done   bool   // scanned to the end
	// seen holds the keys of an IncrPattern already incremented on runID's
	// process, so that a key SCAN returns twice is incremented once, also
	// when the master is scanned again because slots moved to it: then
	// only the keys that moved, incremented on their old master, and those
	// the window forgot, are incremented twice. Nil for a DelPattern or
	// VersionPattern, whose UNLINK or SET to an LSN is harmless twice.
	seen *keyWindow
}

// scanNode runs proto on the keys matching pattern on master m, from p's
// cursor to the end, keeping p up to date.
func (c *call) scanNode(ctx context.Context, m *redis.Client, pattern string, proto op, p *scanPos, prog *scanProgress) error {
	inv := c.inv
	for {
		keys, next, runID, err := inv.scanPage(ctx, m, p.cursor, pattern, inv.scanCount)
		if err != nil {
			return err
		}
		inv.advance(c, time.Now())
		if runID != p.runID {
			if p.runID != "" {
				inv.log.Info("redis server changed during a pattern scan; scanning it again from the start",
					"addr", inv.masterAddr(m), "pattern", pattern)
				p.runID, p.cursor = runID, 0
				p.seen.reset() // the new process may have lost increments: at least once
				continue
			}
			p.runID = runID
		}
		ops := c.ops[:0]
		if proto.action == pginvalidator.DelPattern {
			ops = c.unlinkOps(ops, keys, proto)
		} else {
			for _, k := range keys {
				if p.seen.add(k) {
					o := proto
					o.key = k
					ops = append(ops, o)
				}
			}
		}
		c.ops = ops
		if err := c.run(ctx, ops); err != nil {
			return err
		}
		prog.page(len(keys))
		if next == 0 {
			p.done = true
			return nil
		}
		p.cursor = next
	}
}

// scanProgress logs how far a long pattern scan got, every
// Options.ProgressInterval, and once more when it ends if it logged before.
type scanProgress struct {
	inv     *Invalidator
	pattern string
	action  pginvalidator.Action
	start   time.Time
	last    time.Time // of the last line logged, or start
	scanned uint64    // keys SCAN returned, on every master, restarts included
	before  uint64    // the action's count of changed keys when the scan began
	logged  bool      // a progress line went out
}

func (inv *Invalidator) newScanProgress(pattern string, action pginvalidator.Action) *scanProgress {
	now := time.Now()
	g := &scanProgress{inv: inv, pattern: pattern, action: action, start: now, last: now}
	g.before = g.changed()
	return g
}

// changed is the action's count of keys changed so far, since New.
func (g *scanProgress) changed() uint64 {
	st := &g.inv.stats
	switch g.action {
	case pginvalidator.DelPattern:
		return st.delPatternKeys.Load()
	case pginvalidator.IncrPattern:
		return st.incrPatternKeys.Load()
	default:
		return st.versionPatternKeys.Load()
	}
}

// page records a page of n keys, applied, and logs when it is time.
func (g *scanProgress) page(n int) {
	g.scanned += uint64(n)
	if now := time.Now(); now.Sub(g.last) >= g.inv.progressEvery {
		g.last, g.logged = now, true
		g.log("pattern scan in progress")
	}
}

// waiting logs, when it is time, that the scan waits for the slot
// migration why describes to end.
func (g *scanProgress) waiting(why string) {
	if now := time.Now(); now.Sub(g.last) >= g.inv.progressEvery {
		g.last, g.logged = now, true
		g.log("pattern scan waiting for a slot migration to end", "migration", why)
	}
}

// done logs the end of a scan that logged its progress before.
func (g *scanProgress) done() {
	if g.logged {
		g.log("pattern scan done")
	}
}

// log logs msg with the scan's progress, and args after it.
func (g *scanProgress) log(msg string, args ...any) {
	changed := "keys_deleted"
	switch g.action {
	case pginvalidator.IncrPattern:
		changed = "keys_incremented"
	case pginvalidator.VersionPattern:
		changed = "keys_set"
	}
	g.inv.log.Info(msg, append([]any{"pattern", g.pattern, "keys_scanned", g.scanned, changed, g.changed() - g.before,
		"elapsed", time.Since(g.start).Round(time.Millisecond).String()}, args...)...)
}

// scanPage runs SCAN cursor MATCH match COUNT count on m, and INFO server
// on the same connection, so that the page and the run_id come from one
// server process. It is a field of Invalidator only so that a test can
// wrap it.
func scanPage(ctx context.Context, m *redis.Client, cursor uint64, match string, count int64) (keys []string, next uint64, runID string, err error) {
	pipe := m.Pipeline()
	info := pipe.Info(ctx, "server")
	scan := pipe.Scan(ctx, cursor, match, count)
	_, _ = pipe.Exec(ctx) // each reply is checked below
	if err := info.Err(); redis.HasErrorPrefix(err, "NOPERM") {
		return nil, 0, "", fmt.Errorf("info server: %w (a pattern scan reads the server's run_id: the ACL user needs +info)", err)
	} else if err != nil {
		return nil, 0, "", fmt.Errorf("info server: %w", err)
	}
	if runID = infoField(info.Val(), "run_id"); runID == "" {
		return nil, 0, "", errors.New("info server: no run_id")
	}
	keys, next, err = scan.Result()
	if err != nil {
		return nil, 0, "", err
	}
	return keys, next, runID, nil
}

// infoField returns the value of field in an INFO reply, or "".
func infoField(info, field string) string {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v
		}
	}
	return ""
}

// clusterSlots is the number of hash slots of Redis Cluster.
const clusterSlots = 16384

// slotReading is the slot map as the masters said it, at one moment.
type slotReading struct {
	masters []*redis.Client         // every master: the one outside a cluster
	nodes   map[string]*masterSlots // what each master of a cluster says of itself, by address; nil outside a cluster
}

// masterSlots is what one master of a cluster says of itself.
type masterSlots struct {
	nodeSelf         // as read
	slots    slotSet // nodeSelf.owned, as a set
}

// readSlots returns the masters a pattern is scanned on: the one master
// outside a cluster; in a cluster, every master of the slot map, with
// what each says of itself (CLUSTER NODES, its "myself" line), checked to
// own every slot between them.
func (inv *Invalidator) readSlots(ctx context.Context) (*slotReading, error) {
	masters, err := inv.masters(ctx)
	if err != nil || inv.cluster == nil {
		return &slotReading{masters: masters}, err
	}
	r := &slotReading{masters: masters, nodes: make(map[string]*masterSlots, len(masters))}
	var owned slotSet
	for _, m := range masters {
		nodes, err := m.ClusterNodes(ctx).Result()
		if err != nil {
			return nil, fmt.Errorf("cluster nodes on %s: %w", m.Options().Addr, err)
		}
		ms := &masterSlots{nodeSelf: myself(nodes)}
		for _, rg := range ms.owned {
			ms.slots.add(rg[0], rg[1])
		}
		owned.union(&ms.slots)
		r.nodes[m.Options().Addr] = ms
	}
	if n := owned.count(); n < clusterSlots {
		return nil, fmt.Errorf("the cluster's masters own %d of %d slots (%d masters known): a seed node that has not joined, or slots without a master",
			n, clusterSlots, len(masters))
	}
	return r, nil
}

// migration describes the slots importing or migrating at this reading,
// a few of them, as "slot 5461 importing on host:port"; "" when none.
func (r *slotReading) migration() string {
	var out []string
	for addr, ms := range r.nodes {
		for _, s := range ms.importing {
			out = append(out, fmt.Sprintf("slot %d importing on %s", s, addr))
		}
		for _, s := range ms.migrating {
			out = append(out, fmt.Sprintf("slot %d migrating on %s", s, addr))
		}
	}
	slices.Sort(out)
	if len(out) > 4 {
		out = append(out[:4], fmt.Sprintf("and %d more", len(out)-4))
	}
	return strings.Join(out, ", ")
}

// slotSet is a set of cluster slots, one bit each.
type slotSet [clusterSlots / 64]uint64

// add adds the slots first to last; those past the last slot are ignored.
func (s *slotSet) add(first, last int) {
	for i := max(first, 0); i <= last && i < clusterSlots; i++ {
		s[i/64] |= 1 << (i % 64)
	}
}

// union adds the slots of o.
func (s *slotSet) union(o *slotSet) {
	for i := range s {
		s[i] |= o[i]
	}
}

// gains reports whether s holds a slot that o does not.
func (s *slotSet) gains(o *slotSet) bool {
	for i := range s {
		if s[i]&^o[i] != 0 {
			return true
		}
	}
	return false
}

// count returns the number of slots in s.
func (s *slotSet) count() int {
	n := 0
	for _, w := range s {
		n += bits.OnesCount64(w)
	}
	return n
}

// nodeSelf is what a cluster node says of itself, in the "myself" line of its
// CLUSTER NODES reply:
//
//	<id> <ip:port@cport> myself,master - 0 0 <config-epoch> connected 0-5460 5462 [5461->-<id>] [5463-<-<id>]
type nodeSelf struct {
	owned     [][2]int // the slot ranges it owns, first and last; a slot it migrates ("[5461->-<id>]") is still its own
	epoch     uint64   // its config epoch
	importing []int    // slots it imports ("[5463-<-<id>]"): MIGRATE brings their keys before they are its own
	migrating []int    // slots it migrates to another node
}

// myself reads the "myself" line of a CLUSTER NODES reply; the zero
// nodeSelf when there is none. A replica owns no slot.
func myself(nodes string) nodeSelf {
	for line := range strings.Lines(nodes) {
		f := strings.Fields(line)
		if len(f) < 8 || !strings.Contains(","+f[2]+",", ",myself,") {
			continue
		}
		var me nodeSelf
		me.epoch, _ = strconv.ParseUint(f[6], 10, 64)
		for _, s := range f[8:] {
			if inner, ok := strings.CutPrefix(s, "["); ok {
				if slot, _, ok := strings.Cut(inner, "-<-"); ok {
					me.importing = appendSlot(me.importing, slot)
				} else if slot, _, ok := strings.Cut(inner, "->-"); ok {
					me.migrating = appendSlot(me.migrating, slot)
				}
				continue
			}
			first, last, isRange := strings.Cut(s, "-")
			a, err := strconv.Atoi(first)
			if err != nil {
				continue
			}
			b := a
			if isRange {
				if b, err = strconv.Atoi(last); err != nil {
					continue
				}
			}
			me.owned = append(me.owned, [2]int{a, b})
		}
		return me
	}
	return nodeSelf{}
}

// appendSlot appends the slot number s to slots, unless it is not one.
func appendSlot(slots []int, s string) []int {
	if n, err := strconv.Atoi(s); err == nil {
		return append(slots, n)
	}
	return slots
}

// scanDedupe is how many keys matched by an IncrPattern on one server
// process keyWindow remembers at least (and twice as many at most).
//
// SCAN returns a key twice only when the table it walks shrinks between two
// calls (a table that grows, or is rehashed to a larger size, returns no
// key twice). The cursor then lands in a bucket of the smaller table that
// merges several buckets of the larger one; SCAN walks those consecutively,
// and the ones it walked before the shrink come back. So a copy is always a
// key returned since the cursor entered that group of buckets: at most the
// shrink factor times the larger table's fill (about 1 key a bucket, up to
// 5 while Redis forks). Remembering the latest 100,000 keys catches every
// copy unless the table shrinks more than some 16,000-fold between two
// pages, from 16M buckets to 1,024 say; past that an increment may run
// twice, as in a replay. The memory is that of at most 200,000 keys, for
// the time of one pattern's scan on one master.
const scanDedupe = 100_000

// keyWindow remembers the keys added most recently: at least size of them,
// in two generations of size each. A nil *keyWindow remembers nothing.
type keyWindow struct {
	size      int
	cur, prev map[string]struct{}
}

func newKeyWindow(size int) *keyWindow {
	return &keyWindow{size: size, cur: make(map[string]struct{})}
}

// add adds k and reports whether it is new: not among the keys remembered.
// A nil window reports every key new.
func (w *keyWindow) add(k string) bool {
	if w == nil {
		return true
	}
	if _, ok := w.cur[k]; ok {
		return false
	}
	if _, ok := w.prev[k]; ok {
		return false
	}
	if len(w.cur) >= w.size {
		w.prev, w.cur = w.cur, make(map[string]struct{}, w.size)
	}
	w.cur[k] = struct{}{}
	return true
}

// reset forgets every key.
func (w *keyWindow) reset() {
	if w != nil {
		w.cur, w.prev = make(map[string]struct{}), nil
	}
}
