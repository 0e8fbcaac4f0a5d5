package invalidator

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// scan runs proto (a DelPattern, IncrPattern or VersionPattern op without
// its key) on every key matching pattern, on every master, one SCAN page at
// a time. After a failure it goes on where it stopped on each master it
// knows by address; a master that replaced another after a failover is
// scanned from its start.
func (inv *Invalidator) scan(ctx context.Context, pattern string, proto op) error {
	cursors := make(map[string]uint64) // by master address; absent: from the start
	finished := make(map[string]bool)  // masters scanned to the end, by address
	for attempt := 0; ; attempt++ {
		masters, err := inv.masters(ctx)
		for _, m := range masters {
			if err != nil {
				break
			}
			addr := "" // the one master, whatever its address
			if inv.cluster != nil {
				addr = m.Options().Addr
			}
			if finished[addr] {
				continue
			}
			cursor := cursors[addr]
			err = inv.scanNode(ctx, m, pattern, proto, &cursor)
			cursors[addr] = cursor
			if ctx.Err() != nil { // run gave up: ctx is done
				return err
			}
			finished[addr] = err == nil
		}
		if err == nil {
			return nil
		}
		inv.stats.errors.Add(1)
		if inv.cluster != nil {
			inv.cluster.ReloadState(ctx)
		}
		if err := inv.backoff(ctx, attempt, err); err != nil {
			return err
		}
		inv.stats.retries.Add(1)
	}
}

// scanNode runs proto on the keys matching pattern on master m, from
// *cursor to the end, keeping *cursor up to date.
func (inv *Invalidator) scanNode(ctx context.Context, m *redis.Client, pattern string, proto op, cursor *uint64) error {
	for {
		keys, next, err := m.Scan(ctx, *cursor, pattern, inv.scanCount).Result()
		if err != nil {
			return err
		}
		ops := inv.ops[:0]
		for _, k := range keys {
			o := proto
			o.key = k
			ops = append(ops, o)
		}
		inv.ops = ops
		if err := inv.run(ctx, ops); err != nil {
			return err
		}
		if next == 0 {
			return nil
		}
		*cursor = next
	}
}
