package replication

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/jackc/pgx/v5"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
)

// identity is what one table's UPDATE and DELETE send as the old row.
type identity struct {
	setting byte     // relreplident, with an INDEX whose index is gone made NOTHING
	hasPK   bool     // the table has a primary key
	columns []string // the columns sent; nil when none are
}

// rank orders identities from weakest (0: no old row) to strongest (2: the
// whole old row).
func (id identity) rank() int {
	switch {
	case id.setting == pginvalidator.IdentityFull:
		return 2
	case len(id.columns) > 0:
		return 1
	}
	return 0
}

// identityOf works out one table's identity from relreplident, its primary
// key and replica identity index columns (nil when it has none) and its
// non-generated columns.
func identityOf(replident byte, pk, index, sendable []string) identity {
	id := identity{setting: replident, hasPK: pk != nil}
	switch replident {
	case pginvalidator.IdentityFull:
		id.columns = sendable
	case pginvalidator.IdentityDefault:
		id.columns = keep(pk, sendable)
	case pginvalidator.IdentityIndex:
		if index == nil {
			// The index was dropped: PostgreSQL then behaves as NOTHING.
			id.setting = pginvalidator.IdentityNothing
		}
		id.columns = keep(index, sendable)
	}
	return id
}

// keep returns the members of cols that are in set, in cols' order, or nil.
func keep(set, cols []string) []string {
	var out []string
	for _, c := range cols {
		if slices.Contains(set, c) {
			out = append(out, c)
		}
	}
	return out
}

// weakest combines the identities of a table's leaves (one, for a plain
// table) into what a consumer of the whole table can rely on.
func weakest(ids []identity, sendable []string) (setting byte, hasPK bool, columns []string) {
	low := ids[0].rank()
	hasPK = true
	columns = sendable
	for _, id := range ids {
		low = min(low, id.rank())
		hasPK = hasPK && id.hasPK
		columns = keep(id.columns, columns)
	}
	switch low {
	case 2:
		setting = pginvalidator.IdentityFull
	case 1:
		setting = pginvalidator.IdentityDefault
		for _, id := range ids {
			if id.setting == pginvalidator.IdentityIndex {
				setting = pginvalidator.IdentityIndex
			}
		}
	default:
		setting = pginvalidator.IdentityDefault
		for _, id := range ids {
			if id.rank() == 0 && id.setting == pginvalidator.IdentityNothing {
				setting = pginvalidator.IdentityNothing
			}
		}
		columns = nil
	}
	return setting, hasPK, columns
}

// WithFullIdentity returns a copy of tables, as DescribeTables returned
// them, in which the tables named in full ("schema.table", as keyed in
// tables) have REPLICA IDENTITY FULL: what DescribeTables will report once
// the statements of ReplicaIdentityFullSQL have run. Their IdentityColumns
// become every column pgoutput sends, generated ones excepted.
func WithFullIdentity(tables map[string]pginvalidator.TableInfo, full []string) map[string]pginvalidator.TableInfo {
	out := maps.Clone(tables)
	for _, name := range full {
		info, ok := out[name]
		if !ok || !info.Exists {
			continue
		}
		var sendable []string
		for _, c := range info.Columns {
			if !slices.Contains(info.Generated, c) {
				sendable = append(sendable, c)
			}
		}
		id := identityOf(pginvalidator.IdentityFull, nil, nil, sendable)
		info.ReplicaIdentity, info.IdentityColumns = id.setting, id.columns
		out[name] = info
	}
	return out
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
