package invalidator

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"
)

// backoff logs that Redis is unavailable, the first time only, and waits
// before retry attempt+1 of c's Apply. It returns ctx's error if ctx ends
// first.
func (c *call) backoff(ctx context.Context, attempt int, lastErr error) error {
	inv := c.inv
	lastErr = inv.redactErr(lastErr)
	inv.fail(c, lastErr)
	if ctx.Err() != nil {
		return fmt.Errorf("redis %s: %w (last error: %v)", inv.addr, ctx.Err(), lastErr)
	}
	d := inv.delay(attempt)
	inv.mu.Lock()
	c.failed = true
	first := !inv.down
	if first {
		inv.down, inv.downSince = true, time.Now()
	}
	inv.mu.Unlock()
	if first {
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

// available logs that Redis answers again, after a failure, once no Apply
// in progress is still retrying. Apply calls it when c's whole batch is
// done, not on the first reply: right after Redis comes back, go-redis's
// pool may still fail a few dials, and the state would flap; nor while
// another Apply still fails, whose next retry would log Redis unavailable
// again.
func (inv *Invalidator) available(c *call) {
	inv.mu.Lock()
	c.failed = false
	back := inv.down
	for _, o := range inv.active {
		back = back && !o.failed
	}
	if back {
		inv.down = false
	}
	since := inv.downSince
	inv.mu.Unlock()
	if back {
		inv.log.Info("redis available again", "addr", inv.addr, "after", time.Since(since).Round(time.Millisecond))
	}
}
