package replication

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
)

// qualified is one table name split into schema and relname.
type qualified struct {
	schema, table string
}

// String returns the name as "schema.table", unquoted.
func (q qualified) String() string { return q.schema + "." + q.table }

// sql returns the quoted name for SQL text.
func (q qualified) sql() string { return pgx.Identifier{q.schema, q.table}.Sanitize() }

// splitNames splits "schema.table" names (a name without a dot is in
// public) and drops repeats ("items" and "public.items" are one table),
// keeping the first-seen order. No quoting or case folding is done:
// "public.MyTable" is the relation whose relname is MyTable.
func splitNames(names []string) []qualified {
	var out []qualified
	for _, n := range names {
		s, t := pginvalidator.SplitTableName(n)
		q := qualified{s, t}
		if !slices.Contains(out, q) {
			out = append(out, q)
		}
	}
	return out
}

// schemasAndRelnames splits tables into two parallel lists of schema and
// relname, the form a catalog query takes them in as
// unnest($1::text[], $2::text[]).
func schemasAndRelnames(tables []qualified) (schemas, relnames []string) {
	schemas = make([]string, len(tables))
	relnames = make([]string, len(tables))
	for i, q := range tables {
		schemas[i], relnames[i] = q.schema, q.table
	}
	return schemas, relnames
}

// DescribeTables reads the live catalog for each "schema.table" name (a name
// without a dot is in public) and returns one TableInfo per name, keyed by the
// name as given. A name that matches no table gets Exists=false, with only
// Schema and Name set. A name that matches a view, a sequence or another
// relation that is not a table is an error, since only tables can be
// published.
//
// IdentityColumns follow the table's column order and never include generated
// columns, whose values pgoutput does not send. An INDEX identity whose index
// has been dropped behaves as NOTHING and is reported as NOTHING.
//
// For a partitioned parent, UPDATE and DELETE run on the leaf partitions, so
// ReplicaIdentity is the weakest among the leaves (NOTHING, or DEFAULT
// without a primary key, below DEFAULT or INDEX, below FULL; among key-only
// leaves INDEX is reported if any leaf uses it), HasPrimaryKey is true only
// when every leaf has one, and IdentityColumns are the columns every leaf
// sends. A partitioned table with no partitions yet is described by its own
// settings.
//
// It runs four catalog queries whatever the number of tables and columns.
func DescribeTables(ctx context.Context, conn *pgx.Conn, names []string) (map[string]pginvalidator.TableInfo, error) {
	var cat tableCatalog
	if err := cat.readRelations(ctx, conn, splitNames(names)); err != nil {
		return nil, err
	}
	oids, parents := cat.oids()
	if err := cat.readColumns(ctx, conn, oids); err != nil {
		return nil, err
	}
	keyRels := slices.Clone(oids)
	if len(parents) > 0 {
		leafOIDs, err := cat.readLeaves(ctx, conn, parents)
		if err != nil {
			return nil, err
		}
		keyRels = append(keyRels, leafOIDs...)
	}
	if err := cat.readKeys(ctx, conn, keyRels); err != nil {
		return nil, err
	}

	out := make(map[string]pginvalidator.TableInfo, len(names))
	for _, name := range names {
		out[name] = cat.describe(name)
	}
	return out, nil
}

// tableCatalog is what DescribeTables reads from the system catalogs, one
// query per step, before it turns it into one TableInfo per name. Each
// field is filled by one read method; a nil map is one not read yet, or
// (for leaves) not needed.
type tableCatalog struct {
	relations  map[qualified]relation     // by name; a name that matches no relation is absent
	columns    map[uint32][]attribute     // live columns by relation oid, in attnum order
	leaves     map[uint32][]leafPartition // leaf partitions by partitioned parent oid
	primary    map[uint32][]string        // primary key columns by relation or leaf oid
	identIndex map[uint32][]string        // replica identity index columns by relation or leaf oid
}

// relation is the pg_class row of a table that a name matched.
type relation struct {
	oid       uint32
	kind      byte // relkind: 'r' for a table, 'p' for a partitioned table
	replident byte // relreplident
}

// attribute is one live column of a relation, from pg_attribute.
type attribute struct {
	name      string
	generated bool // a generated column, whose values pgoutput does not send
}

// leafPartition is one leaf partition of a partitioned table.
type leafPartition struct {
	oid       uint32
	replident byte // relreplident
}

// readRelations reads the pg_class row of each of tables into c.relations,
// the first of DescribeTables' queries. A name that matches a view, a
// sequence or any other relation that is not a table is an error.
func (c *tableCatalog) readRelations(ctx context.Context, conn *pgx.Conn, tables []qualified) error {
	schemas, relnames := schemasAndRelnames(tables)
	c.relations = make(map[qualified]relation)
	rows, err := conn.Query(ctx, `
SELECT n.nspname, c.relname, c.oid, c.relkind::text, c.relreplident::text
FROM unnest($1::text[], $2::text[]) AS w(schema, name)
JOIN pg_namespace n ON n.nspname = w.schema
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.name`, schemas, relnames)
	if err != nil {
		return fmt.Errorf("describe tables: %w", err)
	}
	var q qualified
	var r relation
	var kind, replident string
	_, err = pgx.ForEachRow(rows, []any{&q.schema, &q.table, &r.oid, &kind, &replident}, func() error {
		r.kind, r.replident = kind[0], replident[0]
		switch r.kind {
		case 'r', 'p':
		default:
			return fmt.Errorf("%s is a %s, not a table; only tables can be published", q, relkindName(r.kind))
		}
		c.relations[q] = r
		return nil
	})
	if err != nil {
		return fmt.Errorf("describe tables: %w", err)
	}
	return nil
}

