package replication

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/internal/redact"
)

// TextSettings are the run-time parameters pinned on every replication
// connection. pgoutput sends values as their text output, which follows the
// session settings: timestamptz follows TimeZone, dates follow DateStyle,
// bytea follows bytea_output and floats follow extra_float_digits. Pinning
// them keeps the keys built from those values stable.
var TextSettings = map[string]string{
	"TimeZone":           "UTC",
	"DateStyle":          "ISO",
	"bytea_output":       "hex",
	"extra_float_digits": "3",
}

// splitName splits a rules.toml table name, "schema.table", into its schema
// and table as PostgreSQL stores them. A name without a dot is in public. No
// quoting or case folding is done: "public.MyTable" is the relation whose
// relname is MyTable.
func splitName(name string) (schema, table string) {
	if i := strings.IndexByte(name, '.'); i >= 0 {
		return name[:i], name[i+1:]
	}
	return "public", name
}

// qualified is one table name split into schema and relname.
type qualified struct {
	schema, table string
}

func (q qualified) String() string { return q.schema + "." + q.table }

// sql returns the quoted name for SQL text.
func (q qualified) sql() string { return pgx.Identifier{q.schema, q.table}.Sanitize() }

// splitNames splits names and drops repeats ("items" and "public.items" are
// one table), keeping the first-seen order.
func splitNames(names []string) []qualified {
	var out []qualified
	for _, n := range names {
		s, t := splitName(n)
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
		s, t := splitName(name)
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
		if attempt == 0 && sqlState(err) == "42710" {
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
		if sqlState(err) == "42501" {
			perr.Err = err
			return false, nil, perr
		}
		return false, nil, fmt.Errorf("add tables to publication %s: %w", name, err)
	}
	return false, perr.Missing, nil
}

// sqlState returns the SQLSTATE of a server error, or "".
func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// SlotInfo is a replication slot as pg_replication_slots shows it.
type SlotInfo struct {
	Name string
	// Exists is false when there is no such slot; the other fields are then zero.
	Exists bool
	// Type is "logical" or "physical".
	Type string
	// Plugin is the output plugin, "pgoutput" for ours; empty for a physical slot.
	Plugin string
	// Database is the database a logical slot decodes; empty for a physical slot.
	Database string
	// Temporary is true for a slot that vanishes when its session ends.
	Temporary bool
	// ActivePID is the walsender streaming from the slot; 0 when none is.
	ActivePID int32
	// ConfirmedFlushLSN is the position the consumer last acknowledged, where
	// streaming resumes; 0 when the server reports none.
	ConfirmedFlushLSN pglogrepl.LSN
	// WALStatus is "reserved", "extended", "unreserved" or "lost" (PostgreSQL
	// 13 and later); empty before. A lost slot can no longer stream.
	WALStatus string
}

// slotQuery reads the current database and one slot, as text columns; %s is
// the slot name parameter or literal. to_jsonb reads wal_status where the
// server has it.
const slotQuery = `
SELECT current_database(), s.slot_type, s.plugin, s.database, s.temporary::text, s.active_pid::text,
       s.confirmed_flush_lsn::text, to_jsonb(s)->>'wal_status'
FROM pg_replication_slots s
WHERE s.slot_name = %s`

// parseSlot fills a SlotInfo from slotQuery's columns (nil for NULL) and
// returns the current database too.
func parseSlot(name string, cols []*string) (s SlotInfo, database string, err error) {
	text := func(i int) string {
		if cols[i] == nil {
			return ""
		}
		return *cols[i]
	}
	s = SlotInfo{Name: name, Exists: true, Type: text(1), Plugin: text(2), Database: text(3),
		Temporary: text(4) == "true", WALStatus: text(7)}
	if v := text(5); v != "" {
		pid, err := strconv.ParseInt(v, 10, 32)
		if err != nil {
			return SlotInfo{}, "", fmt.Errorf("active_pid %q: %w", v, err)
		}
		s.ActivePID = int32(pid)
	}
	if v := text(6); v != "" {
		lsn, err := pglogrepl.ParseLSN(v)
		if err != nil {
			return SlotInfo{}, "", fmt.Errorf("confirmed_flush_lsn %q: %w", v, err)
		}
		s.ConfirmedFlushLSN = lsn
	}
	return s, text(0), nil
}

// ReadSlot reads pg_replication_slots for slot on a normal connection.
// A missing slot is not an error: it returns Exists=false.
func ReadSlot(ctx context.Context, conn *pgx.Conn, slot string) (SlotInfo, error) {
	cols := make([]*string, 8)
	dest := make([]any, len(cols))
	for i := range cols {
		dest[i] = &cols[i]
	}
	err := conn.QueryRow(ctx, fmt.Sprintf(slotQuery, "$1"), slot).Scan(dest...)
	if errors.Is(err, pgx.ErrNoRows) {
		return SlotInfo{Name: slot}, nil
	}
	if err != nil {
		return SlotInfo{}, fmt.Errorf("read slot %s: %w", slot, err)
	}
	s, _, err := parseSlot(slot, cols)
	if err != nil {
		return SlotInfo{}, fmt.Errorf("read slot %s: %w", slot, err)
	}
	return s, nil
}

// Check says whether the slot can feed pg-invalidator from database: a
// permanent logical pgoutput slot in that database whose WAL is not lost.
func (s SlotInfo) Check(database string) error {
	drop := fmt.Sprintf("drop it with SELECT pg_drop_replication_slot('%s') or choose another slot name", s.Name)
	switch {
	case !s.Exists:
		return slotErrorf("replication slot %s does not exist", s.Name)
	case s.Type != "logical":
		return slotErrorf("replication slot %s is a %s slot, not a logical one; %s", s.Name, s.Type, drop)
	case s.Plugin != "pgoutput":
		return slotErrorf("replication slot %s uses plugin %s, not pgoutput; %s", s.Name, s.Plugin, drop)
	case s.Database != database:
		return slotErrorf("replication slot %s belongs to database %s, not %s; choose another slot name", s.Name, s.Database, database)
	case s.Temporary:
		return slotErrorf("replication slot %s is temporary and will vanish with its session; choose another slot name", s.Name)
	case s.WALStatus == "lost":
		return slotErrorf("replication slot %s was invalidated (wal_status lost) and can no longer stream; changes were missed, so flush the caches, then %s", s.Name, drop)
	}
	return nil
}

// SlotError says a replication slot cannot be used as it is: a wrong kind,
// plugin or database, temporary, or invalidated. Retrying cannot help; an
// operator must act, and the message says how.
type SlotError struct {
	Slot string
	Msg  string
}

func (e *SlotError) Error() string { return e.Msg }

func slotErrorf(format string, args ...any) error {
	return &SlotError{Slot: fmt.Sprint(args[0]), Msg: fmt.Sprintf(format, args...)}
}

// slotName is what PostgreSQL accepts as a replication slot name.
var slotName = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// EnsureSlot creates the permanent logical replication slot slot with the
// pgoutput plugin, unless it exists. conn must be opened with
// replication=database (see ReplicationURL). A slot that exists is checked
// with SlotInfo.Check: one with another plugin, in another database,
// temporary or lost is an error.
func EnsureSlot(ctx context.Context, conn *pgconn.PgConn, slot string) (created bool, err error) {
	if !slotName.MatchString(slot) {
		// CREATE_REPLICATION_SLOT takes the name unquoted.
		return false, &SlotError{Slot: slot, Msg: fmt.Sprintf("create replication slot %q: a slot name is 1 to 63 lowercase letters, digits and underscores", slot)}
	}
	_, err = pglogrepl.CreateReplicationSlot(ctx, conn, slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{SnapshotAction: "NOEXPORT_SNAPSHOT"})
	if err == nil {
		return true, nil
	}
	if sqlState(err) != "42710" {
		return false, fmt.Errorf("create replication slot %s: %w", slot, err)
	}

	// The slot exists: check that it is ours to use. A walsender in
	// replication=database mode runs plain SQL through the simple protocol.
	results, err := conn.Exec(ctx, fmt.Sprintf(slotQuery, "'"+slot+"'")).ReadAll()
	if err != nil {
		return false, fmt.Errorf("read slot %s: %w", slot, err)
	}
	if len(results) != 1 || len(results[0].Rows) != 1 {
		return false, fmt.Errorf("read slot %s: it was dropped while being checked", slot)
	}
	row := results[0].Rows[0]
	cols := make([]*string, len(row))
	for i, v := range row {
		if v != nil {
			s := string(v)
			cols[i] = &s
		}
	}
	info, database, err := parseSlot(slot, cols)
	if err != nil {
		return false, fmt.Errorf("read slot %s: %w", slot, err)
	}
	if err := info.Check(database); err != nil {
		return false, err
	}
	return false, nil
}

// ReplicationURL adds replication=database to a postgres:// or postgresql://
// URL or to a libpq keyword/value string, replacing any replication setting
// already there, so that pgconn.Connect opens a logical replication
// connection.
func ReplicationURL(dsn string) (string, error) {
	if !strings.HasPrefix(dsn, "postgres://") && !strings.HasPrefix(dsn, "postgresql://") {
		// In keyword/value form the last setting of a keyword wins.
		if strings.TrimSpace(dsn) == "" {
			return "replication=database", nil
		}
		return dsn + " replication=database", nil
	}
	// Edit the query string by hand: url.Parse rejects multi-host URLs
	// (postgres://h1,h2/db), which pgconn accepts.
	base, query, _ := strings.Cut(dsn, "?")
	if _, err := url.ParseQuery(query); err != nil {
		// The query may hold a password= parameter: leave it out.
		return "", fmt.Errorf("replication url %s: invalid query string", redact.URL(base))
	}
	var params []string
	for p := range strings.SplitSeq(query, "&") {
		if p == "" {
			continue
		}
		k, _, _ := strings.Cut(p, "=")
		if k, _ := url.QueryUnescape(k); k == "replication" {
			continue
		}
		params = append(params, p)
	}
	params = append(params, "replication=database")
	return base + "?" + strings.Join(params, "&"), nil
}
