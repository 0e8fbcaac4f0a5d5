package replication

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// heartbeatPrefix is the prefix of every logical decoding message the
// daemon writes.
const heartbeatPrefix = "pg_invalidator"

// canaryContent begins the content of a heartbeat that carries a canary;
// the slot and the token follow, separated by spaces.
const canaryContent = "canary "

// PrepareHeartbeatConn sets the session of conn, a connection of its own
// that heartbeats go on, so that a canary's commit waits for no
// synchronous standby (synchronous_commit = local): it is visible, and
// streamed, as soon as it is flushed. A standby that does not answer then
// holds up the application's commits, not the daemon's canary, whose batch
// would otherwise wait for visibility (see Snapshot) with the batches of
// every transaction after it. local also flushes the commit at once when
// the server's default is off.
func PrepareHeartbeatConn(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, "SET synchronous_commit = local"); err != nil {
		return fmt.Errorf("prepare the heartbeat connection: %w", err)
	}
	return nil
}

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

// EmitCanary writes a heartbeat that carries a canary for slot: a
// transactional logical decoding message (prefix pg_invalidator), in a
// transaction of its own on conn, which must not be in one. A Stream on slot
// that passes logical decoding messages (see Stream.Messages) hands it to
// its consumer as a Canary event holding token, between the transaction's
// Begin and Commit, like a row change; streams on other slots leave it out.
// Being a transaction, it is flushed at its commit (synchronous_commit
// local, on a connection PrepareHeartbeatConn set), and the walsender sends it at once, where a
// non-transactional message waits for the WAL writer; and the consumer
// acknowledges it as any transaction. slot is a valid slot name and token
// holds no space.
func EmitCanary(ctx context.Context, conn *pgx.Conn, slot, token string) error {
	if !ValidSlotName(slot) || token == "" || strings.ContainsAny(token, " \t\r\n") {
		return fmt.Errorf("emit canary: slot %q, token %q: want a slot name and a token without spaces", slot, token)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_logical_emit_message(true, $1, $2)", heartbeatPrefix, canaryContent+slot+" "+token); err != nil {
		return fmt.Errorf("emit canary: %w", err)
	}
	return nil
}

// canaryToken returns the token of a heartbeat message's content when it
// carries a canary for slot.
func canaryToken(prefix string, content []byte, slot string) (string, bool) {
	if prefix != heartbeatPrefix {
		return "", false
	}
	rest, ok := strings.CutPrefix(string(content), canaryContent)
	if !ok {
		return "", false
	}
	s, token, ok := strings.Cut(rest, " ")
	if !ok || s != slot || token == "" {
		return "", false
	}
	return token, true
}
