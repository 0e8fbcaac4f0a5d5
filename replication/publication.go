package replication

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// publishOps is the publish option pg-invalidator needs: every kind of change.
const publishOps = "insert, update, delete, truncate"

// PublicationError says why an existing publication cannot serve the rules
// and what a DBA must run to fix it. EnsurePublication returns it when the
// publication lacks tables, operations or whole rows and this role may not
// change it.
type PublicationError struct {
	Publication string
	// Missing lists the rule tables ("schema.table") the publication lacks.
	Missing []string
	// Problems describes each other shortfall, one sentence each.
	Problems []string
	// Fix holds the SQL statements that fix every shortfall, in order.
	Fix []string
	// Err is the server's refusal when the role tried and failed to fix the
	// publication itself; nil when it did not try.
	Err error
}

func (e *PublicationError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "publication %s", e.Publication)
	var parts []string
	if len(e.Missing) > 0 {
		parts = append(parts, "lacks tables "+strings.Join(e.Missing, ", "))
	}
	parts = append(parts, e.Problems...)
	if len(parts) > 0 {
		b.WriteString(" " + strings.Join(parts, "; "))
	}
	if e.Err != nil {
		fmt.Fprintf(&b, " (this role cannot fix it: %v)", e.Err)
	}
	b.WriteString("; a DBA must run: " + strings.Join(e.Fix, "; "))
	return b.String()
}

func (e *PublicationError) Unwrap() error { return e.Err }

// EnsurePublication makes sure publication name exists, contains every table
// in names and publishes every kind of change.
//
// When the publication is missing it is created with
//
//	CREATE PUBLICATION name FOR TABLE t1, t2
//	WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true)
//
// and added lists every table. When it exists, tables and schemas already in
// it (or FOR ALL TABLES) are kept, and the missing rule tables are added with
// ALTER PUBLICATION ... ADD TABLE; added lists them.
//
// It changes nothing and returns a *PublicationError with the SQL a DBA must
// run when the role may not add the missing tables (it does not own the
// publication, or the server answers 42501), when the publication does not
// publish all of insert, update, delete and truncate, when a rule table is
// partitioned but publish_via_partition_root is off, or when a rule table is
// published with a row filter or column list (changes would go unseen).
//
// It does not check replica identities: DescribeTables and the rules do.
func EnsurePublication(ctx context.Context, conn *pgx.Conn, name string, names []string) (created bool, added []string, err error) {
	tables := splitNames(names)
	if len(tables) == 0 {
		return false, nil, fmt.Errorf("ensure publication %s: no tables", name)
	}
	pubSQL := pgx.Identifier{name}.Sanitize()
	tableList := make([]string, len(tables))
	tableNames := make([]string, len(tables))
	for i, q := range tables {
		tableList[i] = q.sql()
		tableNames[i] = q.String()
	}

	var pub struct {
		oid                                uint32
		all, ins, upd, del, trunc, viaRoot bool
		owner                              string
		canAlter                           bool
	}
	for attempt := 0; ; attempt++ {
		err = conn.QueryRow(ctx, `
SELECT p.oid, p.puballtables, p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate, p.pubviaroot,
       pg_get_userbyid(p.pubowner),
       pg_has_role(p.pubowner, 'USAGE') OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
FROM pg_publication p
WHERE p.pubname = $1`, name).Scan(&pub.oid, &pub.all, &pub.ins, &pub.upd, &pub.del, &pub.trunc, &pub.viaRoot, &pub.owner, &pub.canAlter)
		if err == nil {
			break
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return false, nil, fmt.Errorf("read publication %s: %w", name, err)
		}
		sql := "CREATE PUBLICATION " + pubSQL + " FOR TABLE " + strings.Join(tableList, ", ") +
			" WITH (publish = '" + publishOps + "', publish_via_partition_root = true)"
		_, err = conn.Exec(ctx, sql)
		if err == nil {
			return true, tableNames, nil
		}
		if attempt == 0 && sqlState(err) == codeDuplicateObject {
			continue // created meanwhile by someone else: check theirs
		}
		return false, nil, fmt.Errorf("create publication %s: %w", name, err)
	}

	schemas := make([]string, len(tables))
	relnames := make([]string, len(tables))
	for i, q := range tables {
		schemas[i], relnames[i] = q.schema, q.table
	}
	// A table is in the publication when pg_publication_tables lists it
	// (which covers FOR ALL TABLES, FOR TABLES IN SCHEMA, and a partitioned
	// parent under publish_via_partition_root), or when it or a partitioned
	// ancestor was added by name. to_jsonb reads prqual and prattrs on
	// PostgreSQL 15 and later and gives NULL before.
	rows, err := conn.Query(ctx, `
SELECT w.schema, w.name,
       EXISTS (SELECT 1 FROM pg_publication_tables pt
               WHERE pt.pubname = $1 AND pt.schemaname = w.schema AND pt.tablename = w.name)
       OR EXISTS (SELECT 1 FROM pg_publication_rel pr
                  WHERE pr.prpubid = $2 AND (pr.prrelid = c.oid
                        OR pr.prrelid IN (SELECT relid FROM pg_partition_ancestors(c.oid)))),
       coalesce(c.relkind = 'p', false),
       EXISTS (SELECT 1 FROM pg_publication_rel pr
               WHERE pr.prpubid = $2 AND pr.prrelid = c.oid
                 AND (to_jsonb(pr)->>'prqual' IS NOT NULL OR to_jsonb(pr)->>'prattrs' IS NOT NULL))
FROM unnest($3::text[], $4::text[]) WITH ORDINALITY AS w(schema, name, i)
LEFT JOIN pg_namespace n ON n.nspname = w.schema
LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.name
ORDER BY w.i`, name, pub.oid, schemas, relnames)
	if err != nil {
		return false, nil, fmt.Errorf("read publication %s tables: %w", name, err)
	}
	var missing, filtered []qualified
	partitioned := false
	var q qualified
	var member, isPartitioned, isFiltered bool
	_, err = pgx.ForEachRow(rows, []any{&q.schema, &q.table, &member, &isPartitioned, &isFiltered}, func() error {
		if !member && !pub.all {
			missing = append(missing, q)
		}
		if isFiltered {
			filtered = append(filtered, q)
		}
		partitioned = partitioned || isPartitioned
		return nil
	})
	if err != nil {
		return false, nil, fmt.Errorf("read publication %s tables: %w", name, err)
	}

	perr := &PublicationError{Publication: name}
	for _, q := range missing {
		perr.Missing = append(perr.Missing, q.String())
	}
	if !(pub.ins && pub.upd && pub.del && pub.trunc) || (partitioned && !pub.viaRoot) {
		var set []string
		if !(pub.ins && pub.upd && pub.del && pub.trunc) {
			perr.Problems = append(perr.Problems, "does not publish all of "+publishOps)
			set = append(set, "publish = '"+publishOps+"'")
		}
		if partitioned && !pub.viaRoot {
			perr.Problems = append(perr.Problems, "has publish_via_partition_root off, which a partitioned rule table needs")
			set = append(set, "publish_via_partition_root = true")
		}
		perr.Fix = append(perr.Fix, "ALTER PUBLICATION "+pubSQL+" SET ("+strings.Join(set, ", ")+")")
	}
	if len(filtered) > 0 {
		var list, sql []string
		for _, q := range filtered {
			list = append(list, q.String())
			sql = append(sql, q.sql())
		}
		perr.Problems = append(perr.Problems, "publishes "+strings.Join(list, ", ")+" with a row filter or column list, which hides changes")
		perr.Fix = append(perr.Fix,
			"ALTER PUBLICATION "+pubSQL+" DROP TABLE "+strings.Join(sql, ", "),
			"ALTER PUBLICATION "+pubSQL+" ADD TABLE "+strings.Join(sql, ", "))
	}
	var addSQL string
	if len(missing) > 0 {
		var list []string
		for _, q := range missing {
			list = append(list, q.sql())
		}
		addSQL = "ALTER PUBLICATION " + pubSQL + " ADD TABLE " + strings.Join(list, ", ")
		perr.Fix = append(perr.Fix, addSQL)
	}
	if len(perr.Problems) > 0 {
		return false, nil, perr
	}
	if len(missing) == 0 {
		return false, nil, nil
	}
	if !pub.canAlter {
		perr.Err = fmt.Errorf("publication %s is owned by role %s", name, pub.owner)
		return false, nil, perr
	}
	if _, err := conn.Exec(ctx, addSQL); err != nil {
		if sqlState(err) == codeInsufficientPriv {
			perr.Err = err
			return false, nil, perr
		}
		return false, nil, fmt.Errorf("add tables to publication %s: %w", name, err)
	}
	return false, perr.Missing, nil
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

// PublicationPlan returns what PublicationSQL returns, on a connection that
// is in no transaction: it plans in a transaction of its own, which it
// rolls back, so nothing changes. It is how a dry run checks that the
// publication is ready without creating or extending it.
func PublicationPlan(ctx context.Context, conn *pgx.Conn, name string, names []string) ([]Statement, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("check publication %s: %w", name, err)
	}
	stmts, err := PublicationSQL(ctx, tx, name, names)
	if rbErr := tx.Rollback(ctx); rbErr != nil && err == nil {
		err = fmt.Errorf("check publication %s: %w", name, rbErr)
	}
	if err != nil {
		return nil, err
	}
	return stmts, nil
}

