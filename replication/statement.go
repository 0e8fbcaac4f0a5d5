package replication

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Statement is one SQL statement that prepares a database for
// pg-invalidator, with the reason it is needed.
type Statement struct {
	SQL string // one statement, without the closing semicolon
	Why string // one line; empty when the SQL speaks for itself
}

// SetupLockTimeout bounds how long a setup transaction waits for a table
// lock: ALTER TABLE ... REPLICA IDENTITY takes an exclusive one, and
// queries queue behind a statement that waits for it.
const SetupLockTimeout = "10s"

// BeginSetup starts the transaction in which setup reads the catalog,
// plans its statements (RoleSQL, ReplicaIdentityFullSQL, PublicationSQL)
// and applies them with ApplySetup, so that the plan is applied to the
// catalog it was made from. Its lock_timeout is SetupLockTimeout. Roll it
// back to leave everything as it was.
func BeginSetup(ctx context.Context, conn *pgx.Conn) (pgx.Tx, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '"+SetupLockTimeout+"'"); err != nil {
		tx.Rollback(context.Background())
		return nil, fmt.Errorf("set lock_timeout: %w", err)
	}
	return tx, nil
}

// ApplySetup runs stmts in tx, which BeginSetup started, and commits: all
// of them take effect, or none does.
func ApplySetup(ctx context.Context, tx pgx.Tx, stmts []Statement) error {
	for _, s := range stmts {
		if _, err := tx.Exec(ctx, s.SQL); err != nil {
			return fmt.Errorf("apply %s: %w; nothing was changed", s.SQL, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w; nothing was changed", err)
	}
	return nil
}
