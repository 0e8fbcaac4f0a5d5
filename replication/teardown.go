package replication

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// ExistingSlotAndPublication says which of slot and publication exist in
// the current database, as "replication slot NAME" and "publication NAME".
func ExistingSlotAndPublication(ctx context.Context, conn *pgx.Conn, slot, publication string) ([]string, error) {
	var slotExists, pubExists bool
	err := conn.QueryRow(ctx, `
SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()),
       EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $2)`, slot, publication).Scan(&slotExists, &pubExists)
	if err != nil {
		return nil, fmt.Errorf("look for slot %s and publication %s: %w", slot, publication, err)
	}
	var found []string
	if slotExists {
		found = append(found, "replication slot "+slot)
	}
	if pubExists {
		found = append(found, "publication "+publication)
	}
	return found, nil
}

// DropSlotAndPublication drops slot and publication, those of them that
// exist in the current database, and returns what it dropped, as
// ExistingSlotAndPublication names them. A walsender still streaming from
// the slot (its consumer has just stopped, or is stopping) is terminated; it
// waits up to ten seconds for it to go. The error says what to run by hand.
func DropSlotAndPublication(ctx context.Context, conn *pgx.Conn, slot, publication string) (dropped []string, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w; remove them by hand with: %s", err, DropSlotAndPublicationSQL(slot, publication))
		}
	}()
	for deadline := time.Now().Add(10 * time.Second); ; {
		tag, err := conn.Exec(ctx, `
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
WHERE slot_name = $1 AND database = current_database()`, slot)
		if err == nil {
			if tag.RowsAffected() > 0 {
				dropped = append(dropped, "replication slot "+slot)
			}
			break
		}
		if sqlState(err) != "55006" || time.Now().After(deadline) { // object_in_use: a walsender holds it
			return dropped, fmt.Errorf("drop replication slot %s: %w", slot, err)
		}
		if _, err := conn.Exec(ctx, `
SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
WHERE slot_name = $1 AND active_pid IS NOT NULL`, slot); err != nil {
			return dropped, fmt.Errorf("terminate the walsender of replication slot %s: %w", slot, err)
		}
		select {
		case <-ctx.Done():
			return dropped, fmt.Errorf("drop replication slot %s: %w", slot, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, publication).Scan(&exists); err != nil {
		return dropped, fmt.Errorf("look for publication %s: %w", publication, err)
	}
	if exists {
		if _, err := conn.Exec(ctx, "DROP PUBLICATION "+pgx.Identifier{publication}.Sanitize()); err != nil {
			return dropped, fmt.Errorf("drop publication %s: %w", publication, err)
		}
		dropped = append(dropped, "publication "+publication)
	}
	return dropped, nil
}

// DropSlotAndPublicationSQL is what a DBA runs to drop slot and
// publication by hand.
func DropSlotAndPublicationSQL(slot, publication string) string {
	return strings.Join([]string{
		"SELECT pg_drop_replication_slot('" + strings.ReplaceAll(slot, "'", "''") + "');",
		"DROP PUBLICATION IF EXISTS " + pgx.Identifier{publication}.Sanitize() + ";",
	}, " ")
}
