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
// by itself here (MaxRetries: -1), so a timeout does not double an INCR
// behind our back; a command whose reply was lost is still resent, and may
// run twice.
package invalidator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"math/rand/v2"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
)

// Options configures an Invalidator.
type Options struct {
	// URL is a redis:// or rediss:// URL, as go-redis's ParseURL reads it.
	URL string
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

// Invalidator runs batches of commands against one Redis server.
type Invalidator struct {
	client     *redis.Client
	log        *slog.Logger
	url        string // raw, for RedactError only
	addr       string // host:port, for logs
	minBackoff time.Duration
	maxBackoff time.Duration
	scanCount  int64
	pipeSize   int

	mu        sync.Mutex // serializes Apply; protects the fields below
	down      bool       // the last attempt failed
	downSince time.Time
	ops       []op          // scratch: the commands of one pipeline or SCAN page
	cmds      []redis.Cmder // scratch: their replies

	stats counters
}

// op is one single-key command to send.
type op struct {
	action pginvalidator.Action // DelPattern and IncrPattern act on one key found by SCAN
	key    string
	n      int64 // INCRBY amount, Incr only
}

// New parses opts.URL and builds a client. It does not connect: see Ping.
// Errors never contain the URL's password.
func New(opts Options) (*Invalidator, error) {
	ro, err := redis.ParseURL(opts.URL)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) { // it quotes the whole URL, and RedactURL cannot parse it
			return nil, fmt.Errorf("parse redis url: %w", ue.Err)
		}
		return nil, fmt.Errorf("parse redis url %s: %w",
			pginvalidator.RedactURL(opts.URL), pginvalidator.RedactError(err, opts.URL))
	}
	ro.MaxRetries = -1        // never resend a whole pipeline: INCRs would run twice
	ro.DialerRetries = 1      // our own backoff decides when to try again
	ro.DisableIdentity = true // no CLIENT SETINFO: Redis 7.0 logs handshake errors
	ro.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	rememberPassword(ro.Password)

	inv := &Invalidator{
		client:     redis.NewClient(ro),
		log:        opts.Logger,
		url:        opts.URL,
		addr:       ro.Addr,
		minBackoff: opts.MinBackoff,
		maxBackoff: opts.MaxBackoff,
		scanCount:  int64(opts.ScanCount),
		pipeSize:   opts.PipelineSize,
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

// Ping checks once that Redis answers; it does not retry.
func (inv *Invalidator) Ping(ctx context.Context) error {
	if err := inv.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("ping redis %s: %w", inv.addr, pginvalidator.RedactError(err, inv.url))
	}
	return nil
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
	b.applied()
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

// exec sends ops in one pipeline, then resends the ones that failed, and
// only those, until each has succeeded or been skipped, or ctx is done.
// It reorders ops.
func (inv *Invalidator) exec(ctx context.Context, ops []op) error {
	for attempt := 0; ; attempt++ {
		pipe := inv.client.Pipeline()
		cmds := inv.cmds[:0]
		for _, o := range ops {
			cmds = append(cmds, o.queue(ctx, pipe))
		}
		inv.cmds = cmds
		_, _ = pipe.Exec(ctx) // it returns only the first error: each reply is checked below

		failed, lastErr := ops[:0], error(nil)
		for i, c := range cmds {
			err := c.Err()
			switch {
			case err == nil:
				inv.stats.count(ops[i], c)
			case permanent(err):
				inv.stats.errors.Add(1)
				inv.stats.skipped.Add(1)
				inv.log.Error("redis rejected a command for good, skipping it",
					"action", ops[i].action.String(), "key", ops[i].key, "err", err)
			default:
				inv.stats.errors.Add(1)
				failed, lastErr = append(failed, ops[i]), err
			}
		}
		if len(failed) == 0 {
			return nil
		}
		ops = failed
		if err := inv.backoff(ctx, attempt, lastErr); err != nil {
			return err
		}
		inv.stats.retries.Add(uint64(len(ops)))
	}
}

// scan runs action (DelPattern or IncrPattern) on every key matching
// pattern, one SCAN page at a time.
func (inv *Invalidator) scan(ctx context.Context, pattern string, action pginvalidator.Action) error {
	var cursor uint64
	for {
		var keys []string
		var next uint64
		for attempt := 0; ; attempt++ {
			var err error
			keys, next, err = inv.client.Scan(ctx, cursor, pattern, inv.scanCount).Result()
			if err == nil {
				break
			}
			inv.stats.errors.Add(1)
			if err := inv.backoff(ctx, attempt, err); err != nil {
				return err
			}
			inv.stats.retries.Add(1)
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
		cursor = next
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
	lastErr = pginvalidator.RedactError(lastErr, inv.url)
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
