package replication

import (
	"context"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// SlotLag is how far a slot trails the server, read in one statement.
type SlotLag struct {
	// Server is how far the server's WAL reaches: pg_current_wal_flush_lsn()
	// on a primary (the walsender sends only flushed WAL), the last replayed
	// position on a standby.
	Server pglogrepl.LSN
	// Confirmed is the slot's confirmed_flush_lsn: what its consumer has
	// acknowledged. Zero when the slot does not exist or has none yet.
	Confirmed pglogrepl.LSN
	Exists    bool // the slot exists
}

// Bytes is how many bytes of WAL the slot trails the server by; 0 when the
// slot does not exist or is level with it.
func (l SlotLag) Bytes() uint64 {
	if !l.Exists || l.Confirmed == 0 || l.Server <= l.Confirmed {
		return 0
	}
	return uint64(l.Server - l.Confirmed)
}

// ReadSlotLag reads the server's WAL position and slot's confirmed position
// on an ordinary connection, in one statement, so that they are of one
// moment.
func ReadSlotLag(ctx context.Context, conn *pgx.Conn, slot string) (SlotLag, error) {
	var server string
	var confirmed *string
	var exists bool
	err := conn.QueryRow(ctx, `
SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_flush_lsn() END)::text,
       (SELECT s.confirmed_flush_lsn::text FROM pg_replication_slots s WHERE s.slot_name = $1),
       EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.slot_name = $1)`, slot).Scan(&server, &confirmed, &exists)
	if err != nil {
		return SlotLag{}, fmt.Errorf("read the lag of slot %s: %w", slot, err)
	}
	lag := SlotLag{Exists: exists}
	if lag.Server, err = pglogrepl.ParseLSN(server); err != nil {
		return SlotLag{}, fmt.Errorf("read the lag of slot %s: %w", slot, err)
	}
	if confirmed != nil {
		if lag.Confirmed, err = pglogrepl.ParseLSN(*confirmed); err != nil {
			return SlotLag{}, fmt.Errorf("read the lag of slot %s: %w", slot, err)
		}
	}
	return lag, nil
}
