package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
)

// The chaos run's faults. Every few seconds the chooser draws a kind and
// its parameters from the seeded generator, always the same number of
// draws whatever it then does, so that a seed replays the same sequence;
// a kind that cannot run in the current state is skipped, and the skip
// logged. Faults run one at a time, and each one heals what it broke,
// except a killed Redis master, which stays dead.

// faultKind is one kind of fault.
type faultKind struct {
	name string
	// blocked says why the fault cannot run now; "" when it can.
	blocked func(ctx context.Context) string
	// inject runs the fault with parameters p (each in [0, 1)) and says
	// what it did; an error is a harness failure.
	inject func(ctx context.Context, p [3]float64) (string, error)
}

// faultLog counts the faults by kind.
type faultLog struct {
	mu       sync.Mutex     // protects the fields below
	injected map[string]int // by kind
	skipped  map[string]int // by kind
	order    []faultRecord  // in the order injected
	catalog  time.Time      // the last swap, detach or reload
}

// faultRecord is one fault injected.
type faultRecord struct {
	n          int // its number in the run, skipped ones counted
	kind       string
	start, end time.Time
}

func (l *faultLog) add(n int, kind string, skipped bool, start time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.injected == nil {
		l.injected, l.skipped = map[string]int{}, map[string]int{}
	}
	if skipped {
		l.skipped[kind]++
		return
	}
	l.injected[kind]++
	l.order = append(l.order, faultRecord{n: n, kind: kind, start: start, end: time.Now()})
}

func (l *faultLog) total() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.order)
}

// before describes the last fault that began before t, and how long before
// it ended; "" when none did.
func (l *faultLog) before(t time.Time) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.order) - 1; i >= 0; i-- {
		if f := l.order[i]; f.start.Before(t) {
			if f.end.After(t) {
				return fmt.Sprintf("during fault %d, %s", f.n, f.kind)
			}
			return fmt.Sprintf("%s after fault %d, %s, ended", t.Sub(f.end).Round(10*time.Millisecond), f.n, f.kind)
		}
	}
	return ""
}

func (l *faultLog) touchCatalog() {
	l.mu.Lock()
	l.catalog = time.Now()
	l.mu.Unlock()
}

func (l *faultLog) lastCatalog() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.catalog
}

// faultGap is the pause between two faults: from the end of one to the
// start of the next, drawn between the two.
var faultGap = [2]time.Duration{2 * time.Second, 5 * time.Second}

// faultDraw is what the chooser draws for one fault: the pause before it,
// which kind, and the kind's parameters, each in [0, 1).
type faultDraw struct {
	gap  time.Duration
	kind int
	p    [3]float64
}

// faultPlan draws the faults of a seed, always the same way whatever the
// run then does with them.
type faultPlan struct {
	rng   *rand.Rand
	kinds int
}

func newFaultPlan(seed uint64, kinds int) *faultPlan {
	return &faultPlan{rng: rand.New(rand.NewPCG(seed, 0)), kinds: kinds}
}

func (f *faultPlan) next() faultDraw {
	d := faultDraw{gap: faultGap[0] + time.Duration(f.rng.Float64()*float64(faultGap[1]-faultGap[0]))}
	d.kind = f.rng.IntN(f.kinds)
	d.p = [3]float64{f.rng.Float64(), f.rng.Float64(), f.rng.Float64()}
	return d
}

// injectFaults runs the chooser for d.
func (c *chaos) injectFaults(ctx context.Context, d time.Duration) error {
	kinds := c.faultKinds()
	plan := newFaultPlan(c.o.seed, len(kinds))
	end := time.Now().Add(d)
	for n := 1; ; n++ {
		draw := plan.next()
		k := kinds[draw.kind]
		sleepCtx(ctx, draw.gap)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(end) {
			return nil
		}
		if why := k.blocked(ctx); why != "" {
			c.faults.add(n, k.name, true, time.Now())
			c.step("fault %d: %s skipped: %s", n, k.name, why)
			continue
		}
		start := time.Now()
		what, err := k.inject(ctx, draw.p)
		if err != nil {
			return fmt.Errorf("fault %d (%s): %w", n, k.name, err)
		}
		c.faults.add(n, k.name, false, start)
		c.step("fault %d: %s: %s (%s)", n, k.name, what, time.Since(start).Round(10*time.Millisecond))
	}
}

