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
	tables := splitNames(names)
	schemas := make([]string, len(tables))
	relnames := make([]string, len(tables))
	for i, q := range tables {
		schemas[i], relnames[i] = q.schema, q.table
	}

	// 1. The relations themselves.
	type rel struct {
		oid       uint32
		kind      byte
		replident byte
	}
	found := make(map[qualified]rel)
	rows, err := conn.Query(ctx, `
SELECT n.nspname, c.relname, c.oid, c.relkind::text, c.relreplident::text
FROM unnest($1::text[], $2::text[]) AS w(schema, name)
JOIN pg_namespace n ON n.nspname = w.schema
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.name`, schemas, relnames)
	if err != nil {
		return nil, fmt.Errorf("describe tables: %w", err)
	}
	var q qualified
	var r rel
	var kind, replident string
	_, err = pgx.ForEachRow(rows, []any{&q.schema, &q.table, &r.oid, &kind, &replident}, func() error {
		r.kind, r.replident = kind[0], replident[0]
		switch r.kind {
		case 'r', 'p':
		default:
			return fmt.Errorf("%s is a %s, not a table; only tables can be published", q, relkindName(r.kind))
		}
		found[q] = r
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("describe tables: %w", err)
	}

	var oids, parents []uint32
	for _, r := range found {
		oids = append(oids, r.oid)
		if r.kind == 'p' {
			parents = append(parents, r.oid)
		}
	}

	// 2. Live columns, in attnum order.
	type column struct {
		name      string
		generated bool
	}
	columns := make(map[uint32][]column)
	rows, err = conn.Query(ctx, `
SELECT attrelid, attname, attgenerated <> ''
FROM pg_attribute
WHERE attrelid = ANY($1::oid[]) AND attnum > 0 AND NOT attisdropped
ORDER BY attrelid, attnum`, oids)
	if err != nil {
		return nil, fmt.Errorf("describe tables: read columns: %w", err)
	}
	var relid uint32
	var col column
	_, err = pgx.ForEachRow(rows, []any{&relid, &col.name, &col.generated}, func() error {
		columns[relid] = append(columns[relid], col)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("describe tables: read columns: %w", err)
	}

	// 3. The leaf partitions of partitioned parents. Foreign-table
	// partitions are left out: their changes never reach the WAL.
	type leaf struct {
		oid       uint32
		replident byte
	}
	leaves := make(map[uint32][]leaf)
	keyRels := slices.Clone(oids)
	if len(parents) > 0 {
		rows, err = conn.Query(ctx, `
SELECT p.oid, t.relid::oid, c.relreplident::text
FROM unnest($1::oid[]) AS p(oid)
CROSS JOIN LATERAL pg_partition_tree(p.oid) AS t
JOIN pg_class c ON c.oid = t.relid
WHERE t.isleaf AND c.relkind = 'r'
ORDER BY p.oid, t.relid::oid`, parents)
		if err != nil {
			return nil, fmt.Errorf("describe tables: read partitions: %w", err)
		}
		var parent uint32
		var l leaf
		_, err = pgx.ForEachRow(rows, []any{&parent, &l.oid, &replident}, func() error {
			l.replident = replident[0]
			leaves[parent] = append(leaves[parent], l)
			keyRels = append(keyRels, l.oid)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("describe tables: read partitions: %w", err)
		}
	}

	// 4. Primary keys and replica identity indexes, by column name.
	primary := make(map[uint32][]string)
	identIndex := make(map[uint32][]string)
	rows, err = conn.Query(ctx, `
SELECT i.indrelid, i.indisprimary, i.indisreplident,
       ARRAY(SELECT a.attname
             FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             ORDER BY k.n)
FROM pg_index i
WHERE i.indrelid = ANY($1::oid[]) AND (i.indisprimary OR i.indisreplident)`, keyRels)
	if err != nil {
		return nil, fmt.Errorf("describe tables: read keys: %w", err)
	}
	var isPrimary, isReplident bool
	var keyCols []string
	_, err = pgx.ForEachRow(rows, []any{&relid, &isPrimary, &isReplident, &keyCols}, func() error {
		if isPrimary {
			primary[relid] = keyCols
		}
		if isReplident {
			identIndex[relid] = keyCols
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("describe tables: read keys: %w", err)
	}

	out := make(map[string]pginvalidator.TableInfo, len(names))
	for _, name := range names {
		s, t := pginvalidator.SplitTableName(name)
		info := pginvalidator.TableInfo{Schema: s, Name: t}
		r, ok := found[qualified{s, t}]
		if !ok {
			out[name] = info
			continue
		}
		info.Exists = true
		info.Partitioned = r.kind == 'p'
		var sendable []string // the non-generated columns
		for _, c := range columns[r.oid] {
			info.Columns = append(info.Columns, c.name)
			if c.generated {
				info.Generated = append(info.Generated, c.name)
			} else {
				sendable = append(sendable, c.name)
			}
		}
		ls := leaves[r.oid]
		if len(ls) == 0 {
			ls = []leaf{{r.oid, r.replident}}
		}
		ids := make([]identity, len(ls))
		for i, l := range ls {
			ids[i] = identityOf(l.replident, primary[l.oid], identIndex[l.oid], sendable)
		}
		info.ReplicaIdentity, info.HasPrimaryKey, info.IdentityColumns = weakest(ids, sendable)
		out[name] = info
	}
	return out, nil
}

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