// oids returns the oid of every relation readRelations found and, in
// parents, those of the partitioned ones among them, in no set order.
func (c *tableCatalog) oids() (oids, parents []uint32) {
	for _, r := range c.relations {
		oids = append(oids, r.oid)
		if r.kind == 'p' {
			parents = append(parents, r.oid)
		}
	}
	return oids, parents
}

// readColumns reads the live columns of the relations oids, in attnum
// order, into c.columns: the second query.
func (c *tableCatalog) readColumns(ctx context.Context, conn *pgx.Conn, oids []uint32) error {
	c.columns = make(map[uint32][]attribute)
	rows, err := conn.Query(ctx, `
SELECT attrelid, attname, attgenerated <> ''
FROM pg_attribute
WHERE attrelid = ANY($1::oid[]) AND attnum > 0 AND NOT attisdropped
ORDER BY attrelid, attnum`, oids)
	if err != nil {
		return fmt.Errorf("describe tables: read columns: %w", err)
	}
	var relid uint32
	var col attribute
	_, err = pgx.ForEachRow(rows, []any{&relid, &col.name, &col.generated}, func() error {
		c.columns[relid] = append(c.columns[relid], col)
		return nil
	})
	if err != nil {
		return fmt.Errorf("describe tables: read columns: %w", err)
	}
	return nil
}

// readLeaves reads the leaf partitions of the partitioned tables parents
// into c.leaves, the third query, and returns the leaves' oids.
// Foreign-table partitions are left out: their changes never reach the WAL.
func (c *tableCatalog) readLeaves(ctx context.Context, conn *pgx.Conn, parents []uint32) ([]uint32, error) {
	c.leaves = make(map[uint32][]leafPartition)
	rows, err := conn.Query(ctx, `
SELECT p.oid, t.relid::oid, c.relreplident::text
FROM unnest($1::oid[]) AS p(oid)
CROSS JOIN LATERAL pg_partition_tree(p.oid) AS t
JOIN pg_class c ON c.oid = t.relid
WHERE t.isleaf AND c.relkind = 'r'
ORDER BY p.oid, t.relid::oid`, parents)
	if err != nil {
		return nil, fmt.Errorf("describe tables: read partitions: %w", err)
	}
	var leafOIDs []uint32
	var parent uint32
	var l leafPartition
	var replident string
	_, err = pgx.ForEachRow(rows, []any{&parent, &l.oid, &replident}, func() error {
		l.replident = replident[0]
		c.leaves[parent] = append(c.leaves[parent], l)
		leafOIDs = append(leafOIDs, l.oid)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("describe tables: read partitions: %w", err)
	}
	return leafOIDs, nil
}

// readKeys reads, by column name, the primary key of each relation in rels
// into c.primary and its replica identity index into c.identIndex: the
// fourth query.
func (c *tableCatalog) readKeys(ctx context.Context, conn *pgx.Conn, rels []uint32) error {
	c.primary = make(map[uint32][]string)
	c.identIndex = make(map[uint32][]string)
	rows, err := conn.Query(ctx, `
SELECT i.indrelid, i.indisprimary, i.indisreplident,
       ARRAY(SELECT a.attname
             FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             ORDER BY k.n)
FROM pg_index i
WHERE i.indrelid = ANY($1::oid[]) AND (i.indisprimary OR i.indisreplident)`, rels)
	if err != nil {
		return fmt.Errorf("describe tables: read keys: %w", err)
	}
	var relid uint32
	var isPrimary, isReplident bool
	var keyCols []string
	_, err = pgx.ForEachRow(rows, []any{&relid, &isPrimary, &isReplident, &keyCols}, func() error {
		if isPrimary {
			c.primary[relid] = keyCols
		}
		if isReplident {
			c.identIndex[relid] = keyCols
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("describe tables: read keys: %w", err)
	}
	return nil
}

// describe returns the TableInfo of name, a "schema.table" name as given to
// DescribeTables, from what c has read: Exists=false when it matched no
// table, and otherwise its columns and the identity that its leaves (or
// the table itself, when it has none) send, as DescribeTables documents.
func (c *tableCatalog) describe(name string) pginvalidator.TableInfo {
	s, t := pginvalidator.SplitTableName(name)
	info := pginvalidator.TableInfo{Schema: s, Name: t}
	r, ok := c.relations[qualified{s, t}]
	if !ok {
		return info
	}
	info.Exists = true
	info.Partitioned = r.kind == 'p'
	var sendable []string // the non-generated columns
	for _, col := range c.columns[r.oid] {
		info.Columns = append(info.Columns, col.name)
		if col.generated {
			info.Generated = append(info.Generated, col.name)
		} else {
			sendable = append(sendable, col.name)
		}
	}
	ls := c.leaves[r.oid]
	if len(ls) == 0 {
		ls = []leafPartition{{r.oid, r.replident}}
	}
	ids := make([]identity, len(ls))
	for i, l := range ls {
		ids[i] = identityOf(l.replident, c.primary[l.oid], c.identIndex[l.oid], sendable)
	}
	info.ReplicaIdentity, info.HasPrimaryKey, info.IdentityColumns = weakest(ids, sendable)
	return info
}

// relkindName names a pg_class relkind for an error message.
func relkindName(k byte) string {
	switch k {
	case 'v':
		return "view"
	case 'm':
		return "materialized view"
	case 'f':
		return "foreign table"
	case 'S':
		return "sequence"
	case 'i', 'I':
		return "index"
	case 'c':
		return "composite type"
	case 't':
		return "TOAST table"
	}
	return fmt.Sprintf("relation of kind %q", k)
}
