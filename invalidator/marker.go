package invalidator

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// ErrNoPermission is what Marker's error wraps when the Redis user may not
// read the key: an ACL written for an older version of the daemon.
var ErrNoPermission = errors.New("the Redis user may not run the command on the key (NOPERM)")

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

// Marker returns the value of key, and false when key does not exist.
func (inv *Invalidator) Marker(ctx context.Context, key string) (string, bool, error) {
	m, err := inv.masterFor(ctx, key, "")
	var v string
	if err == nil {
		v, err = m.Get(ctx, key).Result()
	}
	switch {
	case errors.Is(err, redis.Nil):
		return "", false, nil
	case redis.HasErrorPrefix(err, "NOPERM"):
		return "", false, fmt.Errorf("get %s: %w: %w", key, ErrNoPermission, inv.redactErr(err))
	case err != nil:
		return "", false, fmt.Errorf("get %s: %w", key, inv.redactErr(err))
	}
	return v, true, nil
}
