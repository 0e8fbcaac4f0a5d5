// Package invalidator speaks Redis for pg-invalidator: it runs the commands of
// a Batch as single-key UNLINK, INCR and INCRBY in bounded pipelines, and
// expands patterns with SCAN (never KEYS). It knows nothing of PostgreSQL.
//
// What it guarantees: when Apply returns nil, Redis has applied every command
// of the batch, except one Redis rejected for good (see Apply). Apply checks
// every reply of a pipeline, resends only the commands that failed, and keeps
// retrying, with capped and jittered exponential backoff, for as long as Redis
// is unavailable; only the caller's context stops it. So the caller may
// acknowledge the batch's LSN once Apply returns nil, and must not before.
//
// Delivery is at least once. A batch replayed after a crash or a failed Apply
// runs its commands again: a DEL is harmless twice, an INCR counts twice. In
// normal operation an INCR runs once per key per transaction, even for a
// transaction applied across several batches; the one exception is a
// transaction that increments more than MaxOpenIncrs distinct keys (see
// Batch). go-redis never resends a pipeline
// by itself here (MaxRetries: -1, and MaxRedirects: -1 on a cluster), so a
// timeout does not double an INCR behind our back; a command whose reply was
// lost is still resent, and may run twice.
//
// It speaks to one server (mode single), to the master a set of sentinels
// names (mode sentinel), or to Redis Cluster (mode cluster). In a cluster,
// each pipeline goes to the master that owns its keys' slots; a command
// answered MOVED or ASK is resent, alone, where Redis said, and patterns are
// scanned on every master. With Options.WaitReplicas, every pipeline ends
// with WAIT on the connection that carried its writes, and its commands
// count as applied only once enough replicas acknowledged them; otherwise
// they are resent (see Options.WaitReplicas).
package invalidator

import (
	"context"
	"fmt"
	"log/slog"
	"math/bits"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/internal/redact"
)

// Options configures an Invalidator.
type Options struct {
	// URL is a redis:// or rediss:// URL, as go-redis's ParseURL reads it.
	// Mode single only.
	URL string
	// Mode is ModeSingle, ModeCluster or ModeSentinel; empty means
	// ModeSingle.
	Mode string
	// Addrs are the cluster's seed nodes (ModeCluster) or the sentinels
	// (ModeSentinel), as host:port. Nil in mode single.
	Addrs []string
	// MasterName is the master's name at the sentinels; ModeSentinel only.
	MasterName string
	// Username and Password authenticate with AUTH (an ACL user when
	// Username is set). Empty: the URL's, or none. The sentinels themselves
	// are reached without a password.
	Username, Password string
	// TLS turns TLS on; in mode single a rediss:// URL does too. TLSCA is
	// a PEM file of the CAs to trust (empty: the system's), TLSCert and
	// TLSKey a client certificate and its key (empty: none), and
	// TLSServerName the name the server's certificate must hold (empty: the
	// host dialled). Setting any of them while TLS is off is an error.
	TLS                                   bool
	TLSCA, TLSCert, TLSKey, TLSServerName string
	// WaitReplicas, when above zero, ends every pipeline that writes with
	// WAIT WaitReplicas WaitTimeout on the same connection, so on the master
	// that ran its commands. Fewer acknowledgements than WaitReplicas, or a
	// failed WAIT, make Apply resend the pipeline's commands, with backoff,
	// until a WAIT confirms them: the master may have failed over and lost
	// them. An INCR may then count twice. Zero: no WAIT.
	WaitReplicas int
	// WaitTimeout is how long one WAIT may block; zero means 1s.
	WaitTimeout time.Duration
	// Logger receives state changes; nil means slog.Default().
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the wait before a retry: the n-th wait
	// is random in [0, min(MaxBackoff, MinBackoff·2ⁿ)). Zero means 50ms and 5s.
	MinBackoff, MaxBackoff time.Duration
	// ScanCount is the COUNT hint of each SCAN for a pattern; zero means 1000.
	ScanCount int
	// PipelineSize is the most commands sent in one round trip; zero means 1000.
	PipelineSize int
}