// faultKinds are the faults, in a fixed order: the seed picks among them
// by index.
func (c *chaos) faultKinds() []faultKind {
	return []faultKind{
		{"kill-9", c.daemonRuns, c.kill9},
		{"sighup", c.daemonRuns, c.sighup},
		{"redis-restart", c.redisRestartBlocked, c.redisRestart},
		{"sentinel-kill", c.sentinelKillBlocked, c.sentinelKill},
		{"pg-restart", never, c.pgRestart},
		{"pg-silence", never, c.pgSilence},
		{"client-pause", never, c.clientPause},
		{"swap", c.swapBlocked, c.swapTable},
		{"detach", never, c.detachPartition},
		{"takeover", c.takeoverBlocked, c.takeover},
	}
}

func never(context.Context) string { return "" }

// The daemon.

func (c *chaos) daemonRuns(ctx context.Context) string {
	for _, u := range c.units {
		if p, _ := u.running(); p != nil {
			return ""
		}
	}
	return "no daemon runs (one is being restarted)"
}

// kill9 kills the daemon that streams (or any that runs) with SIGKILL;
// its supervisor starts it again after chaosRestartDelay.
func (c *chaos) kill9(ctx context.Context, _ [3]float64) (string, error) {
	u := c.slotHolder(ctx)
	if u == nil {
		for _, v := range c.units {
			if p, _ := v.running(); p != nil {
				u = v
				break
			}
		}
	}
	if u == nil {
		return "no daemon ran by then (one had exited since the check)", nil
	}
	u.expectExit()
	pid, ok := u.signal(syscall.SIGKILL)
	if !ok {
		return fmt.Sprintf("daemon %s had exited since the check", u.name), nil
	}
	return fmt.Sprintf("daemon %s (pid %d) killed; its supervisor restarts it in %s", u.name, pid, chaosRestartDelay), nil
}

// sighup writes another rule set and sends SIGHUP to every daemon that
// serves /healthz (only then does it handle the signal).
func (c *chaos) sighup(ctx context.Context, p [3]float64) (string, error) {
	next := (c.ruleSet + 1 + int(p[0]*(chaosRuleSets-1))) % chaosRuleSets
	if err := c.writeRules(next); err != nil {
		return "", err
	}
	c.faults.touchCatalog()
	var sent []string
	for _, u := range c.units {
		if !u.healthy() {
			continue
		}
		if pid, ok := u.signal(syscall.SIGHUP); ok {
			sent = append(sent, fmt.Sprintf("%s (pid %d)", u.name, pid))
		}
	}
	return fmt.Sprintf("rule set %d written, SIGHUP to %s", next, strings.Join(sent, ", ")), nil
}

// takeoverBlocked: a takeover needs one daemon streaming, and the other
// stopped.
func (c *chaos) takeoverBlocked(ctx context.Context) string {
	holder := c.slotHolder(ctx)
	if holder == nil {
		return "no daemon streams"
	}
	for _, u := range c.units {
		if p, _ := u.running(); u != holder && (u.isEnabled() || p != nil) {
			return "both daemons run"
		}
	}
	if !holder.ready() {
		return "the streaming daemon is not ready"
	}
	return ""
}

// takeover starts the other daemon on the same slot, waits until it
// stands by, then stops the one that streams for good (SIGKILL or SIGTERM,
// as drawn): the standby must take the slot over, as
// docs/high-availability.md says.
func (c *chaos) takeover(ctx context.Context, p [3]float64) (string, error) {
	active := c.slotHolder(ctx)
	if active == nil {
		return "", errors.New("no daemon streams any more")
	}
	standby := c.units[0]
	if standby == active {
		standby = c.units[1]
	}
	logStart := fileSize(standby.logPath)
	standby.enable(true)
	if !waitFor(ctx, 30*time.Second, func() bool {
		return strings.Contains(tailFrom(standby.logPath, logStart), "standing by")
	}) {
		c.anomaly("takeover: daemon %s never stood by within 30s; its log ends:\n%s", standby.name, tail(standby.logPath))
		return "the standby never stood by", nil
	}
	sig, how := syscall.SIGTERM, "SIGTERM"
	if p[0] < 0.5 {
		sig, how = syscall.SIGKILL, "SIGKILL"
	}
	active.enable(false)
	active.expectExit()
	pid, _ := active.signal(sig)
	stopped := time.Now()
	if !waitFor(ctx, 30*time.Second, func() bool { return c.slotHolder(ctx) == standby }) {
		c.anomaly("takeover: daemon %s did not take the slot within 30s of %s to %s", standby.name, how, active.name)
		return "no takeover", nil
	}
	return fmt.Sprintf("daemon %s stood by, %s to %s (pid %d), %s streams %s later", standby.name, how, active.name, pid,
		standby.name, time.Since(stopped).Round(10*time.Millisecond)), nil
}

// Redis.

