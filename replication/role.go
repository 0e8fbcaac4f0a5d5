package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// roleNeeds is what a role lacks to stream rule tables from a publication a
// DBA created.
type roleNeeds struct {
	role        string
	exists      bool
	replication bool        // it may not stream: it lacks LOGIN or REPLICATION (and is no superuser)
	usage       []string    // schemas it lacks USAGE on, in the order of the tables
	read        []qualified // tables it lacks SELECT on, in the order given
}

// readRoleNeeds works out what role lacks for the tables in names. A
// superuser lacks nothing. Tables that do not exist are left out: the
// catalog check reports them.
func readRoleNeeds(ctx context.Context, conn *pgx.Conn, role string, names []string) (roleNeeds, error) {
	n := roleNeeds{role: role}
	var login, replication, super bool
	err := conn.QueryRow(ctx, `SELECT rolcanlogin, rolreplication, rolsuper FROM pg_roles WHERE rolname = $1`, role).
		Scan(&login, &replication, &super)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return n, fmt.Errorf("read role %s: %w", role, err)
	case super:
		return roleNeeds{role: role, exists: true}, nil
	default:
		n.exists = true
		n.replication = !login || !replication
	}

	tables := splitNames(names)
	var schemas []string
	for _, q := range tables {
		if !slices.Contains(schemas, q.schema) {
			schemas = append(schemas, q.schema)
		}
	}
	if !n.exists {
		n.usage, n.read = schemas, tables
		return n, nil
	}
	// has_*_privilege count grants to PUBLIC and to roles role is a member
	// of, as the server does when the daemon reads. The tables are found
	// through the catalog, which needs no privilege, rather than by a
	// regclass cast, which would fail without USAGE on the schema.
	rows, err := conn.Query(ctx, `
SELECT s.name FROM unnest($2::text[]) WITH ORDINALITY AS s(name, i)
JOIN pg_namespace n ON n.nspname = s.name
WHERE NOT has_schema_privilege($1, n.oid, 'USAGE')
ORDER BY s.i`, role, schemas)
	if err != nil {
		return n, fmt.Errorf("read schema privileges of %s: %w", role, err)
	}
	if n.usage, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		return n, fmt.Errorf("read schema privileges of %s: %w", role, err)
	}
	tschemas := make([]string, len(tables))
	tnames := make([]string, len(tables))
	for i, q := range tables {
		tschemas[i], tnames[i] = q.schema, q.table
	}
	rows, err = conn.Query(ctx, `
SELECT w.schema, w.name
FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS w(schema, name, i)
JOIN pg_namespace n ON n.nspname = w.schema
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.name
WHERE NOT has_table_privilege($1, c.oid, 'SELECT')
ORDER BY w.i`, role, tschemas, tnames)
	if err != nil {
		return n, fmt.Errorf("read table privileges of %s: %w", role, err)
	}
	var q qualified
	_, err = pgx.ForEachRow(rows, []any{&q.schema, &q.table}, func() error {
		n.read = append(n.read, q)
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("read table privileges of %s: %w", role, err)
	}
	return n, nil
}

// roleSQL is the statement that gives the role LOGIN and REPLICATION.
func (n roleNeeds) roleSQL() string {
	return "ALTER ROLE " + pgx.Identifier{n.role}.Sanitize() + " WITH LOGIN REPLICATION"
}

// usageSQL is the statement that grants the missing USAGE, or "".
func (n roleNeeds) usageSQL() string {
	if len(n.usage) == 0 {
		return ""
	}
	list := make([]string, len(n.usage))
	for i, s := range n.usage {
		list[i] = pgx.Identifier{s}.Sanitize()
	}
	return "GRANT USAGE ON SCHEMA " + strings.Join(list, ", ") + " TO " + pgx.Identifier{n.role}.Sanitize()
}

// selectSQL is the statement that grants the missing SELECT, or "".
func (n roleNeeds) selectSQL() string {
	if len(n.read) == 0 {
		return ""
	}
	list := make([]string, len(n.read))
	for i, q := range n.read {
		list[i] = q.sql()
	}
	return "GRANT SELECT ON TABLE " + strings.Join(list, ", ") + " TO " + pgx.Identifier{n.role}.Sanitize()
}

// RoleSQL returns the statements that give role what the daemon needs to
// stream the tables in names from a publication a DBA created: LOGIN and
// REPLICATION, USAGE on the tables' schemas and SELECT on the tables. Only
// what the role lacks is returned; a superuser lacks nothing. A missing role
// is created without a password.
func RoleSQL(ctx context.Context, conn *pgx.Conn, role string, names []string) ([]Statement, error) {
	n, err := readRoleNeeds(ctx, conn, role, names)
	if err != nil {
		return nil, err
	}
	var out []Statement
	roleSQL := pgx.Identifier{role}.Sanitize()
	switch {
	case !n.exists:
		out = append(out, Statement{
			SQL: "CREATE ROLE " + roleSQL + " WITH LOGIN REPLICATION PASSWORD NULL",
			Why: "then give it a password (ALTER ROLE " + roleSQL + " PASSWORD '...'), or let pg_hba.conf admit it another way",
		})
	case n.replication:
		out = append(out, Statement{SQL: n.roleSQL()})
	}
	if sql := n.usageSQL(); sql != "" {
		out = append(out, Statement{SQL: sql})
	}
	if sql := n.selectSQL(); sql != "" {
		out = append(out, Statement{SQL: sql})
	}
	return out, nil
}

// RoleProblems checks that the connecting role may stream (REPLICATION or
// superuser) and read the rule tables in names (USAGE on their schemas and
// SELECT on them). Each problem is a *PrerequisiteError whose fix is the
// ALTER ROLE or GRANT to run; err is for a failure to read the catalog.
// Tables that do not exist are not reported: DescribeTables finds them.
func RoleProblems(ctx context.Context, conn *pgx.Conn, names []string) ([]error, error) {
	var role string
	if err := conn.QueryRow(ctx, `SELECT current_user`).Scan(&role); err != nil {
		return nil, fmt.Errorf("read the current role: %w", err)
	}
	n, err := readRoleNeeds(ctx, conn, role, names)
	if err != nil {
		return nil, err
	}
	var problems []error
	if n.replication {
		problems = append(problems, &PrerequisiteError{
			Msg: fmt.Sprintf("role %s has neither the REPLICATION attribute nor superuser, so it may not stream changes", role),
			Fix: "as a superuser, run " + n.roleSQL() + "; (pg-invalidator setup prints every statement the role needs)",
		})
	}
	if sql := n.usageSQL(); sql != "" {
		problems = append(problems, &PrerequisiteError{
			Msg: fmt.Sprintf("role %s lacks USAGE on schema %s, which holds rule tables", role, strings.Join(n.usage, ", ")),
			Fix: "as the schema's owner or a superuser, run " + sql + ";",
		})
	}
	if sql := n.selectSQL(); sql != "" {
		list := make([]string, len(n.read))
		for i, q := range n.read {
			list[i] = q.String()
		}
		problems = append(problems, &PrerequisiteError{
			Msg: fmt.Sprintf("role %s may not read rule table %s (it lacks SELECT)", role, strings.Join(list, ", ")),
			Fix: "as the tables' owner or a superuser, run " + sql + ";",
		})
	}
	return problems, nil
}