// DropTablesFromPublication removes the "schema.table" names in tables
// from publication, when the connecting role owns it. Tables that are not
// in it by name (or not at all) are skipped. It returns an error, and
// changes nothing more, when the role does not own the publication: a DBA
// may drop them.
func DropTablesFromPublication(ctx context.Context, conn *pgx.Conn, publication string, tables []string) error {
	var owner bool
	err := conn.QueryRow(ctx, `
SELECT pubowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
FROM pg_publication WHERE pubname = $1`, publication).Scan(&owner)
	if err != nil {
		return fmt.Errorf("read publication %s: %w", publication, err)
	}
	if !owner {
		return errors.New("the publication belongs to another role; a DBA may drop them")
	}
	for _, q := range splitNames(tables) {
		var member bool
		err := conn.QueryRow(ctx, `
SELECT EXISTS (SELECT 1 FROM pg_publication_rel pr
               JOIN pg_publication p ON p.oid = pr.prpubid
               JOIN pg_class c ON c.oid = pr.prrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE p.pubname = $1 AND n.nspname = $2 AND c.relname = $3)`, publication, q.schema, q.table).Scan(&member)
		if err != nil {
			return fmt.Errorf("read publication %s: %w", publication, err)
		}
		if !member {
			continue
		}
		sql := "ALTER PUBLICATION " + pgx.Identifier{publication}.Sanitize() + " DROP TABLE " + q.sql()
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("%s: %w", sql, err)
		}
	}
	return nil
}
