package daemon

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pg-invalidator/pg-invalidator/replication"
)

// heartbeat emits a heartbeat (replication.EmitHeartbeat) every
// cfg.Heartbeat until ctx ends, on a connection of its own. The walsender
// answers it with a keepalive, which lets an idle daemon acknowledge the
// position: the slot moves, and releases WAL, even on a database whose
// published tables are quiet and whose keepalives would otherwise stop
// coming.
//
// Failures are logged once per streak and never stop the daemon.
func heartbeat(ctx context.Context, cfg Config) {
	t := time.NewTicker(cfg.Heartbeat)
	defer t.Stop()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := func() error {
			// A server gone silent must not hold the heartbeat forever.
			ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
			defer cancel()
			if conn == nil || conn.IsClosed() {
				c, err := connect(ctx, cfg)
				if err != nil {
					return err
				}
				conn = c
			}
			return replication.EmitHeartbeat(ctx, conn)
		}()
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			cfg.Logger.Warn("heartbeat failed; the slot may move only when published tables change", "err", err)
			failing = true
			if conn != nil {
				conn.Close(context.Background())
				conn = nil
			}
		case err == nil && failing:
			cfg.Logger.Info("heartbeat recovered")
			failing = false
		}
	}
}