func (c *chaos) redisRestartBlocked(context.Context) string {
	if sw := c.currentSwap(); sw != nil && sw.handledAt().IsZero() {
		return "a table swap is not flushed yet: an emptied Redis would lose the canary that says when it is"
	}
	return ""
}

// redisRestart restarts the plain Redis, down for 0.5-3 s: half the time
// with SHUTDOWN SAVE, keeping its keys, as a persistent Redis restarts;
// else killed and started empty, as one without persistence.
func (c *chaos) redisRestart(ctx context.Context, p [3]float64) (string, error) {
	t := c.targets[0]
	down := 500*time.Millisecond + time.Duration(p[1]*float64(2500*time.Millisecond))
	keep := p[0] < 0.5
	t.setFaulty(true)
	defer t.setFaulty(false)
	how := "SHUTDOWN SAVE, keeping its keys"
	if keep {
		c.redis.StopSave()
	} else {
		how = "killed, starting empty"
		c.redis.Kill()
		os.Remove(filepath.Join(c.redis.Dir, "dump.rdb"))
		t.mu.Lock()
		t.lostData = time.Now()
		t.mu.Unlock()
	}
	sleepCtx(ctx, down)
	if err := c.redis.Start(ctx); err != nil {
		return "", err
	}
	return fmt.Sprintf("Redis %s, %s, down %s", c.redis.Addr(), how, down.Round(10*time.Millisecond)), nil
}

// clientPause pauses the plain Redis's writes for 1-10 s: it answers PING
// and reads, and applies nothing.
func (c *chaos) clientPause(ctx context.Context, p [3]float64) (string, error) {
	t := c.targets[0]
	d := time.Second + time.Duration(p[0]*float64(9*time.Second))
	t.setFaulty(true)
	defer t.setFaulty(false)
	admin := redis.NewClient(chaosRedisOptions(c.redis.Addr()))
	defer admin.Close()
	if err := admin.Do(ctx, "CLIENT", "PAUSE", d.Milliseconds(), "WRITE").Err(); err != nil {
		return "", fmt.Errorf("CLIENT PAUSE: %w", err)
	}
	sleepCtx(ctx, d+100*time.Millisecond)
	admin.Do(context.WithoutCancel(ctx), "CLIENT", "UNPAUSE")
	return fmt.Sprintf("CLIENT PAUSE %d WRITE on %s", d.Milliseconds(), c.redis.Addr()), nil
}

// sentinelKillBlocked: a master may be killed only while a replica holds
// what it applied: the replica is in sync, and the daemon that streams
// does not count the master degraded, so its writes waited for it.
func (c *chaos) sentinelKillBlocked(ctx context.Context) string {
	holder := c.slotHolder(ctx)
	if holder == nil {
		return "no daemon streams, to say whether the master is degraded"
	}
	m := scrapeMetrics(holder.metrics)
	if m == nil {
		return "no /metrics"
	}
	for series, v := range m {
		if name, labels := seriesLabels(series); name == "pg_invalidator_redis_degraded" && labels["target"] == "ha" && v != 0 {
			return "the daemon counts the master degraded (no replica online): a kill now could lose what it applied"
		}
	}
	master, err := c.sentinel.MasterAddr(ctx)
	if err != nil {
		return err.Error()
	}
	mc := redis.NewClient(chaosRedisOptions(master))
	defer mc.Close()
	info, err := mc.Info(ctx, "replication").Result()
	if err != nil {
		return "the master does not answer: " + err.Error()
	}
	if behind, ok := replicaBehind(info); !ok || behind > 1<<20 {
		return "the replica is not online, or is more than 1 MiB behind"
	}
	return ""
}

// replicaBehind reads, from a master's INFO replication, how many bytes
// its first replica is behind; false when it has none online.
func replicaBehind(info string) (int64, bool) {
	master, err := strconv.ParseInt(infoField(info, "master_repl_offset"), 10, 64)
	if err != nil {
		return 0, false
	}
	// slave0:ip=127.0.0.1,port=6380,state=online,offset=1234,lag=0
	for f := range strings.SplitSeq(infoField(info, "slave0"), ",") {
		if v, ok := strings.CutPrefix(f, "offset="); ok && strings.Contains(info, "state=online") {
			replica, err := strconv.ParseInt(v, 10, 64)
			return master - replica, err == nil
		}
	}
	return 0, false
}

