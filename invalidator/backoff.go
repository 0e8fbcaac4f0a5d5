package invalidator

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"
)

// backoff logs that Redis is unavailable, the first time only, and waits
// before retry attempt+1. It returns ctx's error if ctx ends first.
func (inv *Invalidator) backoff(ctx context.Context, attempt int, lastErr error) error {
	lastErr = inv.redactErr(lastErr)
	inv.progress.fail(lastErr)
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
