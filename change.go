// Package pginvalidator holds the types that flow through the daemon, one way:
// the replication stream turns WAL into a Change, the rules turn a Change into
// Commands, and the invalidator runs the Commands against Redis.
//
// The types are plain data so that each stage can be read, tested and fuzzed
// on its own: replication knows nothing of rules, mapping knows nothing of
// connections, and the invalidator knows nothing of PostgreSQL.
package pginvalidator

import (
	"fmt"
	"time"
)

// Op is the kind of row change PostgreSQL reported.
type Op uint8

// The four operations pgoutput publishes.
const (
	OpInsert Op = iota + 1
	OpUpdate
	OpDelete
	OpTruncate
)

// String returns the lowercase name used in rules.toml ("insert", ...).
func (o Op) String() string {
	switch o {
	case OpInsert:
		return "insert"
	case OpUpdate:
		return "update"
	case OpDelete:
		return "delete"
	case OpTruncate:
		return "truncate"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Replica identity settings, as pg_class.relreplident and the pgoutput
// Relation message spell them.
const (
	IdentityDefault = 'd' // primary key columns only
	IdentityNothing = 'n' // no old row at all
	IdentityFull    = 'f' // every column of the old row
	IdentityIndex   = 'i' // the columns of a chosen unique index
)

// Relation describes a table as the stream last announced it. A new Relation
// value is made for every pgoutput Relation message, so a pointer to one is a
// stable cache key for anything compiled against its column list.
type Relation struct {
	ID              uint32 // the table's OID
	Schema          string
	Name            string
	ReplicaIdentity byte // one of the Identity constants
	Columns         []Column
}

// QualifiedName returns "schema.table", the form rules.toml uses.
func (r *Relation) QualifiedName() string { return r.Schema + "." + r.Name }

// Column is one column of a Relation, in the order rows carry values.
type Column struct {
	Name    string
	TypeOID uint32
	Key     bool // part of the replica identity
}

// ValueKind says what a Value in a Row holds.
type ValueKind uint8

// Kinds of tuple values pgoutput sends.
const (
	// ValueNull is SQL NULL ('n'). It is also what a non-key column of a 'K'
	// old row carries, where it means "not sent", not NULL: see Change.OldKeyOnly.
	ValueNull ValueKind = iota
	// ValueUnchanged is an unchanged TOASTed value ('u'): it has a value, but
	// the stream did not send it.
	ValueUnchanged
	// ValueText is the column's PostgreSQL text output ('t').
	ValueText
)

// Value is one column value of a row.
type Value struct {
	Kind ValueKind
	Data []byte // the text output when Kind is ValueText; nil otherwise
}

// Row holds one value per column of its Relation, in Relation.Columns order.
// A nil Row means the stream sent no such row.
type Row []Value

// Change is one row change, or the truncation of one relation.
//
//   - insert: New is set.
//   - update: New is set; Old is set when the table's identity is FULL (the
//     whole old row) or when the identity key changed (key columns only).
//   - delete: Old is set (the whole row under FULL, key columns otherwise).
//   - truncate: neither is set.
type Change struct {
	Rel *Relation
	Op  Op
	Old Row
	New Row
	// OldKeyOnly is true when Old came from a 'K' tuple: only the Key columns
	// hold real values, and the others are placeholders, not NULLs.
	OldKeyOnly bool
}

// Action is what a Command does to Redis.
type Action uint8

// Actions the invalidator runs.
const (
	// Del deletes one key (sent as UNLINK, which replies like DEL).
	Del Action = iota + 1
	// Incr increments one version key by one.
	Incr
	// DelPattern deletes every key matching a glob pattern, with SCAN and UNLINK.
	DelPattern
	// IncrPattern increments every existing key matching a glob pattern.
	IncrPattern
	// Version sets one version key to the LSN of the transaction that
	// caused it, unless the key holds that LSN or a later one already. The
	// LSN is not in the Command: whoever runs it knows which transaction the
	// command belongs to (see invalidator.Batch).
	Version
	// VersionPattern does what Version does to every existing key matching
	// a glob pattern. It never creates a key.
	VersionPattern
)

// String names the action the way logs and metrics do.
func (a Action) String() string {
	switch a {
	case Del:
		return "del"
	case Incr:
		return "incr"
	case DelPattern:
		return "del_pattern"
	case IncrPattern:
		return "incr_pattern"
	case Version:
		return "version"
	case VersionPattern:
		return "version_pattern"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// Command is one thing to do to Redis. For the pattern actions Key is a Redis
// glob pattern with literal glob characters already escaped.
type Command struct {
	Action Action
	Key    string
	// Redelete, on a Del or DelPattern, asks for the command to be sent
	// again this long after it was first applied, to remove a value that a
	// slow reader cached in between from a row it read before the change
	// (the rule's redelete_after). Zero: sent once.
	Redelete time.Duration
}

// LSN is a position in PostgreSQL's write-ahead log: a byte offset, as
// pg_lsn and pglogrepl.LSN hold it.
type LSN uint64

// String formats the LSN the way PostgreSQL prints a pg_lsn: "16/B374D848".
func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint64(l)>>32, uint32(l)) }

// VersionValue formats the LSN the way a Version command stores it in a
// version key: 16 upper-case hexadecimal digits, zero-padded
// ("00000016B374D848"), so that comparing two values as strings compares
// the LSNs. Applications may read it, and compare it, but need not parse it.
func (l LSN) VersionValue() string { return fmt.Sprintf("%016X", uint64(l)) }
