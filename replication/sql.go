package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Statement is one SQL statement that prepares a database for
// pg-invalidator, with the reason it is needed.
type Statement struct {
	SQL string // one statement, without the closing semicolon
	Why string // one line; empty when the SQL speaks for itself
}

// CreatePublicationSQL returns the statement that EnsurePublication runs to
// create publication name for the "schema.table" names (a name without a dot
// is in public).
func CreatePublicationSQL(name string, names []string) string {
	tables := splitNames(names)
	list := make([]string, len(tables))
	for i, q := range tables {
		list[i] = q.sql()
	}
	return "CREATE PUBLICATION " + pgx.Identifier{name}.Sanitize() + " FOR TABLE " + strings.Join(list, ", ") +
		" WITH (publish = '" + publishOps + "', publish_via_partition_root = true)"
}

// PublicationSQL returns the statements that make publication name serve
// the tables in names, as EnsurePublication decides them, without changing
// anything: none when the publication is ready.
//
// A missing publication gets CreatePublicationSQL. For one that exists,
// EnsurePublication runs inside a savepoint of tx that is then rolled back,
// so the answer is exactly what EnsurePublication would do or ask a DBA to
// do; this takes the same short table locks that ALTER PUBLICATION takes.
func PublicationSQL(ctx context.Context, tx pgx.Tx, name string, names []string) ([]Statement, error) {
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, name).Scan(&exists); err != nil {
		return nil, fmt.Errorf("read publication %s: %w", name, err)
	}
	if !exists {
		return []Statement{{SQL: CreatePublicationSQL(name, names)}}, nil
	}
	sp, err := tx.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("plan publication %s: %w", name, err)
	}
	created, added, err := EnsurePublication(ctx, sp.Conn(), name, names)
	if rbErr := sp.Rollback(ctx); rbErr != nil && err == nil {
		err = fmt.Errorf("plan publication %s: %w", name, rbErr)
	}
	var perr *PublicationError
	switch {
	case errors.As(err, &perr):
		why := strings.TrimPrefix(perr.Error(), "publication "+name+" ")
		why, _, _ = strings.Cut(why, "; a DBA must run: ")
		out := make([]Statement, len(perr.Fix))
		for i, sql := range perr.Fix {
			out[i].SQL = sql
		}
		if len(out) > 0 {
			out[0].Why = "publication " + name + " " + why
		}
		return out, nil
	case err != nil:
		return nil, err
	case created: // dropped by someone else since the check above
		return []Statement{{SQL: CreatePublicationSQL(name, names)}}, nil
	case len(added) > 0:
		tables := splitNames(added)
		list := make([]string, len(tables))
		for i, q := range tables {
			list[i] = q.sql()
		}
		return []Statement{{
			SQL: "ALTER PUBLICATION " + pgx.Identifier{name}.Sanitize() + " ADD TABLE " + strings.Join(list, ", "),
			Why: "publication " + name + " lacks tables " + strings.Join(added, ", "),
		}}, nil
	}
	return nil, nil
}

