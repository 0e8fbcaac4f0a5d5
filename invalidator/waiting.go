package invalidator

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// progress is how the Apply in progress fares, for Waiting. Apply, the
// pipelines of a cluster's masters and the backoff update it; Waiting reads
// it from any goroutine.
type progress struct {
	mu      sync.Mutex // protects the fields below
	since   time.Time  // when the Apply began, or last got a reply that ends a command; zero: no Apply in progress
	lastErr error      // the last error the Apply retried after, redacted; nil: none since since
}

// begin notes that an Apply starts now.
func (p *progress) begin(now time.Time) {
	p.mu.Lock()
	p.since, p.lastErr = now, nil
	p.mu.Unlock()
}

// end notes that the Apply returned.
func (p *progress) end() {
	p.mu.Lock()
	p.since, p.lastErr = time.Time{}, nil
	p.mu.Unlock()
}

// advance notes that Redis applied (or rejected for good) some commands, or
// returned a page of a pattern scan, just now.
func (p *progress) advance(now time.Time) {
	p.mu.Lock()
	if !p.since.IsZero() {
		p.since, p.lastErr = now, nil
	}
	p.mu.Unlock()
}

// fail notes the error an Apply is about to retry after.
func (p *progress) fail(err error) {
	p.mu.Lock()
	if !p.since.IsZero() {
		p.lastErr = err
	}
	p.mu.Unlock()
}

// Waiting reports on the Apply in progress: since is when it began or last
// got a command applied (or rejected for good) or a page of a pattern scan,
// and lastErr the last error it retried after since then (nil: none, such
// as while a command is still blocked in Redis). since is zero when no
// Apply is in progress. A caller that sees since long past knows that Redis
// has applied nothing for that long, even if it answers PING: paused
// writes (CLIENT PAUSE ... WRITE), NOPERM, OOM, READONLY, a WAIT that comes
// back short. It is safe to call at any time; lastErr holds no password.
func (inv *Invalidator) Waiting() (since time.Time, lastErr error) {
	inv.progress.mu.Lock()
	defer inv.progress.mu.Unlock()
	return inv.progress.since, inv.progress.lastErr
}

// SetCanary sets key to value, without expiry, once: no retry, and a
// MOVED reply is an error too. The daemon sets its end-to-end canary's key
// with it; the key is deleted like any other, through a Batch. In a cluster
// it goes to the master of key's slot, as Apply's commands do (so the ACL
// needs no COMMAND, which the cluster client's own routing would send). Its
// error holds no password.
func (inv *Invalidator) SetCanary(ctx context.Context, key, value string) error {
	c, err := inv.masterFor(ctx, key, "")
	if err == nil {
		err = c.Set(ctx, key, value, 0).Err()
	}
	if err != nil {
		return fmt.Errorf("set %s on redis %s: %w", key, inv.addr, inv.redactErr(err))
	}
	return nil
}