// Invalidator runs batches of commands against Redis: one server, a
// sentinel-managed master, or a cluster.
type Invalidator struct {
	client       redis.UniversalClient // single, or cluster
	single       *redis.Client         // mode single or sentinel; nil in a cluster
	cluster      *redis.ClusterClient  // mode cluster; nil otherwise
	log          *slog.Logger
	url          string // raw, for redaction only
	password     string // Options.Password, for redaction only
	addr         string // host:port, or the topology, for logs
	waitReplicas int    // 0: no WAIT
	waitTimeout  time.Duration
	minBackoff   time.Duration
	maxBackoff   time.Duration
	scanCount    int64
	pipeSize     int

	mu        sync.Mutex // serializes Apply; protects the fields below
	down      bool       // the last attempt failed
	downSince time.Time
	ops       []op                     // scratch: the commands of one pipeline or SCAN page
	groups    map[*redis.Client]*group // scratch: ops by the master that serves them

	stats counters
}

// op is one single-key command to send.
type op struct {
	action pginvalidator.Action // DelPattern and IncrPattern act on one key found by SCAN
	key    string
	n      int64  // INCRBY amount, Incr only
	ask    string // a cluster master to send it to once, after ASKING; empty: its slot's master
}

// group is one pipeline to one master, and what came of it.
type group struct {
	client   *redis.Client
	ops      []op
	cmds     []redis.Cmder // their replies
	done     []int         // indexes of ops that succeeded, to count once confirmed
	failed   []op          // ops to send again
	err      error         // the last error of a failed op
	redirect bool          // only MOVED or ASK failed ops here
}

// New checks opts and builds a client for its mode: it parses the URL,
// reads the TLS files and resolves nothing else. It does not connect: see
// Ping. Errors name the setting at fault and never contain a password.
func New(opts Options) (*Invalidator, error) {
	inv := &Invalidator{
		log:          opts.Logger,
		url:          opts.URL,
		password:     opts.Password,
		waitReplicas: opts.WaitReplicas,
		waitTimeout:  opts.WaitTimeout,
		minBackoff:   opts.MinBackoff,
		maxBackoff:   opts.MaxBackoff,
		scanCount:    int64(opts.ScanCount),
		pipeSize:     opts.PipelineSize,
		groups:       make(map[*redis.Client]*group),
	}
	if inv.waitReplicas < 0 {
		return nil, fmt.Errorf("redis wait_replicas %d: want zero or more", inv.waitReplicas)
	}
	if inv.waitTimeout <= 0 {
		inv.waitTimeout = defaultWaitTimeout
	}
	if err := inv.newClient(opts); err != nil {
		return nil, err
	}
	if inv.log == nil {
		inv.log = slog.Default()
	}
	if inv.minBackoff <= 0 {
		inv.minBackoff = 50 * time.Millisecond
	}
	if inv.maxBackoff <= 0 {
		inv.maxBackoff = 5 * time.Second
	}
	inv.maxBackoff = max(inv.maxBackoff, inv.minBackoff)
	if inv.scanCount <= 0 {
		inv.scanCount = 1000
	}
	if inv.pipeSize <= 0 {
		inv.pipeSize = 1000
	}
	return inv, nil
}

// Ping checks once that Redis answers, every master of a cluster; it does
// not retry.
func (inv *Invalidator) Ping(ctx context.Context) error {
	var err error
	if inv.cluster != nil {
		err = inv.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			if err := c.Ping(ctx).Err(); err != nil {
				return fmt.Errorf("%s: %w", c.Options().Addr, err)
			}
			return nil
		})
	} else {
		err = inv.single.Ping(ctx).Err()
	}
	if err != nil {
		return fmt.Errorf("ping redis %s: %w", inv.addr, inv.redactErr(err))
	}
	return nil
}