// ReplicaIdentityFullSQL returns ALTER TABLE ... REPLICA IDENTITY FULL for
// each table in names that is not FULL yet. A partitioned table is not
// altered itself: UPDATE and DELETE run on its leaf partitions, and
// PostgreSQL does not pass the setting down, so each leaf that is not FULL
// gets the statement instead. A name that matches no table is skipped.
func ReplicaIdentityFullSQL(ctx context.Context, conn *pgx.Conn, names []string) ([]Statement, error) {
	tables := splitNames(names)
	if len(tables) == 0 {
		return nil, nil
	}
	schemas := make([]string, len(tables))
	relnames := make([]string, len(tables))
	for i, q := range tables {
		schemas[i], relnames[i] = q.schema, q.table
	}
	rows, err := conn.Query(ctx, `
SELECT w.schema, w.name, n.nspname, c.relname
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS w(schema, name, i)
JOIN pg_namespace wn ON wn.nspname = w.schema
JOIN pg_class wc ON wc.relnamespace = wn.oid AND wc.relname = w.name
CROSS JOIN LATERAL (
    SELECT wc.oid::regclass AS relid, 0 AS level -- pg_partition_tree skips a plain table
    UNION
    SELECT p.relid, p.level FROM pg_partition_tree(wc.oid) AS p WHERE p.isleaf
) AS t
JOIN pg_class c ON c.oid = t.relid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relreplident <> 'f'
ORDER BY w.i, t.level, n.nspname, c.relname`, schemas, relnames)
	if err != nil {
		return nil, fmt.Errorf("read replica identities: %w", err)
	}
	var out []Statement
	var seen []qualified
	var parent, leaf qualified
	_, err = pgx.ForEachRow(rows, []any{&parent.schema, &parent.table, &leaf.schema, &leaf.table}, func() error {
		if slices.Contains(seen, leaf) {
			return nil
		}
		seen = append(seen, leaf)
		s := Statement{SQL: "ALTER TABLE " + leaf.sql() + " REPLICA IDENTITY FULL"}
		if leaf != parent {
			s.Why = "a leaf partition of " + parent.String()
		}
		out = append(out, s)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read replica identities: %w", err)
	}
	return out, nil
}

// RoleSQL returns the statements that give role what the daemon needs to
// stream the tables in names from a publication a DBA created: LOGIN and
// REPLICATION, USAGE on the tables' schemas and SELECT on the tables. Only
// what the role lacks is returned; a superuser lacks nothing. A missing role
// is created without a password.
func RoleSQL(ctx context.Context, conn *pgx.Conn, role string, names []string) ([]Statement, error) {
	roleSQL := pgx.Identifier{role}.Sanitize()
	var out []Statement
	var login, replication, super bool
	err := conn.QueryRow(ctx, `SELECT rolcanlogin, rolreplication, rolsuper FROM pg_roles WHERE rolname = $1`, role).
		Scan(&login, &replication, &super)
	exists := err == nil
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		out = append(out, Statement{
			SQL: "CREATE ROLE " + roleSQL + " WITH LOGIN REPLICATION PASSWORD NULL",
			Why: "then give it a password (ALTER ROLE " + roleSQL + " PASSWORD '...'), or let pg_hba.conf admit it another way",
		})
	case err != nil:
		return nil, fmt.Errorf("read role %s: %w", role, err)
	case super:
		return nil, nil
	case !login || !replication:
		out = append(out, Statement{SQL: "ALTER ROLE " + roleSQL + " WITH LOGIN REPLICATION"})
	}

	tables := splitNames(names)
	var schemas []string
	for _, q := range tables {
		if !slices.Contains(schemas, q.schema) {
			schemas = append(schemas, q.schema)
		}
	}
	var needUsage, needSelect []string
	if !exists {
		needUsage = schemas
		for _, q := range tables {
			needSelect = append(needSelect, q.sql())
		}
	} else {
		// has_*_privilege count grants to PUBLIC and to roles role is a
		// member of, as the server does when the daemon reads.
		rows, err := conn.Query(ctx, `
SELECT s.name FROM unnest($2::text[]) WITH ORDINALITY AS s(name, i)
WHERE NOT has_schema_privilege($1, s.name, 'USAGE')
ORDER BY s.i`, role, schemas)
		if err != nil {
			return nil, fmt.Errorf("read schema privileges of %s: %w", role, err)
		}
		if needUsage, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return nil, fmt.Errorf("read schema privileges of %s: %w", role, err)
		}
		for _, q := range tables {
			var ok bool
			if err := conn.QueryRow(ctx, `SELECT has_table_privilege($1, $2::regclass, 'SELECT')`, role, q.sql()).Scan(&ok); err != nil {
				return nil, fmt.Errorf("read privileges of %s on %s: %w", role, q, err)
			}
			if !ok {
				needSelect = append(needSelect, q.sql())
			}
		}
	}
	if len(needUsage) > 0 {
		list := make([]string, len(needUsage))
		for i, s := range needUsage {
			list[i] = pgx.Identifier{s}.Sanitize()
		}
		out = append(out, Statement{SQL: "GRANT USAGE ON SCHEMA " + strings.Join(list, ", ") + " TO " + roleSQL})
	}
	if len(needSelect) > 0 {
		out = append(out, Statement{SQL: "GRANT SELECT ON TABLE " + strings.Join(needSelect, ", ") + " TO " + roleSQL})
	}
	return out, nil
}
