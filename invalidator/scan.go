package invalidator

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
)

// scan runs proto (a DelPattern, IncrPattern or VersionPattern op without
// its key) on every key matching pattern, on every master, one SCAN page at
// a time. It returns nil only once every master was scanned to the end;
// when ctx ends first, an error that wraps ctx's.
//
// A SCAN cursor means something only to the server process that issued it:
// a restarted Redis, or another master after a failover (even at the same
// address), hashes keys differently, and resuming there would skip keys.
// So each page is read together with the server's run_id, on the same
// connection, and a page from another process than the cursor's is thrown
// away: that master is scanned again from cursor 0. After a failure the
// scan goes on where it stopped on each master it knows by address, if the
// process there is the same; a master scanned to the end is not scanned
// again.
//
// In a cluster, the masters scanned must own all 16,384 slots, as each says
// itself: a slot map with fewer (a seed node that has not joined the
// cluster, slots being reassigned) is an error, retried like any other.
func (inv *Invalidator) scan(ctx context.Context, pattern string, proto op) error {
	pos := make(map[string]*scanPos) // by master address ("" outside a cluster)
	prog := inv.newScanProgress(pattern, proto.action)
	for attempt := 0; ; attempt++ {
		masters, err := inv.scanMasters(ctx)
		for _, m := range masters {
			if err != nil {
				break
			}
			addr := "" // the one master, whatever its address
			if inv.cluster != nil {
				addr = m.Options().Addr
			}
			p := pos[addr]
			if p == nil {
				p = &scanPos{}
				if proto.action == pginvalidator.IncrPattern { // the one that counts twice

					p.seen = newKeyWindow(scanDedupe)
				}
				pos[addr] = p
			}
			if p.done {
				continue
			}
			if ctx.Err() != nil { // it may end just as a master's last page was applied
				err = fmt.Errorf("redis %s: %w, before the scan of %s", inv.addr, ctx.Err(), inv.masterAddr(m))
				break
			}
			err = inv.scanNode(ctx, m, pattern, proto, p, prog)
		}
		if err == nil { // every master scanned to the end
			prog.done()
			return nil
		}
		if ctx.Err() != nil {
			if !errors.Is(err, ctx.Err()) { // a SCAN page that failed as ctx ended
				err = fmt.Errorf("redis %s: %w (last error: %v)", inv.addr, ctx.Err(), inv.redactErr(err))
			}
			return err
		}
		inv.stats.errors.Add(1)
		if inv.cluster != nil {
			inv.cluster.ReloadState(ctx)
		}
		if err := inv.backoff(ctx, attempt, err); err != nil {
			return err
		}
		inv.stats.retries.Add(1)
	}
}

// scanPos is how far the scan of one pattern got on one master.
type scanPos struct {
	runID  string // the server process cursor belongs to; empty before the first page
	cursor uint64 // the next page's; 0 at the start
	done   bool   // scanned to the end
	// seen holds the keys of an IncrPattern already incremented on runID's
	// process, so that a key SCAN returns twice is incremented once; nil
	// for a DelPattern or VersionPattern, whose UNLINK or SET to an LSN is
	// harmless twice.
	seen *keyWindow
}

// scanNode runs proto on the keys matching pattern on master m, from p's
// cursor to the end, keeping p up to date.
func (inv *Invalidator) scanNode(ctx context.Context, m *redis.Client, pattern string, proto op, p *scanPos, prog *scanProgress) error {
	for {
		keys, next, runID, err := inv.scanPage(ctx, m, p.cursor, pattern, inv.scanCount)
		if err != nil {
			return err
		}
		inv.progress.advance(time.Now())
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
		ops := inv.ops[:0]
		for _, k := range keys {
			if p.seen.add(k) {
				o := proto
				o.key = k
				ops = append(ops, o)
			}
		}
		inv.ops = ops
		if err := inv.run(ctx, ops); err != nil {
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

// done logs the end of a scan that logged its progress before.
func (g *scanProgress) done() {
	if g.logged {
		g.log("pattern scan done")
	}
}

func (g *scanProgress) log(msg string) {
	changed := "keys_deleted"
	switch g.action {
	case pginvalidator.IncrPattern:
		changed = "keys_incremented"
	case pginvalidator.VersionPattern:
		changed = "keys_set"
	}
	g.inv.log.Info(msg, "pattern", g.pattern, "keys_scanned", g.scanned, changed, g.changed()-g.before,
		"elapsed", time.Since(g.start).Round(time.Millisecond).String())
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

// scanMasters returns the masters a pattern is scanned on: the one master
// outside a cluster; in a cluster, every master of the slot map, checked
// to own every slot between them, each as it says itself (CLUSTER NODES,
// its "myself" line).
func (inv *Invalidator) scanMasters(ctx context.Context) ([]*redis.Client, error) {
	masters, err := inv.masters(ctx)
	if err != nil || inv.cluster == nil {
		return masters, err
	}
	var owned [clusterSlots]bool
	for _, m := range masters {
		nodes, err := m.ClusterNodes(ctx).Result()
		if err != nil {
			return nil, fmt.Errorf("cluster nodes on %s: %w", m.Options().Addr, err)
		}
		for _, r := range ownSlots(nodes) {
			for s := r[0]; s <= r[1] && s < clusterSlots; s++ {
				owned[s] = true
			}
		}
	}
	n := 0
	for _, o := range owned {
		if o {
			n++
		}
	}
	if n < clusterSlots {
		return nil, fmt.Errorf("the cluster's masters own %d of %d slots (%d masters known): a seed node that has not joined, or slots without a master",
			n, clusterSlots, len(masters))
	}
	return masters, nil
}

// ownSlots returns the slot ranges, first and last, that the node whose
// CLUSTER NODES reply this is owns, from its "myself" line:
//
//	<id> <ip:port@cport> myself,master - 0 0 1 connected 0-5460 5462 [5461->-<id>]
//
// Slots being imported or migrated ("[...]") do not count.
func ownSlots(nodes string) [][2]int {
	for line := range strings.Lines(nodes) {
		f := strings.Fields(line)
		if len(f) < 8 || !strings.Contains(","+f[2]+",", ",myself,") {
			continue
		}
		var ranges [][2]int
		for _, s := range f[8:] {
			if strings.HasPrefix(s, "[") {
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
			ranges = append(ranges, [2]int{a, b})
		}
		return ranges
	}
	return nil
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
