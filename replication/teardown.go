package replication

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// PublicationExists reports whether publication name exists in the current
// database.
func PublicationExists(ctx context.Context, conn *pgx.Conn, name string) (bool, error) {
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, name).Scan(&exists); err != nil {
		return false, fmt.Errorf("look for publication %s: %w", name, err)
	}
	return exists, nil
}

// DropPublication drops publication name if it exists in the current
// database, and reports whether it did.
func DropPublication(ctx context.Context, conn *pgx.Conn, name string) (dropped bool, err error) {
	exists, err := PublicationExists(ctx, conn, name)
	if err != nil || !exists {
		return false, err
	}
	if _, err := conn.Exec(ctx, "DROP PUBLICATION IF EXISTS "+pgx.Identifier{name}.Sanitize()); err != nil {
		return false, fmt.Errorf("drop publication %s: %w", name, err)
	}
	return true, nil
}

// TeardownSQL is what a DBA runs to drop a consumer's slot and publication
// by hand.
func TeardownSQL(slot, publication string) string {
	return strings.Join([]string{
		"SELECT pg_drop_replication_slot('" + strings.ReplaceAll(slot, "'", "''") + "');",
		"DROP PUBLICATION IF EXISTS " + pgx.Identifier{publication}.Sanitize() + ";",
	}, " ")
}
