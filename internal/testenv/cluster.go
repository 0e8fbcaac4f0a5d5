package testenv

import (
	"context"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
)

// KeysPerMaster counts the keys matching pattern on each master of a Redis
// Cluster that holds any, by master address.
func KeysPerMaster(tb testing.TB, rdb *redis.ClusterClient, pattern string) map[string]int {
	tb.Helper()
	var mu sync.Mutex
	counts := make(map[string]int)
	err := rdb.ForEachMaster(context.Background(), func(ctx context.Context, c *redis.Client) error {
		n := 0
		iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			n++
		}
		mu.Lock()
		defer mu.Unlock()
		if n > 0 {
			counts[c.Options().Addr] = n
		}
		return iter.Err()
	})
	if err != nil {
		tb.Fatal(err)
	}
	return counts
}
