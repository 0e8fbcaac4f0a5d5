package replication

import (
	"context"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// Standby is what the primary's pg_stat_replication says of one standby.
type Standby struct {
	// Connected is true when a WAL sender serves a standby of this
	// application_name.
	Connected bool
	// Replay is the position it has replayed (replay_lsn); with several
	// connections of one name, the lowest. Zero when unknown: the standby
	// has not reported one yet, or the connecting role may not see it
	// (it needs pg_monitor, or pg_read_all_stats).
	Replay pglogrepl.LSN
}

// StandbyPositions reads from pg_stat_replication, on an ordinary
// connection to the primary, the replay position of each standby named
// (by its application_name). A name with no row is absent from the map.
func StandbyPositions(ctx context.Context, conn *pgx.Conn, names []string) (map[string]Standby, error) {
	rows, err := conn.Query(ctx, `SELECT application_name, min(replay_lsn)::text
FROM pg_stat_replication WHERE application_name = ANY($1) GROUP BY application_name`, names)
	if err != nil {
		return nil, fmt.Errorf("read standby positions: %w", err)
	}
	out := make(map[string]Standby, len(names))
	for rows.Next() {
		var name string
		var replay *string
		if err := rows.Scan(&name, &replay); err != nil {
			return nil, fmt.Errorf("read standby positions: %w", err)
		}
		s := Standby{Connected: true}
		if replay != nil {
			lsn, err := pglogrepl.ParseLSN(*replay)
			if err != nil {
				return nil, fmt.Errorf("read standby positions: replay_lsn of %s: %w", name, err)
			}
			s.Replay = lsn
		}
		out[name] = s
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read standby positions: %w", err)
	}
	return out, nil
}