// sentinelKill kills the Sentinel group's master with SIGKILL, for good,
// waits until the sentinels promote its replica and the target takes
// writes again, and then gives the new master a replica on a new node.
func (c *chaos) sentinelKill(ctx context.Context, _ [3]float64) (string, error) {
	t := c.targets[1]
	master, err := c.sentinel.MasterAddr(ctx)
	if err != nil {
		return "", err
	}
	var node *localsvc.RedisNode
	for _, n := range append([]*localsvc.RedisNode{c.sentinel.Master, c.sentinel.Replica}, c.sentinel.Added...) {
		if n.Addr() == master {
			node = n
		}
	}
	if node == nil {
		return "", fmt.Errorf("the sentinels name %s the master, a node the harness did not start", master)
	}
	t.setFaulty(true)
	node.Kill()
	killed := time.Now()
	var promoted string
	ok := waitFor(ctx, 60*time.Second, func() bool {
		a, err := c.sentinel.MasterAddr(ctx)
		if err != nil || a == master {
			return false
		}
		promoted = a
		return t.client.Set(ctx, "harness:probe", "x", time.Minute).Err() == nil
	})
	t.setFaulty(false)
	if !ok {
		c.anomaly("sentinel-kill: no new master took writes within 60s of killing %s", master)
		return "no failover", nil
	}
	failover := time.Since(killed)
	if _, err := c.sentinel.AddReplica(ctx, 60*time.Second); err != nil {
		c.anomaly("sentinel-kill: the new master %s got no replica: %v", promoted, err)
	}
	return fmt.Sprintf("master %s killed for good; %s promoted and taking writes %s later; a new replica attached %s after the kill",
		master, promoted, failover.Round(10*time.Millisecond), time.Since(killed).Round(10*time.Millisecond)), nil
}

// PostgreSQL.

// pgShutdownWithin is how long a fast shutdown of the primary may take
// before the harness calls it held and shuts the server down immediately.
const pgShutdownWithin = 30 * time.Second

// pgRestart restarts the primary with a fast shutdown.
func (c *chaos) pgRestart(ctx context.Context, _ [3]float64) (string, error) {
	senders := c.walsenders(ctx)
	start := time.Now()
	fast, err := c.pg.StopWithin(pgShutdownWithin)
	if err != nil {
		return "", err
	}
	stopped := time.Since(start)
	if !fast {
		c.anomaly("pg-restart: the fast shutdown of the primary did not finish within %s; shut it down immediately (its walsenders just before: %s)",
			pgShutdownWithin, senders)
	}
	if err := c.pg.Start(ctx); err != nil {
		return "", err
	}
	return fmt.Sprintf("fast shutdown in %s, accepting connections %s after it began", stopped.Round(10*time.Millisecond),
		time.Since(start).Round(10*time.Millisecond)), nil
}

// walsenders describes the primary's walsenders: who, and how far each
// client confirmed what it was sent.
func (c *chaos) walsenders(ctx context.Context) string {
	var out string
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	err := c.ctl.queryRow(qctx, `SELECT coalesce(string_agg(format('%s %s sent %s flushed %s', application_name, state, sent_lsn, flush_lsn), '; '), 'none')
		FROM pg_stat_replication`, nil, &out)
	if err != nil {
		return err.Error()
	}
	return out
}

// pgSilence silences every connection through the proxy (the daemons'),
// and swallows new ones, for 2-10 s; then lets new ones through, and 0-5 s
// later closes the silenced ones, as the network coming back does.
func (c *chaos) pgSilence(ctx context.Context, p [3]float64) (string, error) {
	d := 2*time.Second + time.Duration(p[0]*float64(8*time.Second))
	after := time.Duration(p[1] * float64(5*time.Second))
	n := c.proxy.Silence()
	c.proxy.SwallowNew(true)
	sleepCtx(ctx, d)
	c.proxy.SwallowNew(false)
	sleepCtx(ctx, after)
	closed := c.proxy.CloseSilenced()
	return fmt.Sprintf("%d connections silenced and new ones swallowed for %s; %d silenced connections closed %s after", n,
		d.Round(10*time.Millisecond), closed, after.Round(10*time.Millisecond)), nil
}

// The catalog.

// swapFor returns the swap window a transaction committed in, if its
// chaos_items keys were held back by it.
func (c *chaos) swapFor(rec *txRecord) *swapWindow {
	sw := c.currentSwap()
	if sw == nil || !sw.covers(rec.commit) || !slices.ContainsFunc(rec.keys, func(k txKey) bool { return k.items }) {
		return nil
	}
	return sw
}

func (c *chaos) currentSwap() *swapWindow {
	c.swapMu.Lock()
	defer c.swapMu.Unlock()
	return c.swap
}

// swapBlocked: one swap at a time, so that each flush is the last swap's.
func (c *chaos) swapBlocked(context.Context) string {
	if sw := c.currentSwap(); sw != nil && sw.handledAt().IsZero() {
		return "the last swap is not flushed yet"
	}
	return ""
}

