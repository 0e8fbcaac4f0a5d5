package replication

import (
	"context"
	"errors"
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

// statsRole is the predefined role whose members see every column of
// pg_stat_replication; pg_monitor includes it.
const statsRole = "pg_read_all_stats"

// canReadStandbys reports whether role sees the standbys' replay_lsn in
// pg_stat_replication: a superuser, or a member of pg_read_all_stats.
func canReadStandbys(ctx context.Context, conn *pgx.Conn, role string) (bool, error) {
	var ok bool
	err := conn.QueryRow(ctx, `SELECT coalesce(r.rolsuper OR pg_has_role(r.oid, $2, 'MEMBER'), false)
FROM pg_roles r WHERE r.rolname = $1`, role, statsRole).Scan(&ok)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read the role's right to see standbys: %w", err)
	}
	return ok, nil
}

// StandbyRoleSQL returns the GRANT that lets role see the standbys'
// positions, which [postgres] replicas needs, or none when it can.
func StandbyRoleSQL(ctx context.Context, conn *pgx.Conn, role string) ([]Statement, error) {
	ok, err := canReadStandbys(ctx, conn, role)
	if err != nil || ok {
		return nil, err
	}
	return []Statement{{SQL: "GRANT pg_monitor TO " + pgx.Identifier{role}.Sanitize(),
		Why: "[postgres] replicas: to read the standbys' replay_lsn in pg_stat_replication"}}, nil
}

// StandbyRoleProblem returns a *PrerequisiteError when the connecting role
// cannot see the standbys' positions, which [postgres] replicas needs; nil
// when it can. err is for a failure to read the catalog.
func StandbyRoleProblem(ctx context.Context, conn *pgx.Conn) (problem, err error) {
	var role string
	if err := conn.QueryRow(ctx, `SELECT current_user`).Scan(&role); err != nil {
		return nil, fmt.Errorf("read the current role: %w", err)
	}
	ok, err := canReadStandbys(ctx, conn, role)
	if err != nil || ok {
		return nil, err
	}
	return &PrerequisiteError{
		Msg: fmt.Sprintf("role %s may not see the standbys' replay_lsn in pg_stat_replication, which [postgres] replicas needs", role),
		Fix: "as a superuser, run GRANT pg_monitor TO " + pgx.Identifier{role}.Sanitize() + "; or remove replicas",
	}, nil
}

// ConnectedStandbys returns the application_name of every standby the
// primary's WAL senders serve, sorted, each once; logical replication
// connections (the daemon's own among them) are left out.
func ConnectedStandbys(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT DISTINCT r.application_name FROM pg_stat_replication r
WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.active_pid = r.pid AND s.slot_type = 'logical')
ORDER BY 1`)
	if err != nil {
		return nil, fmt.Errorf("list standbys: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list standbys: %w", err)
	}
	return names, nil
}
