package replication

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// rdsReplication is the role through which Amazon RDS and Aurora grant the
// right to replicate: there, no role may be given the REPLICATION
// attribute.
const rdsReplication = "rds_replication"

// roleNeeds is what a role lacks to stream rule tables from a publication a
// DBA created.
type roleNeeds struct {
	role   string
	exists bool
	rds    bool // the server grants replication through membership in rds_replication
	login  bool // it may log in (false when it does not exist)
	// replicate: it has the REPLICATION attribute, is a superuser, or (on
	// RDS) is a member of rds_replication.
	replicate bool
	usage     []string    // schemas it lacks USAGE on, in the order of the tables
	read      []qualified // tables it lacks SELECT on, in the order given
}

// readRoleNeeds works out what role lacks for the tables in names. A
// superuser lacks nothing. Tables that do not exist are left out: the
// catalog check reports them.
func readRoleNeeds(ctx context.Context, conn *pgx.Conn, role string, names []string) (roleNeeds, error) {
	n := roleNeeds{role: role}
	var super bool
	err := conn.QueryRow(ctx, `
SELECT g.oid IS NOT NULL, r.oid IS NOT NULL,
       coalesce(r.rolcanlogin, false), coalesce(r.rolsuper, false),
       coalesce(r.rolreplication OR r.rolsuper OR (g.oid IS NOT NULL AND pg_has_role(r.oid, g.oid, 'MEMBER')), false)
FROM (SELECT 1) AS one
LEFT JOIN pg_roles r ON r.rolname = $1
LEFT JOIN pg_roles g ON g.rolname = $2`, role, rdsReplication).Scan(&n.rds, &n.exists, &n.login, &super, &n.replicate)
	if err != nil {
		return n, fmt.Errorf("read role %s: %w", role, err)
	}
	if super {
		n.login = true // what a superuser lacks is not for setup to fix
		return n, nil
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

// roleSQL returns the statements that let an existing role log in and
// replicate: the LOGIN and REPLICATION attributes, or on RDS the LOGIN
// attribute and membership in rds_replication. None when it has both.
func (n roleNeeds) roleSQL() []string {
	id := pgx.Identifier{n.role}.Sanitize()
	switch {
	case n.login && n.replicate:
		return nil
	case !n.rds:
		return []string{"ALTER ROLE " + id + " WITH LOGIN REPLICATION"}
	}
	var out []string
	if !n.login {
		out = append(out, "ALTER ROLE "+id+" WITH LOGIN")
	}
	if !n.replicate {
		out = append(out, "GRANT "+rdsReplication+" TO "+id)
	}
	return out
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
// is created without a password. On Amazon RDS and Aurora, where no role may
// be given REPLICATION, the role is granted rds_replication instead.
func RoleSQL(ctx context.Context, conn *pgx.Conn, role string, names []string) ([]Statement, error) {
	n, err := readRoleNeeds(ctx, conn, role, names)
	if err != nil {
		return nil, err
	}
	var out []Statement
	roleSQL := pgx.Identifier{role}.Sanitize()
	switch {
	case !n.exists && n.rds:
		out = append(out, Statement{
			SQL: "CREATE ROLE " + roleSQL + " WITH LOGIN PASSWORD NULL",
			Why: "then give it a password (ALTER ROLE " + roleSQL + " PASSWORD '...'), or let pg_hba.conf admit it another way",
		}, Statement{SQL: "GRANT " + rdsReplication + " TO " + roleSQL, Why: "Amazon RDS and Aurora grant the right to replicate through this role"})
	case !n.exists:
		out = append(out, Statement{
			SQL: "CREATE ROLE " + roleSQL + " WITH LOGIN REPLICATION PASSWORD NULL",
			Why: "then give it a password (ALTER ROLE " + roleSQL + " PASSWORD '...'), or let pg_hba.conf admit it another way",
		})
	default:
		for _, sql := range n.roleSQL() {
			out = append(out, Statement{SQL: sql})
		}
	}
	if sql := n.usageSQL(); sql != "" {
		out = append(out, Statement{SQL: sql})
	}
	if sql := n.selectSQL(); sql != "" {
		out = append(out, Statement{SQL: sql})
	}
	return out, nil
}

// RoleProblems checks that the connecting role may stream (REPLICATION,
// superuser, or on Amazon RDS and Aurora membership in rds_replication) and
// read the rule tables in names (USAGE on their schemas and
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
	switch {
	case n.replicate:
	case n.rds:
		problems = append(problems, &PrerequisiteError{
			Msg: fmt.Sprintf("role %s is not a member of %s, so it may not stream changes (Amazon RDS and Aurora grant the right through that role)", role, rdsReplication),
			Fix: "as the master user, run GRANT " + rdsReplication + " TO " + pgx.Identifier{role}.Sanitize() + ";",
		})
	default:
		problems = append(problems, &PrerequisiteError{
			Msg: fmt.Sprintf("role %s has neither the REPLICATION attribute nor superuser, so it may not stream changes", role),
			Fix: "as a superuser, run ALTER ROLE " + pgx.Identifier{role}.Sanitize() + " WITH LOGIN REPLICATION; (pg-invalidator setup prints every statement the role needs)",
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