// Addr describes where Redis is, for logs: host:port in mode single, the
// sentinels and master name, or the cluster's seed nodes.
func (inv *Invalidator) Addr() string { return inv.addr }

// redactErr hides the passwords Redis was given in err's text.
func (inv *Invalidator) redactErr(err error) error {
	return redact.Secrets(redact.Error(err, inv.url), inv.password)
}

// Close closes the client's connections.
func (inv *Invalidator) Close() error { return inv.client.Close() }

// Apply runs every command of b and then empties b, so that it is ready for
// the next batch. The Incr keys of a transaction still open in b stay in b
// until its EndTx (see Batch). Del keys are sent as UNLINK, Incr keys as INCR or INCRBY,
// then each DelPattern pattern is scanned and its keys unlinked, and each
// IncrPattern pattern is scanned and its keys incremented (only while they
// exist: IncrPattern never creates a key).
//
// While Redis is unavailable (down, LOADING, OOM, READONLY, timeouts, ...)
// Apply retries the failed commands, without end, until ctx is done; then
// it returns ctx's error, wrapped, and leaves b as it was, so that calling
// Apply again runs it all again.
//
// A command Redis rejects because of the key's value (WRONGTYPE, a value
// INCR cannot parse, an overflow) can never succeed: Apply logs it once at
// Error with the key, counts it in Stats.Skipped, and goes on without it
// rather than block the stream forever. The cache that key version guards
// may then serve stale data until the key is fixed.
//
// Concurrent calls to Apply are serialized; Stats may be called at any time.
func (inv *Invalidator) Apply(ctx context.Context, b *Batch) error {
	if err := inv.ApplyShared(ctx, b); err != nil {
		return err
	}
	b.Applied()
	return nil
}

// ApplyShared is Apply without emptying b: it only reads b, so that several
// Invalidators, one per Redis deployment, may apply the same b at once, as
// long as nothing changes b meanwhile. Once every one of them has returned
// nil, the caller empties b with b.Applied.
func (inv *Invalidator) ApplyShared(ctx context.Context, b *Batch) error {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	size := b.Len()

	ops := inv.ops[:0]
	for k := range b.dels {
		ops = append(ops, op{action: pginvalidator.Del, key: k})
	}
	for k, n := range b.incrs {
		ops = append(ops, op{action: pginvalidator.Incr, key: k, n: n})
	}
	inv.ops = ops
	if err := inv.run(ctx, ops); err != nil {
		return err
	}
	for p := range b.delPatterns {
		if err := inv.scan(ctx, p, pginvalidator.DelPattern); err != nil {
			return fmt.Errorf("delete keys matching %q: %w", p, err)
		}
	}
	for p := range b.incrPatterns {
		if err := inv.scan(ctx, p, pginvalidator.IncrPattern); err != nil {
			return fmt.Errorf("increment keys matching %q: %w", p, err)
		}
	}
	inv.stats.observeBatch(size)
	inv.available()
	return nil
}

// run sends ops in pipelines of at most pipeSize commands.
func (inv *Invalidator) run(ctx context.Context, ops []op) error {
	for len(ops) > 0 {
		n := min(len(ops), inv.pipeSize)
		if err := inv.exec(ctx, ops[:n]); err != nil {
			return err
		}
		ops = ops[n:]
	}
	return nil
}

