package replication

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// Decoding on a hot standby (PostgreSQL 16 and later). The slot lives on
// the standby, which needs wal_level = logical and hot_standby_feedback
// (ServerProblems checks both); what a standby cannot write goes to the
// primary.

// LogStandbySnapshot writes a running-transactions record on the primary
// conn (pg_log_standby_snapshot). A logical slot being created on a
// standby waits for one, which the primary otherwise writes only every
// 15 s or so; a new failover slot's standby copy needs one too. The
// function is for superusers unless granted.
func LogStandbySnapshot(ctx context.Context, conn *pgx.Conn) (pglogrepl.LSN, error) {
	var lsn string
	if err := conn.QueryRow(ctx, "SELECT pg_log_standby_snapshot()::text").Scan(&lsn); err != nil {
		return 0, fmt.Errorf("pg_log_standby_snapshot(): %w", err)
	}
	return pglogrepl.ParseLSN(lsn)
}

// WaitReplayed waits until the standby has replayed everything the
// primary had written when it was called: a publication created or
// altered on the primary, before the standby's slot decodes with it.
func WaitReplayed(ctx context.Context, primary, standby *pgx.Conn) error {
	var target string
	if err := primary.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&target); err != nil {
		return fmt.Errorf("read the primary's WAL position: %w", err)
	}
	for {
		var done bool
		err := standby.QueryRow(ctx, "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", target).Scan(&done)
		if err != nil {
			return fmt.Errorf("read the standby's replay position: %w", err)
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the standby to replay %s: %w", target, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
