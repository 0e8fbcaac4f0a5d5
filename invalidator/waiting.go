package invalidator

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
)

// call is one Apply in progress: its scratch, and how it fares, for
// Waiting. The goroutine that runs the Apply uses it alone, but for the
// pipelines sent to a cluster's masters at once, each of which writes its
// own group; since and lastErr are read by Waiting under inv.mu. An Apply
// that returned leaves it in inv.idle, scratch and all, so that the next
// Apply allocates none.
type call struct {
	inv    *Invalidator
	ops    []op                     // scratch: the commands of one pipeline or SCAN page
	groups map[*redis.Client]*group // scratch: ops by the master that serves them
	// Scratch of unlinkOps in a cluster: the slot of each key, the keys
	// sorted by slot, and where each slot's keys begin there (nil until the
	// first use).
	sorted   []string
	keySlots []uint16
	slotAt   []int32

	// inv.mu guards the fields below.
	since   time.Time // when the Apply began, or last got a reply that ends a command
	lastErr error     // the last error the Apply retried after, redacted; nil: none since since
	failed  bool      // the Apply retried after an error; false: not yet
}

// begin returns the call of an Apply that starts now, listed in active.
func (inv *Invalidator) begin(now time.Time) *call {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	var c *call
	if n := len(inv.idle); n > 0 {
		c, inv.idle = inv.idle[n-1], inv.idle[:n-1]
	} else {
		c = &call{inv: inv, groups: make(map[*redis.Client]*group)}
	}
	c.since, c.lastErr, c.failed = now, nil, false
	inv.active = append(inv.active, c)
	return c
}

// end notes that c's Apply returned: c is idle again.
func (inv *Invalidator) end(c *call) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if i := slices.Index(inv.active, c); i >= 0 {
		last := len(inv.active) - 1
		inv.active[i], inv.active[last] = inv.active[last], nil
		inv.active = inv.active[:last]
	}
	inv.idle = append(inv.idle, c)
}

// advance notes that Redis applied (or rejected for good) some of c's
// commands, or returned a page of its pattern scan, just now.
func (inv *Invalidator) advance(c *call, now time.Time) {
	inv.mu.Lock()
	c.since, c.lastErr = now, nil
	inv.mu.Unlock()
}

// fail notes the error c's Apply is about to retry after.
func (inv *Invalidator) fail(c *call, err error) {
	inv.mu.Lock()
	c.lastErr = err
	inv.mu.Unlock()
}

// Waiting reports on the Apply in progress that has waited longest: since
// is when it began or last got a command applied (or rejected for good) or
// a page of a pattern scan, and lastErr the last error it retried after
// since then (nil: none, such as while a command is still blocked in
// Redis). since is zero when no Apply is in progress. A caller that sees
// since long past knows that Redis has applied nothing of some batch for
// that long, even if it answers PING, and even if it applies another
// caller's batches meanwhile: paused writes (CLIENT PAUSE ... WRITE),
// NOPERM, OOM, READONLY, a WAIT that comes back short, a cluster master
// that is down. It is safe to call at any time; lastErr holds no password.
func (inv *Invalidator) Waiting() (since time.Time, lastErr error) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	for _, c := range inv.active {
		if since.IsZero() || c.since.Before(since) {
			since, lastErr = c.since, c.lastErr
		}
	}
	return since, lastErr
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
