package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pg-invalidator/pg-invalidator/invalidator"
)

// DefaultTarget is the name of the target the rules file's [redis] table
// describes, the one --redis and REDIS_URL complete. Logs, errors and
// /readyz leave the name out when it is the only target.
const DefaultTarget = "default"

// Target is one Redis deployment to invalidate, such as the cache of one
// region, as the configuration describes it: the [redis] table, named
// DefaultTarget, or a [[target]] table.
type Target struct {
	Name string // unique; it labels metrics and names the target in logs and /readyz
	// Redis is how to reach it. Its Logger is ignored: Config.Logger takes
	// its place.
	Redis invalidator.Options
}

// targetConn is a Target connected: its Invalidator, and what readiness and
// /metrics know of it.
type targetConn struct {
	name     string
	inv      *invalidator.Invalidator
	answered atomic.Int64 // when it last answered, an Apply or a ping (Unix ns); 0: never
	up       atomic.Bool  // its last Apply or ping succeeded; false: none has yet
	applied  atomic.Int64 // when its last Apply succeeded (Unix ns); 0: never
}

// record notes how the target's last Apply or ping went.
func (t *targetConn) record(ok bool) {
	t.up.Store(ok)
	if ok {
		t.answered.Store(time.Now().UnixNano())
	}
}

// fanout applies every batch to every target, in config order. A
// transaction is acknowledged only after every target has applied it, so
// one that is down holds the acknowledgement back.
type fanout []*targetConn

// newFanout builds an Invalidator for each of cfg.Targets.
func newFanout(cfg Config) (fanout, error) {
	if len(cfg.Targets) == 0 {
		return nil, errors.New("no Redis target: daemon.Config.Targets is empty")
	}
	var f fanout
	for _, t := range cfg.Targets {
		opts := t.Redis
		opts.Logger = cfg.Logger
		opts.ProgressInterval = cfg.ProgressInterval
		if len(cfg.Targets) > 1 || t.Name != DefaultTarget {
			opts.Logger = cfg.Logger.With("target", t.Name)
		}
		inv, err := invalidator.New(opts)
		if err != nil {
			f.Close()
			return nil, wrapTarget(t.Name, len(cfg.Targets), err)
		}
		f = append(f, &targetConn{name: t.Name, inv: inv})
	}
	return f, nil
}

// wrapTarget names target name in err, when there are several targets (n)
// or it is not the default.
func wrapTarget(name string, n int, err error) error {
	if n == 1 && name == DefaultTarget {
		return err
	}
	return fmt.Errorf("redis target %s: %w", name, err)
}

// Apply applies b to every target and clears it once all have. One target
// is applied on this goroutine, as a lone Invalidator would be; several run
// at once, each retrying on its own until it succeeds or ctx ends. It
// returns nil only when every target applied b; otherwise b is left as it
// was, and applying it again may run its commands twice on the targets that
// had succeeded (delivery is at least once).
func (f fanout) Apply(ctx context.Context, b *invalidator.Batch) error {
	if len(f) == 1 {
		if err := f[0].inv.Apply(ctx, b); err != nil {
			return wrapTarget(f[0].name, 1, err)
		}
		f[0].applied.Store(time.Now().UnixNano())
		f[0].record(true)
		b.Clear()
		return nil
	}
	errs := make([]error, len(f))
	var wg sync.WaitGroup
	for i, t := range f {
		wg.Go(func() {
			if err := t.inv.Apply(ctx, b); err != nil {
				errs[i] = fmt.Errorf("redis target %s: %w", t.name, err)
				return
			}
			t.applied.Store(time.Now().UnixNano())
			t.record(true)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	b.Clear()
	return nil
}

// appliedAt returns when each target's last Apply succeeded: after an
// Apply that returned nil, when each one finished it.
func (f fanout) appliedAt() []targetTime {
	ts := make([]targetTime, len(f))
	for i, t := range f {
		ts[i] = targetTime{name: t.name, at: time.Unix(0, t.applied.Load())}
	}
	return ts
}

// targetTime is a moment of one target.
type targetTime struct {
	name string
	at   time.Time
}

// Ping checks once that every target answers, each at the same time, and
// records the outcome for readiness and target_up.
func (f fanout) Ping(ctx context.Context) error {
	errs := make([]error, len(f))
	var wg sync.WaitGroup
	for i, t := range f {
		wg.Go(func() {
			err := t.inv.Ping(ctx)
			t.record(err == nil)
			if err != nil {
				errs[i] = wrapTarget(t.name, len(f), err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// SetCanary sets the canary's key to value on every target, each at the
// same time, once. It returns every target's error, joined.
func (f fanout) SetCanary(ctx context.Context, key, value string) error {
	errs := make([]error, len(f))
	var wg sync.WaitGroup
	for i, t := range f {
		wg.Go(func() {
			if err := t.inv.SetCanary(ctx, key, value); err != nil {
				errs[i] = wrapTarget(t.name, len(f), err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Stats sums the counters of every target: a command applied on two
// targets counts twice.
func (f fanout) Stats() invalidator.Stats {
	var sum invalidator.Stats
	for _, t := range f {
		st := t.inv.Stats()
		sum.Del += st.Del
		sum.Incr += st.Incr
		sum.DelPatternKeys += st.DelPatternKeys
		sum.IncrPatternKeys += st.IncrPatternKeys
		sum.Version += st.Version
		sum.VersionKept += st.VersionKept
		sum.VersionPatternKeys += st.VersionPatternKeys
		sum.Redeletes += st.Redeletes
		sum.RedeletesFound += st.RedeletesFound
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

// SetMarker sets key to value on every target.
func (f fanout) SetMarker(ctx context.Context, key, value string) error {
	for _, t := range f {
		if err := t.inv.SetMarker(ctx, key, value); err != nil {
			return wrapTarget(t.name, len(f), err)
		}
	}
	return nil
}

// MarkerIn returns the name of the first target that holds key, or "" when
// none does.
func (f fanout) MarkerIn(ctx context.Context, key string) (string, error) {
	for _, t := range f {
		ok, err := t.inv.MarkerExists(ctx, key)
		if err != nil {
			return "", wrapTarget(t.name, len(f), err)
		}
		if ok {
			return t.name, nil
		}
	}
	return "", nil
}

// Marker returns the value of key in the first target that holds it, and
// that target's name; "", "" when none does.
func (f fanout) Marker(ctx context.Context, key string) (target, value string, err error) {
	for _, t := range f {
		v, ok, err := t.inv.Marker(ctx, key)
		if err != nil {
			return "", "", wrapTarget(t.name, len(f), err)
		}
		if ok {
			return t.name, v, nil
		}
	}
	return "", "", nil
}

// Close closes every target's connections.
func (f fanout) Close() {
	for _, t := range f {
		t.inv.Close()
	}
}

// logServers logs, for each target, that it is reachable, where, and the
// server software its masters run (Redis or Valkey, and the release).
// What cannot be read is logged as unknown: INFO may be denied by an ACL.
func logServers(ctx context.Context, log *slog.Logger, targets fanout) {
	for _, t := range targets {
		attrs := []any{"addr", t.inv.Addr()}
		if len(targets) > 1 || t.name != DefaultTarget {
			attrs = append([]any{"target", t.name}, attrs...)
		}
		servers, err := t.inv.Servers(ctx)
		if err != nil {
			attrs = append(attrs, "server", "unknown", "err", err)
		} else {
			attrs = append(attrs, "server", strings.Join(servers, ", "))
		}
		log.Info("redis is reachable", attrs...)
	}
}
