package invalidator

import (
	"cmp"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
)

// Apply runs every command of b on Redis. It only reads b, so that several
// Invalidators, one per Redis deployment, may apply the same b at once, as
// long as nothing changes b meanwhile; once Apply has returned nil (on
// every Invalidator), the caller empties b with b.Clear. Del keys are sent
// as UNLINK, up to unlinkBatch keys each (of one slot, in a cluster), Incr
// keys as INCR or INCRBY, Version keys as the setVersion script; then each
// DelPattern pattern is scanned and the keys of each page unlinked so,
// each IncrPattern pattern is scanned and its keys incremented, each once
// though SCAN may return a key twice (see scanDedupe), and each
// VersionPattern pattern is scanned and its keys set to the LSN (only while
// they exist: a pattern never creates a key).
//
// While Redis is unavailable (down, LOADING, OOM, READONLY, timeouts, ...)
// Apply retries the failed commands, without end, until ctx is done; then
// it returns ctx's error, wrapped, and calling Apply again with b runs it
// all again.
//
// A command Redis rejects because of the key's value (WRONGTYPE, a value
// INCR cannot parse, an overflow) can never succeed: Apply logs it once at
// Error with the key, counts it in Stats.Skipped, and goes on without it
// rather than block the stream forever. The cache that key version guards
// may then serve stale data until the key is fixed.
//
// Apply may be called from several goroutines at once on one Invalidator:
// each call runs on its own, and a long pattern scan holds back no other
// call's commands. Stats may be called at any time.
func (inv *Invalidator) Apply(ctx context.Context, b *Batch) error {
	c := inv.begin(time.Now())
	defer inv.end(c)
	size := b.Len()

	ops := c.unlinkOps(c.ops[:0], b.delOrder, op{action: pginvalidator.Del, redelete: b.Redelete})
	for k, n := range b.incrs {
		ops = append(ops, op{action: pginvalidator.Incr, key: k, n: n})
	}
	for k, lsn := range b.versions {
		ops = append(ops, op{action: pginvalidator.Version, key: k, lsn: lsn, force: b.force})
	}
	c.ops = ops
	if err := c.run(ctx, ops); err != nil {
		return err
	}
	for p := range b.delPatterns {
		if err := c.scan(ctx, p, op{action: pginvalidator.DelPattern, redelete: b.Redelete}); err != nil {
			return fmt.Errorf("delete keys matching %q: %w", p, err)
		}
	}
	for p := range b.incrPatterns {
		if err := c.scan(ctx, p, op{action: pginvalidator.IncrPattern}); err != nil {
			return fmt.Errorf("increment keys matching %q: %w", p, err)
		}
	}
	for p, lsn := range b.versionPatterns {
		if err := c.scan(ctx, p, op{action: pginvalidator.VersionPattern, lsn: lsn, force: b.force}); err != nil {
			return fmt.Errorf("set version keys matching %q: %w", p, err)
		}
	}
	inv.stats.observeBatch(size)
	inv.available(c)
	return nil
}

// run sends ops in pipelines of at most pipeSize commands; a multi-key
// UNLINK is one.
func (c *call) run(ctx context.Context, ops []op) error {
	for len(ops) > 0 {
		n := min(len(ops), c.inv.pipeSize)
		if err := c.exec(ctx, ops[:n]); err != nil {
			return err
		}
		ops = ops[n:]
	}
	return nil
}

