package daemon

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// heartbeat writes a small non-transactional logical decoding message every
// interval. The walsender decodes it like any WAL and answers with a
// keepalive once it has nothing to send, which lets an idle daemon
// acknowledge the position: the slot moves, and releases WAL, even on a
// database whose published tables are quiet and whose keepalives would
// otherwise stop coming.
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
			if conn == nil || conn.IsClosed() {
				c, err := connect(ctx, cfg.PostgresURL)
				if err != nil {
					return err
				}
				conn = c
			}
			_, err := conn.Exec(ctx, "SELECT pg_logical_emit_message(false, 'pg_invalidator', 'heartbeat')")
			return err
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