// exec sends ops in pipelines, one to each master that serves some of
// them, then resends the ones that failed, and only those, until each has
// succeeded or been skipped, or ctx is done. It reorders ops.
func (inv *Invalidator) exec(ctx context.Context, ops []op) error {
	redirects := 0 // consecutive attempts where only MOVED or ASK failed
	for attempt := 0; ; {
		groups, failed, lastErr := inv.route(ctx, ops)
		if len(groups) == 1 {
			inv.send(ctx, groups[0])
		} else {
			var wg sync.WaitGroup
			for _, g := range groups {
				wg.Go(func() { inv.send(ctx, g) })
			}
			wg.Wait()
		}
		redirectOnly := lastErr == nil
		for _, g := range groups {
			failed = append(failed, g.failed...)
			if g.err != nil {
				lastErr = g.err
				redirectOnly = redirectOnly && g.redirect
			}
		}
		if len(failed) == 0 {
			return nil
		}
		ops = failed
		inv.stats.retries.Add(uint64(len(ops)))
		if redirectOnly && redirects < 5 {
			// The slot map is stale: reload it now, and resend at once.
			redirects++
			_, _ = inv.masters(ctx)
			continue
		}
		redirects = 0
		if inv.cluster != nil {
			inv.cluster.ReloadState(ctx) // a master may have failed over
		}
		if err := inv.backoff(ctx, attempt, lastErr); err != nil {
			return err
		}
		attempt++
	}
}

// route splits ops by the master that serves them. failed holds the ops
// whose master is unknown (the cluster's slot map could not be loaded), and
// err why. route writes failed over ops, which the groups no longer need.
func (inv *Invalidator) route(ctx context.Context, ops []op) (groups []*group, failed []op, err error) {
	if len(inv.groups) > 64 { // the topology changed many times
		clear(inv.groups)
	}
	for _, g := range inv.groups {
		g.ops = g.ops[:0]
	}
	failed = ops[:0]
	for _, o := range ops {
		c, cerr := inv.masterFor(ctx, o.key, o.ask)
		if cerr != nil {
			inv.stats.errors.Add(1)
			o.ask = ""
			failed, err = append(failed, o), cerr
			continue
		}
		g := inv.groups[c]
		if g == nil {
			g = &group{client: c}
			inv.groups[c] = g
		}
		if len(g.ops) == 0 {
			groups = append(groups, g)
		}
		g.ops = append(g.ops, o)
	}
	return groups, failed, err
}

// send runs g's ops in one pipeline, ending it with WAIT when replicas must
// confirm, and sorts the outcome into g.failed and the stats.
func (inv *Invalidator) send(ctx context.Context, g *group) {
	pipe := g.client.Pipeline()
	g.cmds = g.cmds[:0]
	for _, o := range g.ops {
		if o.ask != "" {
			_ = pipe.Process(ctx, redis.NewCmd(ctx, "asking"))
		}
		g.cmds = append(g.cmds, o.queue(ctx, pipe))
	}
	var wait *redis.Cmd
	if inv.waitReplicas > 0 { // Pipeliner has no Wait; the read timeout covers it (see readTimeout)
		wait = pipe.Do(ctx, "wait", inv.waitReplicas, inv.waitTimeout.Milliseconds())
	}
	_, _ = pipe.Exec(ctx) // it returns only the first error: each reply is checked below

	g.done, g.failed, g.err, g.redirect = g.done[:0], g.failed[:0], nil, true
	for i, c := range g.cmds {
		o := g.ops[i]
		o.ask = ""
		err := c.Err()
		switch {
		case err == nil:
			g.done = append(g.done, i)
		case permanent(err):
			inv.stats.errors.Add(1)
			inv.stats.skipped.Add(1)
			inv.log.Error("redis rejected a command for good, skipping it",
				"action", o.action.String(), "key", o.key, "err", err)
		default:
			inv.stats.errors.Add(1)
			moved, ask := redirect(err)
			o.ask = ask
			g.redirect = g.redirect && (moved || ask != "")
			g.failed, g.err = append(g.failed, o), err
		}
	}
	if wait != nil && len(g.done) > 0 {
		n, err := wait.Int64()
		if err == nil && n < int64(inv.waitReplicas) {
			err = fmt.Errorf("WAIT %d %d: %d replicas acknowledged the writes of %s", inv.waitReplicas,
				inv.waitTimeout.Milliseconds(), n, g.client.Options().Addr)
		}
		if err != nil { // the writes may be lost on failover: send them again
			for _, i := range g.done {
				o := g.ops[i]
				o.ask = ""
				g.failed = append(g.failed, o)
			}
			inv.stats.errors.Add(uint64(len(g.done)))
			g.done, g.err, g.redirect = g.done[:0], err, false
		}
	}
	for _, i := range g.done {
		inv.stats.count(g.ops[i], g.cmds[i])
	}
}

