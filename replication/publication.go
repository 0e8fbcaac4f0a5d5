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

// Error says what the publication lacks, why this role could not fix it
// when it tried, and the SQL a DBA must run.
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

// Unwrap returns the server's refusal, or nil when the role did not try.
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
	pub, created, err := readOrCreatePublication(ctx, conn, name, tables)
	if err != nil {
		return false, nil, err
	}
	if created {
		return true, tableNames(tables), nil
	}
	st, err := pub.readTables(ctx, conn, tables)
	if err != nil {
		return false, nil, err
	}
	perr, addSQL := pub.shortfalls(st)
	if len(perr.Problems) > 0 {
		return false, nil, perr
	}
	if len(st.missing) == 0 {
		return false, nil, nil
	}
	if err := pub.addTables(ctx, conn, addSQL, perr); err != nil {
		return false, nil, err
	}
	return false, perr.Missing, nil
}

// existingPublication is what pg_publication says about a publication that
// exists, as EnsurePublication reads it.
type existingPublication struct {
	name string
	oid  uint32
	// all is puballtables; ins, upd, del and trunc say which changes it
	// publishes, and viaRoot is publish_via_partition_root.
	all, ins, upd, del, trunc, viaRoot bool
	owner                              string // the owning role's name
	canAlter                           bool   // this role has the owner's rights (pg_has_role USAGE) or is a superuser
}

// publicationTables is where the rule tables stand in an existing
// publication.
type publicationTables struct {
	missing     []qualified // the tables it lacks, in the order given
	filtered    []qualified // the tables it publishes with a row filter or column list
	partitioned bool        // some rule table is partitioned
}

// readOrCreatePublication reads publication name from pg_publication, and
// creates it for tables, with createPublicationSQL, when there is none. It
// returns created=true and a zero pub when it created it. When someone else
// creates the publication between the read and the CREATE, it reads theirs
// instead, once.
func readOrCreatePublication(ctx context.Context, conn *pgx.Conn, name string, tables []qualified) (pub existingPublication, created bool, err error) {
	pub.name = name
	for attempt := 0; ; attempt++ {
		err = conn.QueryRow(ctx, `
SELECT p.oid, p.puballtables, p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate, p.pubviaroot,
       pg_get_userbyid(p.pubowner),
       pg_has_role(p.pubowner, 'USAGE') OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
FROM pg_publication p
WHERE p.pubname = $1`, name).Scan(&pub.oid, &pub.all, &pub.ins, &pub.upd, &pub.del, &pub.trunc, &pub.viaRoot, &pub.owner, &pub.canAlter)
		if err == nil {
			return pub, false, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return existingPublication{}, false, fmt.Errorf("read publication %s: %w", name, err)
		}
		_, err = conn.Exec(ctx, createPublicationSQL(name, tables))
		if err == nil {
			return existingPublication{}, true, nil
		}
		if attempt == 0 && sqlState(err) == codeDuplicateObject {
			continue // created meanwhile by someone else: check theirs
		}
		return existingPublication{}, false, fmt.Errorf("create publication %s: %w", name, err)
	}
}