// exec sends ops in pipelines, one to each master that serves some of
// them, then resends the ones that failed, and only those, until each has
// succeeded or been skipped, or ctx is done. It reorders ops.
func (c *call) exec(ctx context.Context, ops []op) error {
	inv := c.inv
	redirects := 0 // consecutive attempts where only MOVED or ASK failed
	for attempt := 0; ; {
		groups, failed, lastErr := c.route(ctx, ops)
		if len(groups) == 1 {
			c.send(ctx, groups[0])
		} else {
			var wg sync.WaitGroup
			for _, g := range groups {
				wg.Go(func() { c.send(ctx, g) })
			}
			wg.Wait()
		}
		redirectOnly := lastErr == nil
		noScripts := 0
		for _, g := range groups {
			failed = append(failed, g.failed...)
			noScripts += g.noScripts
			if g.err != nil {
				lastErr = g.err
				redirectOnly = redirectOnly && g.redirect
			}
		}
		if len(failed) == 0 {
			return nil
		}
		ops = failed
		inv.stats.retries.Add(uint64(len(ops) - noScripts)) // a script loaded with EVAL is no retry
		if redirectOnly && redirects < 5 {
			// The slot map is stale, or a script is not cached where it
			// ran: reload the map now, and resend at once.
			redirects++
			_, _ = inv.masters(ctx)
			continue
		}
		redirects = 0
		if inv.cluster != nil {
			inv.cluster.ReloadState(ctx) // a master may have failed over
		}
		if err := c.backoff(ctx, attempt, lastErr); err != nil {
			return err
		}
		attempt++
	}
}

