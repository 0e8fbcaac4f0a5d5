package migrations

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Tables are the example's tables, as the rules name them.
var Tables = []string{"public.products", "public.categories"}

// ExistingTables returns those of Tables that exist in conn's database.
func ExistingTables(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT name FROM unnest($1::text[]) WITH ORDINALITY AS t(name, n)
WHERE to_regclass(name) IS NOT NULL ORDER BY n`, Tables)
	if err != nil {
		return nil, fmt.Errorf("look for the example tables: %w", err)
	}
	found, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("look for the example tables: %w", err)
	}
	return found, nil
}

// Install runs the migrations in one transaction, with the tables in schema
// public as the rules expect, and returns those of Tables that it created:
// the ones that did not exist before. Tables that existed are kept, with
// their rows; the migrations only add the example rows they lack and set
// REPLICA IDENTITY FULL on products.
func Install(ctx context.Context, conn *pgx.Conn) (created []string, err error) {
	stmts, err := SQL()
	if err != nil {
		return nil, err
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("apply migrations: %w", err)
	}
	defer tx.Rollback(context.Background())
	before, err := ExistingTables(ctx, tx.Conn())
	if err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, "SET LOCAL search_path = public"); err != nil {
		return nil, fmt.Errorf("apply migrations: %w", err)
	}
	for _, s := range stmts {
		if _, err := tx.Exec(ctx, s); err != nil {
			return nil, fmt.Errorf("apply migrations: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("apply migrations: %w", err)
	}
	for _, t := range Tables {
		if !slices.Contains(before, t) {
			created = append(created, t)
		}
	}
	return created, nil
}

// Uninstall drops tables, which Install created, and everything in them.
// The error says what to run by hand.
func Uninstall(ctx context.Context, conn *pgx.Conn, tables []string) error {
	if len(tables) == 0 {
		return nil
	}
	drop := UninstallSQL(tables)
	if _, err := conn.Exec(ctx, drop); err != nil {
		return fmt.Errorf("drop the example tables: %w; drop them by hand with: %s", err, drop)
	}
	return nil
}

// UninstallSQL is the statement that drops tables; "" for none.
func UninstallSQL(tables []string) string {
	if len(tables) == 0 {
		return ""
	}
	quoted := make([]string, len(tables))
	for i, t := range tables {
		quoted[i] = pgx.Identifier(strings.SplitN(t, ".", 2)).Sanitize()
	}
	return "DROP TABLE IF EXISTS " + strings.Join(quoted, ", ")
}