// readTables reads where each of tables stands in pub: whether pub lacks
// it, whether pub publishes it with a row filter or column list, and
// whether any of them is partitioned. Under FOR ALL TABLES no table is
// missing.
func (pub *existingPublication) readTables(ctx context.Context, conn *pgx.Conn, tables []qualified) (publicationTables, error) {
	schemas, relnames := schemasAndRelnames(tables)
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
ORDER BY w.i`, pub.name, pub.oid, schemas, relnames)
	if err != nil {
		return publicationTables{}, fmt.Errorf("read publication %s tables: %w", pub.name, err)
	}
	var st publicationTables
	var q qualified
	var member, isPartitioned, isFiltered bool
	_, err = pgx.ForEachRow(rows, []any{&q.schema, &q.table, &member, &isPartitioned, &isFiltered}, func() error {
		if !member && !pub.all {
			st.missing = append(st.missing, q)
		}
		if isFiltered {
			st.filtered = append(st.filtered, q)
		}
		st.partitioned = st.partitioned || isPartitioned
		return nil
	})
	if err != nil {
		return publicationTables{}, fmt.Errorf("read publication %s tables: %w", pub.name, err)
	}
	return st, nil
}

// shortfalls returns the PublicationError that lists what pub lacks for
// the rule tables as st describes them, with the SQL that fixes each
// shortfall, in order: ALTER PUBLICATION ... SET for the publish options,
// DROP TABLE then ADD TABLE for the filtered tables, and addSQL, the ADD
// TABLE of the missing tables ("" when none is missing). Its Problems are
// the shortfalls that adding the missing tables does not fix.
func (pub *existingPublication) shortfalls(st publicationTables) (perr *PublicationError, addSQL string) {
	pubSQL := pgx.Identifier{pub.name}.Sanitize()
	perr = &PublicationError{Publication: pub.name, Missing: tableNames(st.missing)}
	allOps := pub.ins && pub.upd && pub.del && pub.trunc
	if !allOps || (st.partitioned && !pub.viaRoot) {
		var set []string
		if !allOps {
			perr.Problems = append(perr.Problems, "does not publish all of "+publishOps)
			set = append(set, "publish = '"+publishOps+"'")
		}
		if st.partitioned && !pub.viaRoot {
			perr.Problems = append(perr.Problems, "has publish_via_partition_root off, which a partitioned rule table needs")
			set = append(set, "publish_via_partition_root = true")
		}
		perr.Fix = append(perr.Fix, "ALTER PUBLICATION "+pubSQL+" SET ("+strings.Join(set, ", ")+")")
	}
	if len(st.filtered) > 0 {
		list := sqlList(st.filtered)
		perr.Problems = append(perr.Problems, "publishes "+strings.Join(tableNames(st.filtered), ", ")+" with a row filter or column list, which hides changes")
		perr.Fix = append(perr.Fix,
			"ALTER PUBLICATION "+pubSQL+" DROP TABLE "+list,
			"ALTER PUBLICATION "+pubSQL+" ADD TABLE "+list)
	}
	if len(st.missing) > 0 {
		addSQL = "ALTER PUBLICATION " + pubSQL + " ADD TABLE " + sqlList(st.missing)
		perr.Fix = append(perr.Fix, addSQL)
	}
	return perr, addSQL
}

// addTables runs addSQL, which adds the missing tables to pub. When this
// role may not, because it is not a member of pub's owner or because the
// server answers 42501, it returns perr with Err saying why; any other
// failure is returned wrapped.
func (pub *existingPublication) addTables(ctx context.Context, conn *pgx.Conn, addSQL string, perr *PublicationError) error {
	if !pub.canAlter {
		perr.Err = fmt.Errorf("publication %s is owned by role %s", pub.name, pub.owner)
		return perr
	}
	if _, err := conn.Exec(ctx, addSQL); err != nil {
		if sqlState(err) == codeInsufficientPriv {
			perr.Err = err
			return perr
		}
		return fmt.Errorf("add tables to publication %s: %w", pub.name, err)
	}
	return nil
}

// tableNames returns tables as "schema.table" names, or nil when there are
// none.
func tableNames(tables []qualified) []string {
	var out []string
	for _, q := range tables {
		out = append(out, q.String())
	}
	return out
}

// sqlList returns tables as quoted names for SQL text, separated by ", ".
func sqlList(tables []qualified) string {
	list := make([]string, len(tables))
	for i, q := range tables {
		list[i] = q.sql()
	}
	return strings.Join(list, ", ")
}

// createPublicationSQL returns the statement that creates publication name
// for tables, publishing every kind of change through the partition root.
func createPublicationSQL(name string, tables []qualified) string {
	return "CREATE PUBLICATION " + pgx.Identifier{name}.Sanitize() + " FOR TABLE " + sqlList(tables) +
		" WITH (publish = '" + publishOps + "', publish_via_partition_root = true)"
}

// CreatePublicationSQL returns the statement that EnsurePublication runs to
// create publication name for the "schema.table" names (a name without a dot
// is in public).
func CreatePublicationSQL(name string, names []string) string {
	return createPublicationSQL(name, splitNames(names))
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
