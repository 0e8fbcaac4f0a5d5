package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pg-invalidator/pg-invalidator/invalidator"
	"github.com/pg-invalidator/pg-invalidator/mapping"
)

// Target is one Redis deployment to invalidate, such as the cache of one
// region: the [redis] table, named mapping.DefaultTarget, or a [[target]].
type Target struct {
	Name string // unique; it labels metrics and names the target in logs and /readyz
	// Redis is how to reach it. Its Logger is ignored: Config.Logger takes
	// its place. For the default target, an empty URL means Config.RedisURL.
	Redis invalidator.Options
}

// target is one Redis deployment, and what readiness and /metrics know of it.
type target struct {
	name     string
	inv      *invalidator.Invalidator
	answered atomic.Int64 // when it last answered, an Apply or a ping (Unix ns); 0: never
	up       atomic.Bool  // its last Apply or ping succeeded; false: none has yet
}

// record notes how the target's last Apply or ping went.
func (t *target) record(ok bool) {
	t.up.Store(ok)
	if ok {
		t.answered.Store(time.Now().UnixNano())
	}
}

// targets are every Redis deployment the daemon invalidates, in config
// order. A transaction is acknowledged only after every one of them has
// applied it, so one that is down holds the acknowledgement back.
type targets []*target

// newTargets builds an Invalidator for each target of cfg. With no
// Targets, the one target is the default, from cfg.Redis and cfg.RedisURL.
func newTargets(cfg Config) (targets, error) {
	list := cfg.Targets
	if len(list) == 0 && cfg.Rules != nil && len(cfg.Rules.TargetTables) > 0 {
		return nil, errors.New("the rules have [[target]] tables but daemon.Config.Targets is empty: build it from the rules' Targets()")
	}
	if len(list) == 0 {
		def := Target{Name: mapping.DefaultTarget, Redis: cfg.Redis}
		def.Redis.URL = cfg.RedisURL
		list = []Target{def}
	}
	var ts targets
	for _, t := range list {
		opts := t.Redis
		if t.Name == mapping.DefaultTarget && opts.URL == "" {
			opts.URL = cfg.RedisURL
		}
		opts.Logger = cfg.Logger
		if len(list) > 1 || t.Name != mapping.DefaultTarget {
			opts.Logger = cfg.Logger.With("target", t.Name)
		}
		inv, err := invalidator.New(opts)
		if err != nil {
			ts.Close()
			return nil, ts.wrap(t.Name, len(list), err)
		}
		ts = append(ts, &target{name: t.Name, inv: inv})
	}
	return ts, nil
}

// wrap names the target in err, when there are several or it is not the
// default.
func (ts targets) wrap(name string, n int, err error) error {
	if n == 1 && name == mapping.DefaultTarget {
		return err
	}
	return fmt.Errorf("redis target %s: %w", name, err)
}

// Apply applies b to every target and empties it once all have. One target
// is applied on this goroutine, as a lone Invalidator would be; several run
// at once, each retrying on its own until it succeeds or ctx ends. It
// returns nil only when every target applied b; otherwise b is left as it
// was, and applying it again may run its commands twice on the targets that
// had succeeded (delivery is at least once).
func (ts targets) Apply(ctx context.Context, b *invalidator.Batch) error {
	if len(ts) == 1 {
		if err := ts[0].inv.Apply(ctx, b); err != nil {
			return ts.wrap(ts[0].name, 1, err)
		}
		ts[0].record(true)
		return nil
	}
	errs := make([]error, len(ts))
	var wg sync.WaitGroup
	for i, t := range ts {
		wg.Go(func() {
			if err := t.inv.ApplyShared(ctx, b); err != nil {
				errs[i] = fmt.Errorf("redis target %s: %w", t.name, err)
				return
			}
			t.record(true)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	b.Applied()
	return nil
}

// Ping checks once that every target answers, each at the same time, and
// records the outcome for readiness and target_up.
func (ts targets) Ping(ctx context.Context) error {
	errs := make([]error, len(ts))
	var wg sync.WaitGroup
	for i, t := range ts {
		wg.Go(func() {
			err := t.inv.Ping(ctx)
			t.record(err == nil)
			if err != nil {
				errs[i] = ts.wrap(t.name, len(ts), err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Stats sums the counters of every target: a command applied on two
// targets counts twice.
func (ts targets) Stats() invalidator.Stats {
	var sum invalidator.Stats
	for _, t := range ts {
		st := t.inv.Stats()
		sum.Del += st.Del
		sum.Incr += st.Incr
		sum.DelPatternKeys += st.DelPatternKeys
		sum.IncrPatternKeys += st.IncrPatternKeys
		sum.Errors += st.Errors
		sum.Skipped += st.Skipped
		sum.Retries += st.Retries
		sum.Batches += st.Batches
		sum.BatchCommands += st.BatchCommands
		for i := range sum.BatchSizes {
			sum.BatchSizes[i] += st.BatchSizes[i]
		}
	}
	return sum
}

// Close closes every target's connections.
func (ts targets) Close() {
	for _, t := range ts {
		t.inv.Close()
	}
}