// route splits ops by the master that serves them. failed holds the ops
// whose master is unknown (the cluster's slot map could not be loaded), and
// err why. route writes failed over ops, which the groups no longer need.
func (c *call) route(ctx context.Context, ops []op) (groups []*group, failed []op, err error) {
	if len(c.groups) > 64 { // the topology changed many times
		clear(c.groups)
	}
	for _, g := range c.groups {
		g.ops = g.ops[:0]
	}
	failed = ops[:0]
	for _, o := range ops {
		m, merr := c.inv.masterFor(ctx, o.key, o.ask)
		if merr != nil {
			c.inv.stats.errors.Add(1)
			o.ask = ""
			failed, err = append(failed, o), merr
			continue
		}
		g := c.groups[m]
		if g == nil {
			g = &group{client: m}
			c.groups[m] = g
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
func (c *call) send(ctx context.Context, g *group) {
	inv := c.inv
	pipe := g.client.Pipeline()
	g.cmds = g.cmds[:0]
	for _, o := range g.ops {
		if o.ask != "" {
			_ = pipe.Process(ctx, redis.NewCmd(ctx, "asking"))
		}
		g.cmds = append(g.cmds, o.queue(ctx, pipe))
	}
	var wait *redis.Cmd
	want, countErr := 0, error(nil)
	if inv.waitReplicas > 0 {
		want, countErr = inv.replicas.waitFor(ctx, g.client, false)
	}
	if want > 0 { // Pipeliner has no Wait; the read timeout covers it (see readTimeout)
		wait = pipe.Do(ctx, "wait", want, inv.waitTimeout.Milliseconds())
	}
	_, _ = pipe.Exec(ctx) // it returns only the first error: each reply is checked below

	g.done, g.failed, g.err, g.redirect, g.noScripts = g.done[:0], g.failed[:0], nil, true, 0
	for i, cmd := range g.cmds {
		o := g.ops[i]
		o.ask = ""
		err := cmd.Err()
		switch {
		case err == nil:
			g.done = append(g.done, i)
		case permanent(err):
			inv.stats.errors.Add(1)
			inv.stats.skipped.Add(1)
			inv.log.Error("redis rejected a command for good, skipping it",
				"action", o.action.String(), "key", o.key, "err", err)
		case noScript(err): // resent at once, with EVAL, which caches the script there
			o.eval = true
			g.noScripts++
			g.failed, g.err = append(g.failed, o), err
		default:
			inv.stats.errors.Add(1)
			moved, ask := redirect(err)
			o.ask = ask
			if len(o.keys) > 1 && (ask != "" || splitUnlink(err)) {
				// Its slot is being migrated: the keys still on the old
				// master and those moved must each go where they are.
				g.failed = o.split(g.failed)
				g.err = err
				continue
			}
			g.redirect = g.redirect && (moved || ask != "")
			g.failed, g.err = append(g.failed, o), err
		}
	}
	if wait != nil && len(g.done) > 0 {
		n, err := wait.Int64()
		if err == nil && n < int64(want) {
			// The master may have lost a replica since its count was read:
			// then WAIT asks for the ones it still has.
			addr := inv.masterAddr(g.client)
			now, nowErr := inv.replicas.waitFor(ctx, g.client, true)
			switch {
			case nowErr == nil && int64(now) <= n:
			case countErr != nil || nowErr != nil:
				err = fmt.Errorf("WAIT %d %d: %d replicas acknowledged the writes of %s (%w)", want,
					inv.waitTimeout.Milliseconds(), n, addr, cmp.Or(nowErr, countErr))
			default:
				err = fmt.Errorf("WAIT %d %d: %d replicas acknowledged the writes of %s", want,
					inv.waitTimeout.Milliseconds(), n, addr)
			}
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
	if len(g.failed) < len(g.ops) { // applied, or rejected for good
		inv.advance(c, time.Now())
	}
}

// op is one command to send: single-key, but for UNLINK.
type op struct {
	action   pginvalidator.Action // the pattern actions act on keys found by SCAN
	key      string               // the key, the first of keys for Del and DelPattern
	keys     []string             // Del and DelPattern: the keys of one UNLINK, of one slot in a cluster; nil otherwise
	n        int64                // INCRBY amount, Incr only
	lsn      pginvalidator.LSN    // the LSN to set, Version and VersionPattern only
	force    bool                 // set the LSN whatever the key holds (a resync); Version and VersionPattern only
	redelete bool                 // a re-delete (Batch.Redelete); Del and DelPattern only
	eval     bool                 // send the script with EVAL: the server answered NOSCRIPT to EVALSHA
	ask      string               // a cluster master to send it to once, after ASKING; empty: its slot's master
}

// group is one pipeline to one master, and what came of it.
type group struct {
	client    *redis.Client
	ops       []op
	cmds      []redis.Cmder // their replies
	done      []int         // indexes of ops that succeeded, to count once confirmed
	failed    []op          // ops to send again
	err       error         // the last error of a failed op
	redirect  bool          // only MOVED, ASK or NOSCRIPT failed ops here, or UNLINKs to send one key at a time
	noScripts int           // ops that failed with NOSCRIPT
}

// queue adds o's command to pipe.
func (o op) queue(ctx context.Context, pipe redis.Pipeliner) redis.Cmder {
	switch o.action {
	case pginvalidator.Incr:
		if o.n == 1 {
			return pipe.Incr(ctx, o.key)
		}
		return pipe.IncrBy(ctx, o.key, o.n)
	case pginvalidator.IncrPattern:
		return queueScript(ctx, pipe, incrIfExists, o.eval, []string{o.key})
	case pginvalidator.Version, pginvalidator.VersionPattern:
		return queueScript(ctx, pipe, setVersion, o.eval, []string{o.key},
			o.lsn.VersionValue(), flag(o.action == pginvalidator.VersionPattern), flag(o.force))
	default: // Del, DelPattern
		return pipe.Unlink(ctx, o.keys...)
	}
}

// split appends to ops one op per key of o, a multi-key UNLINK, each
// asking where o asks.
func (o op) split(ops []op) []op {
	for i, k := range o.keys {
		one := o
		one.key, one.keys = k, o.keys[i:i+1:i+1]
		ops = append(ops, one)
	}
	return ops
}

// flag is a boolean script argument.
func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// permanent reports whether Redis rejected a command for a reason that
// retrying cannot fix: the key holds another type, or a value INCR cannot
// parse or would overflow. HasErrorPrefix also sees these through a script.
func permanent(err error) bool {
	return redis.HasErrorPrefix(err, "WRONGTYPE") ||
		redis.HasErrorPrefix(err, "value is not an integer") ||
		redis.HasErrorPrefix(err, "increment or decrement would overflow")
}
