package replication

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// EmitHeartbeat writes a small non-transactional logical decoding message
// (pg_logical_emit_message, prefix pg_invalidator) on an ordinary
// connection. The walsender
// decodes it like any WAL and answers with a keepalive once it has nothing
// to send, which lets an idle consumer acknowledge the position: the slot
// moves, and releases WAL, even on a database whose published tables are
// quiet. pgoutput does not pass the message on unless asked to (messages
// 'true'), so consumers never see it.
func EmitHeartbeat(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, "SELECT pg_logical_emit_message(false, 'pg_invalidator', 'heartbeat')"); err != nil {
		return fmt.Errorf("emit heartbeat: %w", err)
	}
	return nil
}
