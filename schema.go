package pginvalidator

// TableInfo describes a table as the live catalog shows it. The replication
// package reads it from PostgreSQL; the mapping package checks rules against
// it. Names are as PostgreSQL stores them (usually lowercase).
type TableInfo struct {
	Schema string
	Name   string
	// Exists is false when no such table was found; the other fields are then zero.
	Exists bool
	// Partitioned is true for a partitioned parent table (relkind 'p').
	Partitioned bool
	// ReplicaIdentity is one of the Identity constants. For a partitioned
	// parent it is the weakest identity among its leaf partitions, since
	// UPDATE and DELETE run on the partitions.
	ReplicaIdentity byte
	// HasPrimaryKey is true when the table (every leaf partition, for a
	// partitioned parent) has a primary key.
	HasPrimaryKey bool
	// Columns lists the table's live columns in attnum order, generated ones
	// included.
	Columns []string
	// Generated lists the generated columns: pgoutput on PostgreSQL 15 never
	// sends their values.
	Generated []string
	// IdentityColumns lists the columns whose old values an UPDATE or DELETE
	// sends: all columns under FULL, the primary key under DEFAULT, the index
	// columns under INDEX, none under NOTHING.
	IdentityColumns []string
}

// QualifiedName returns "schema.table".
func (t TableInfo) QualifiedName() string { return t.Schema + "." + t.Name }

// SplitTableName splits "schema.table", the form rules.toml and every
// message use, into its parts. A name without a dot is in the public schema.
// It does not validate: mapping reports malformed names with their line.
func SplitTableName(s string) (schema, table string) {
	for i := 0; i < len(s); i++ {
		if s[i] == '.' {
			return s[:i], s[i+1:]
		}
	}
	return "public", s
}