// scan runs action (DelPattern or IncrPattern) on every key matching
// pattern, on every master, one SCAN page at a time. After a failure it
// goes on where it stopped on each master it knows by address; a master
// that replaced another after a failover is scanned from its start.
func (inv *Invalidator) scan(ctx context.Context, pattern string, action pginvalidator.Action) error {
	cursors := make(map[string]uint64) // by master address; absent: from the start
	finished := make(map[string]bool)  // masters scanned to the end, by address
	for attempt := 0; ; attempt++ {
		masters, err := inv.masters(ctx)
		for _, m := range masters {
			if err != nil {
				break
			}
			addr := "" // the one master, whatever its address
			if inv.cluster != nil {
				addr = m.Options().Addr
			}
			if finished[addr] {
				continue
			}
			cursor := cursors[addr]
			err = inv.scanNode(ctx, m, pattern, action, &cursor)
			cursors[addr] = cursor
			if ctx.Err() != nil { // run gave up: ctx is done
				return err
			}
			finished[addr] = err == nil
		}
		if err == nil {
			return nil
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

// scanNode runs action on the keys matching pattern on master m, from
// *cursor to the end, keeping *cursor up to date.
func (inv *Invalidator) scanNode(ctx context.Context, m *redis.Client, pattern string, action pginvalidator.Action, cursor *uint64) error {
	for {
		keys, next, err := m.Scan(ctx, *cursor, pattern, inv.scanCount).Result()
		if err != nil {
			return err
		}
		ops := inv.ops[:0]
		for _, k := range keys {
			ops = append(ops, op{action: action, key: k})
		}
		inv.ops = ops
		if err := inv.run(ctx, ops); err != nil {
			return err
		}
		if next == 0 {
			return nil
		}
		*cursor = next
	}
}

// incrIfExists increments KEYS[1] only if it exists, so that IncrPattern
// cannot recreate a key deleted between SCAN and INCR. It returns 0 for a
// missing key, never nil, which go-redis would report as redis.Nil.
const incrIfExists = `if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCR', KEYS[1]) end return 0`

// queue adds o's command to pipe.
func (o op) queue(ctx context.Context, pipe redis.Pipeliner) redis.Cmder {
	switch o.action {
	case pginvalidator.Incr:
		if o.n == 1 {
			return pipe.Incr(ctx, o.key)
		}
		return pipe.IncrBy(ctx, o.key, o.n)
	case pginvalidator.IncrPattern:
		return pipe.Eval(ctx, incrIfExists, []string{o.key})
	default: // Del, DelPattern
		return pipe.Unlink(ctx, o.key)
	}
}

// permanent reports whether Redis rejected a command for a reason that
// retrying cannot fix: the key holds another type, or a value INCR cannot
// parse or would overflow. HasErrorPrefix also sees these through a script.
func permanent(err error) bool {
	return redis.HasErrorPrefix(err, "WRONGTYPE") ||
		redis.HasErrorPrefix(err, "value is not an integer") ||
		redis.HasErrorPrefix(err, "increment or decrement would overflow")
}

// backoff logs that Redis is unavailable, the first time only, and waits
// before retry attempt+1. It returns ctx's error if ctx ends first.
func (inv *Invalidator) backoff(ctx context.Context, attempt int, lastErr error) error {
	lastErr = inv.redactErr(lastErr)
	if ctx.Err() != nil {
		return fmt.Errorf("redis %s: %w (last error: %v)", inv.addr, ctx.Err(), lastErr)
	}
	d := inv.delay(attempt)
	if !inv.down {
		inv.down, inv.downSince = true, time.Now()
		inv.log.Warn("redis unavailable, retrying", "addr", inv.addr, "err", lastErr, "delay", d)
	} else {
		inv.log.Debug("redis still unavailable", "addr", inv.addr, "err", lastErr, "delay", d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("redis %s: %w (last error: %v)", inv.addr, ctx.Err(), lastErr)
	case <-t.C:
		return nil
	}
}

// delay returns the wait before retry attempt+1: full jitter below a
// ceiling that doubles from minBackoff up to maxBackoff.
func (inv *Invalidator) delay(attempt int) time.Duration {
	ceiling := inv.maxBackoff
	if attempt < 32 {
		if d := inv.minBackoff << attempt; d > 0 && d < ceiling {
			ceiling = d
		}
	}
	return rand.N(ceiling)
}

// available logs that Redis answers again, after a failure. Apply calls it
// when a whole batch is done, not on the first reply: right after Redis comes
// back, go-redis's pool may still fail a few dials, and the state would flap.
func (inv *Invalidator) available() {
	if inv.down {
		inv.down = false
		inv.log.Info("redis available again", "addr", inv.addr, "after", time.Since(inv.downSince).Round(time.Millisecond))
	}
}

// BatchSizeBounds are the upper bounds of the Stats.BatchSizes buckets.
var BatchSizeBounds = [...]int{1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576}

// Stats are cumulative counters since New.
type Stats struct {
	Del             uint64 // UNLINK commands applied for Del
	Incr            uint64 // INCR and INCRBY commands applied for Incr
	DelPatternKeys  uint64 // keys a DelPattern unlinked
	IncrPatternKeys uint64 // keys an IncrPattern incremented
	Errors          uint64 // failed commands and SCAN calls, whether retried or skipped
	Skipped         uint64 // commands Redis rejected for good, never applied (see Apply)
	Retries         uint64 // commands and SCAN calls sent again after a failure
	Batches         uint64 // batches Apply completed
	BatchCommands   uint64 // sum of Batch.Len over those batches
	// BatchSizes[i] counts the batches of more than BatchSizeBounds[i-1] and
	// at most BatchSizeBounds[i] commands; the last counts the larger ones.
	BatchSizes [len(BatchSizeBounds) + 1]uint64
}

// Stats returns the counters. It is safe to call at any time.
func (inv *Invalidator) Stats() Stats { return inv.stats.snapshot() }

type counters struct {
	del, incr, delPatternKeys, incrPatternKeys atomic.Uint64
	errors, skipped, retries                   atomic.Uint64
	batches, batchCommands                     atomic.Uint64
	batchSizes                                 [len(BatchSizeBounds) + 1]atomic.Uint64
}

// count records the successful reply c to o.
func (s *counters) count(o op, c redis.Cmder) {
	switch o.action {
	case pginvalidator.Del:
		s.del.Add(1)
	case pginvalidator.Incr:
		s.incr.Add(1)
	case pginvalidator.DelPattern:
		if c.(*redis.IntCmd).Val() > 0 { // 0: the key was gone already
			s.delPatternKeys.Add(1)
		}
	case pginvalidator.IncrPattern:
		if n, _ := c.(*redis.Cmd).Int64(); n > 0 { // 0: the key was gone already
			s.incrPatternKeys.Add(1)
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
		Del:             s.del.Load(),
		Incr:            s.incr.Load(),
		DelPatternKeys:  s.delPatternKeys.Load(),
		IncrPatternKeys: s.incrPatternKeys.Load(),
		Errors:          s.errors.Load(),
		Skipped:         s.skipped.Load(),
		Retries:         s.retries.Load(),
		Batches:         s.batches.Load(),
		BatchCommands:   s.batchCommands.Load(),
	}
	for i := range s.batchSizes {
		st.BatchSizes[i] = s.batchSizes[i].Load()
	}
	return st
}
