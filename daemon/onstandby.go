package daemon

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pg-invalidator/pg-invalidator/replication"
)

// Decoding on a standby (Config.PrimaryURL): the walsender's decoding
// runs on a hot standby, which takes that CPU off a busy primary. The slot,
// the catalog reads and the visibility check are on the standby; the
// primary takes what a standby cannot: heartbeats and canaries (written in
// WAL, they reach the standby's walsender like any change), the
// publication, and the snapshot records a slot being created waits for.

// ensurePublication runs replication.EnsurePublication on the primary: on
// conn, or, on a standby, on a connection of its own to the primary, and
// then waits until the standby has replayed what it changed, so that the
// slot decodes with the publication as it is now.
func ensurePublication(ctx context.Context, cfg Config, conn *pgx.Conn, tables []string) (created bool, added []string, err error) {
	if cfg.PrimaryURL == "" {
		return replication.EnsurePublication(ctx, conn, cfg.Publication, tables)
	}
	primary, err := connectPrimary(ctx, cfg)
	if err != nil {
		return false, nil, err
	}
	defer primary.Close(context.Background())
	created, added, err = replication.EnsurePublication(ctx, primary, cfg.Publication, tables)
	if err != nil || (!created && len(added) == 0) {
		return created, added, err
	}
	wctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	return created, added, replication.WaitReplayed(wctx, primary, conn)
}

// nudgeSnapshots, on a standby, has the primary write a snapshot record
// every second until the returned stop is called: a slot being created on
// a standby waits for one (1.4 s with one written at 1 s, against up to
// 15 s unaided). A failure is logged at debug: the primary writes one on
// its own anyway. Without PrimaryURL it does nothing.
func nudgeSnapshots(ctx context.Context, cfg Config) (stop func()) {
	if cfg.PrimaryURL == "" {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		conn, err := connectPrimary(ctx, cfg)
		if err != nil {
			cfg.Logger.Debug("cannot connect to the primary to hasten the slot's creation on the standby", "err", err)
			return
		}
		defer conn.Close(context.Background())
		for {
			if _, err := replication.LogStandbySnapshot(ctx, conn); err != nil && ctx.Err() == nil {
				cfg.Logger.Debug("cannot hasten the slot's creation on the standby", "err", err)
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	})
	return func() { cancel(); wg.Wait() }
}
