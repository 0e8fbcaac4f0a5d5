package invalidator

import (
	"context"
	"fmt"
)

// SetMarker sets key to value with no expiry: a note the daemon keeps for
// itself in Redis, such as its memory that a replication slot existed. It
// lives exactly as long as the cached entries around it: a Redis that was
// emptied loses both.
func (inv *Invalidator) SetMarker(ctx context.Context, key, value string) error {
	// Sent to the key's master directly: a cluster client would first ask
	// COMMAND for the key's position, which the daemon's ACL does not allow.
	m, err := inv.masterFor(ctx, key, "")
	if err == nil {
		err = m.Set(ctx, key, value, 0).Err()
	}
	if err != nil {
		return fmt.Errorf("set %s: %w", key, inv.redactErr(err))
	}
	return nil
}

// MarkerExists reports whether key exists.
func (inv *Invalidator) MarkerExists(ctx context.Context, key string) (bool, error) {
	m, err := inv.masterFor(ctx, key, "")
	var n int64
	if err == nil {
		n, err = m.Exists(ctx, key).Result()
	}
	if err != nil {
		return false, fmt.Errorf("exists %s: %w", key, inv.redactErr(err))
	}
	return n > 0, nil
}