// swapCanary is the key the harness sets in every target right after a
// swap commits: the catalog watch's flush of chaos_items (the pattern
// chaos:item:*) deletes it, which says the swap is handled.
func swapCanary(n int) string { return fmt.Sprintf("%sitem:swap-canary-%d", chaosPrefix, n) }

// swapTable swaps chaos_items for a copy, the way online schema-change
// tools do; the daemon must add the new table to the publication and
// flush its keys, since changes made to it before were never streamed.
func (c *chaos) swapTable(ctx context.Context, _ [3]float64) (string, error) {
	sw := &swapWindow{start: time.Now()}
	c.swapMu.Lock()
	c.swap = sw
	c.swaps++
	n := c.swaps
	c.swapMu.Unlock()
	c.faults.touchCatalog()
	err := c.ctl.exec(ctx, `SET lock_timeout = '10s';
ALTER TABLE chaos_items RENAME TO chaos_items_old;
CREATE TABLE chaos_items (LIKE chaos_items_old INCLUDING ALL);
ALTER TABLE chaos_items REPLICA IDENTITY FULL;
INSERT INTO chaos_items SELECT * FROM chaos_items_old;
DROP TABLE chaos_items_old;
RESET lock_timeout`)
	if err != nil {
		return "", fmt.Errorf("swap: %w", err)
	}
	for _, t := range c.targets {
		if err := t.client.Set(ctx, swapCanary(n), "canary", time.Hour).Err(); err != nil {
			return "", fmt.Errorf("set the swap canary in %s: %w", t.name, err)
		}
	}
	go c.watchFlush(ctx, "swap", swapCanary(n), func(at time.Time) {
		sw.mu.Lock()
		sw.handled = at
		sw.mu.Unlock()
	})
	return "chaos_items renamed away, a copy created under its name (LIKE ... INCLUDING ALL, REPLICA IDENTITY FULL, rows copied), the old one dropped", nil
}

// detachPartition detaches a region's partition of chaos_events and
// creates an empty one in its place, in one transaction, then drops the
// detached table: the region's rows vanish without a row event, and the
// daemon must flush the table's keys.
func (c *chaos) detachPartition(ctx context.Context, p [3]float64) (string, error) {
	region := chaosRegions[int(p[0]*float64(len(chaosRegions)))]
	c.swapMu.Lock()
	gen := c.partitions[region]
	c.partitions[region]++
	c.swapMu.Unlock()
	old, next := partitionName(region, gen), partitionName(region, gen+1)
	c.faults.touchCatalog()
	err := c.ctl.exec(ctx, fmt.Sprintf(`SET lock_timeout = '10s';
BEGIN;
ALTER TABLE chaos_events DETACH PARTITION %s;
CREATE TABLE %s PARTITION OF chaos_events FOR VALUES IN ('%s');
COMMIT;
DROP TABLE %[1]s;
RESET lock_timeout`, old, next, region))
	if err != nil {
		return "", fmt.Errorf("detach: %w", err)
	}
	canary := fmt.Sprintf("%sevent:%s:detach-canary-%d", chaosPrefix, region, gen+1)
	for _, t := range c.targets {
		if err := t.client.Set(ctx, canary, "canary", time.Hour).Err(); err != nil {
			return "", fmt.Errorf("set the detach canary in %s: %w", t.name, err)
		}
	}
	go c.watchFlush(ctx, "detach", canary, nil)
	return fmt.Sprintf("%s detached (its rows gone from chaos_events) and dropped; %s created empty", old, next), nil
}

// watchFlush waits until key is gone from every target, logs when, and
// calls done with the time, if done is not nil.
func (c *chaos) watchFlush(ctx context.Context, what, key string, done func(time.Time)) {
	start := time.Now()
	ok := waitFor(ctx, 10*time.Minute, func() bool {
		for _, t := range c.targets {
			if n, err := t.client.Exists(ctx, key).Result(); err != nil || n != 0 {
				return false
			}
		}
		return true
	})
	if !ok {
		return
	}
	c.event("%s flushed: %s gone from every target %s after it was set", what, key, time.Since(start).Round(10*time.Millisecond))
	if done != nil {
		done(time.Now())
	}
}

// fileSize returns the size of the file at path; 0 when it is missing.
func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// tailFrom returns the file at path from offset on.
func tailFrom(path string, offset int64) string {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) < offset {
		return ""
	}
	return string(b[offset:])
}

// ready reports whether u's process answers /readyz 200.
func (u *unit) ready() bool {
	code, _ := httpGetBody(u.metrics, "/readyz")
	return code == http.StatusOK
}
