package replication

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
)

// BoundTable is what a rule table's name resolves to at one moment: which
// relation, whether the publication streams it, and its leaf partitions.
// The daemon compares one reading with the next to notice a table swapped,
// renamed or dropped, and a partition truncated, detached, dropped or
// attached, none of which the stream reports.
type BoundTable struct {
	// OID is the relation the name resolves to; zero: none (dropped, or
	// renamed away).
	OID uint32
	// Published is true when the publication streams the relation's
	// changes: it is in it by name, through FOR ALL TABLES or FOR TABLES IN
	// SCHEMA, or through a partitioned ancestor.
	Published bool
	// Partitioned is true for a partitioned parent.
	Partitioned bool
	// Leaves are the leaf partitions of a partitioned parent, by OID. Nil
	// for a plain table.
	Leaves map[uint32]Leaf
}

// Leaf is one leaf partition.
type Leaf struct {
	Name string // "schema.table"
	// Filenode is its relfilenode, the file that holds its rows. TRUNCATE,
	// VACUUM FULL, CLUSTER and a rewriting ALTER TABLE give a leaf a new one.
	Filenode uint32
	// HasData is true when that file is not empty: the leaf holds rows, or
	// held some since its last VACUUM.
	HasData bool
}

// ResolveRuleTables reads, for each "schema.table" name (a name without a
// dot is in public), the relation it resolves to now and whether
// publication streams it, in two catalog queries. A name that resolves to
// no table, or to a relation that is not a table, gets a zero BoundTable.
func ResolveRuleTables(ctx context.Context, conn *pgx.Conn, publication string, names []string) (map[string]BoundTable, error) {
	tables := splitNames(names)
	schemas := make([]string, len(tables))
	relnames := make([]string, len(tables))
	for i, q := range tables {
		schemas[i], relnames[i] = q.schema, q.table
	}
	// Membership as EnsurePublication reads it, plus FOR ALL TABLES, which
	// pg_publication_tables leaves out for a partitioned parent under
	// publish_via_partition_root = false.
	rows, err := conn.Query(ctx, `
SELECT w.schema, w.name, c.oid, c.relkind = 'p',
       EXISTS (SELECT 1 FROM pg_publication p WHERE p.pubname = $1 AND p.puballtables)
       OR EXISTS (SELECT 1 FROM pg_publication_tables pt
                  WHERE pt.pubname = $1 AND pt.schemaname = w.schema AND pt.tablename = w.name)
       OR EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                  WHERE p.pubname = $1 AND (pr.prrelid = c.oid
                        OR pr.prrelid IN (SELECT relid FROM pg_partition_ancestors(c.oid))))
FROM unnest($2::text[], $3::text[]) AS w(schema, name)
JOIN pg_namespace n ON n.nspname = w.schema
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.name
WHERE c.relkind IN ('r', 'p')`, publication, schemas, relnames)
	if err != nil {
		return nil, fmt.Errorf("resolve rule tables: %w", err)
	}
	found := make(map[qualified]BoundTable)
	var parents []uint32
	var q qualified
	var b BoundTable
	_, err = pgx.ForEachRow(rows, []any{&q.schema, &q.table, &b.OID, &b.Partitioned, &b.Published}, func() error {
		found[q] = b
		if b.Partitioned {
			parents = append(parents, b.OID)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("resolve rule tables: %w", err)
	}

	type leaf struct {
		oid uint32
		Leaf
	}
	leaves := make(map[uint32][]leaf)
	if len(parents) > 0 {
		rows, err = conn.Query(ctx, `
SELECT p.oid, c.oid, c.relfilenode, n.nspname || '.' || c.relname, pg_relation_size(c.oid) > 0
FROM unnest($1::oid[]) AS p(oid)
CROSS JOIN LATERAL pg_partition_tree(p.oid) AS t
JOIN pg_class c ON c.oid = t.relid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE t.isleaf AND c.relkind = 'r'`, parents)
		if err != nil {
			return nil, fmt.Errorf("resolve rule tables: read partitions: %w", err)
		}
		var parent uint32
		var l leaf
		_, err = pgx.ForEachRow(rows, []any{&parent, &l.oid, &l.Filenode, &l.Name, &l.HasData}, func() error {
			leaves[parent] = append(leaves[parent], l)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("resolve rule tables: read partitions: %w", err)
		}
	}

	out := make(map[string]BoundTable, len(names))
	for _, name := range names {
		s, t := pginvalidator.SplitTableName(name)
		b := found[qualified{s, t}]
		if b.Partitioned {
			b.Leaves = make(map[uint32]Leaf)
			for _, l := range leaves[b.OID] {
				b.Leaves[l.oid] = l.Leaf
			}
		}
		out[name] = b
	}
	return out, nil
}

// CurrentWALLSN returns the server's current WAL insert position. Every
// transaction whose commit was visible before the call ends at or below it
// (even under synchronous_commit = off, whose commits are visible before
// they are flushed), and every one that commits after it ends above it.
func CurrentWALLSN(ctx context.Context, conn *pgx.Conn) (pglogrepl.LSN, error) {
	var s string
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&s); err != nil {
		return 0, fmt.Errorf("read the current wal position: %w", err)
	}
	lsn, err := pglogrepl.ParseLSN(s)
	if err != nil {
		return 0, fmt.Errorf("read the current wal position: %w", err)
	}
	return lsn, nil
}

// AddTablesSQL returns the statement that adds the "schema.table" names to
// publication.
func AddTablesSQL(publication string, names []string) string {
	tables := splitNames(names)
	list := make([]string, len(tables))
	for i, q := range tables {
		list[i] = q.sql()
	}
	return "ALTER PUBLICATION " + pgx.Identifier{publication}.Sanitize() + " ADD TABLE " + strings.Join(list, ", ")
}
