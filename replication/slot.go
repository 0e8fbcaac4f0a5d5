package replication

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

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
	// SafeWALSize is how many more bytes of WAL can be written before the
	// slot is in danger of being lost. It is -1 when the server reports
	// none: no limit (max_slot_wal_keep_size = -1), or a server before
	// PostgreSQL 13.
	SafeWALSize int64
	// InvalidationReason says why the server invalidated the slot:
	// invalidation_reason (PostgreSQL 17 and later), such as "wal_removed",
	// "rows_removed", "wal_level_insufficient" or "idle_timeout" (18), or
	// "conflict with recovery" on a 16 standby that says only conflicting.
	// Empty when the slot is usable, or when the server does not say.
	InvalidationReason string
	// Failover is true for a slot created or altered with the failover
	// option (PostgreSQL 17 and later), which standbys with
	// sync_replication_slots copy; Synced is true for such a copy, on a
	// standby.
	Failover, Synced bool
}

// Invalidated reports whether the server invalidated the slot: it can no
// longer stream.
func (s SlotInfo) Invalidated() bool { return s.WALStatus == "lost" || s.InvalidationReason != "" }

// LostHow says how the slot was invalidated, for a message: "(wal_status
// lost)", or its invalidation_reason.
func (s SlotInfo) LostHow() string {
	if s.InvalidationReason != "" {
		return "(invalidation_reason " + s.InvalidationReason + ")"
	}
	return "(wal_status lost)"
}

// slotQuery reads the current database and one slot, as text columns; %s is
// the slot name parameter or literal. to_jsonb reads the columns that not
// every supported version has: wal_status and safe_wal_size (13),
// conflicting (16), invalidation_reason, failover and synced (17).
const slotQuery = `
SELECT current_database(), s.slot_type, s.plugin, s.database, s.temporary::text, s.active_pid::text,
       s.confirmed_flush_lsn::text, to_jsonb(s)->>'wal_status', to_jsonb(s)->>'safe_wal_size',
       to_jsonb(s)->>'invalidation_reason', to_jsonb(s)->>'conflicting',
       to_jsonb(s)->>'failover', to_jsonb(s)->>'synced'
FROM pg_replication_slots s
WHERE s.slot_name = %s`

// slotColumns is how many columns slotQuery returns.
const slotColumns = 13

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
		Temporary: text(4) == "true", WALStatus: text(7), SafeWALSize: -1}
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
	if v := text(8); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return SlotInfo{}, "", fmt.Errorf("safe_wal_size %q: %w", v, err)
		}
		s.SafeWALSize = n
	}
	s.Failover, s.Synced = text(11) == "true", text(12) == "true"
	s.InvalidationReason = text(9)
	if s.InvalidationReason == "" && text(10) == "true" {
		s.InvalidationReason = "conflict with recovery"
	}
	return s, text(0), nil
}

// SlotState reads pg_replication_slots for slot on an ordinary connection.
// A missing slot is not an error: it returns Exists=false.
func SlotState(ctx context.Context, conn *pgx.Conn, slot string) (SlotInfo, error) {
	cols := make([]*string, slotColumns)
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

// SlotStreaming reports whether a walsender streams from slot: past
// START_REPLICATION, in state catchup or streaming, so the slot has reached
// its consistent point and every later commit will be decoded. A slot being
// created shows as active earlier, so its active_pid alone does not say it.
func SlotStreaming(ctx context.Context, conn *pgx.Conn, slot string) (bool, error) {
	var streaming bool
	err := conn.QueryRow(ctx, `
SELECT EXISTS (SELECT 1 FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
               WHERE s.slot_name = $1 AND r.state IN ('catchup', 'streaming'))`, slot).Scan(&streaming)
	if err != nil {
		return false, fmt.Errorf("read slot %s: %w", slot, err)
	}
	return streaming, nil
}

// dropSlotHint is how a message tells an operator to drop slot by hand.
func dropSlotHint(slot string) string {
	return fmt.Sprintf("drop it with SELECT pg_drop_replication_slot('%s')", slot)
}

// Check says whether the slot can feed pg-invalidator from database: a
// permanent logical pgoutput slot in that database whose WAL is not lost.
func (s SlotInfo) Check(database string) error {
	drop := dropSlotHint(s.Name) + " or choose another slot name"
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
	case s.Invalidated():
		return slotErrorf("replication slot %s was invalidated %s and can no longer stream; changes were missed, so flush the caches, then %s", s.Name, s.LostHow(), drop)
	}
	return nil
}

// SlotError says a replication slot cannot be used as it is: a wrong kind,
// plugin or database, temporary, or invalidated. Retrying cannot help; an
// operator must act, and the message says how.
type SlotError struct {
	Slot string
	Msg  string
	// Err is the server's refusal, when there was one; nil when the slot
	// was found wanting by reading pg_replication_slots.
	Err error
}

func (e *SlotError) Error() string { return e.Msg }

// Unwrap returns the server's refusal, if any.
func (e *SlotError) Unwrap() error { return e.Err }

func slotErrorf(format string, args ...any) error {
	return &SlotError{Slot: fmt.Sprint(args[0]), Msg: fmt.Sprintf(format, args...)}
}

// invalidatedError is the error for START_REPLICATION refused because the
// slot was invalidated: what happened, and what to do.
// The server's detail says why: it fell behind max_slot_wal_keep_size,
// stayed idle past idle_replication_slot_timeout (18), or, on a standby,
// lost catalog rows it needed (rows_removed) or wal_level logical.
func invalidatedError(slot string, err error) error {
	return &SlotError{Slot: slot, Err: err, Msg: fmt.Sprintf("start replication on slot %s: %v\n"+
		"replication slot %s has been invalidated%s: "+
		"changes were lost and caches may be stale; %s, flush the affected keys, and restart", slot, err, slot, serverDetail(err), dropSlotHint(slot))}
}

// serverDetail is " (DETAIL)" from the server's error, or empty.
func serverDetail(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Detail != "" {
		return " (" + strings.TrimSuffix(pgErr.Detail, ".") + ")"
	}
	return ""
}

// EnsureSlot creates the permanent logical replication slot slot with the
// pgoutput plugin, unless it exists. conn must be opened with
// replication=database (see ReplicationURL). A slot that exists is checked
// with SlotInfo.Check: one with another plugin, in another database,
// temporary or lost is an error.
func EnsureSlot(ctx context.Context, conn *pgconn.PgConn, slot string) (created bool, err error) {
	created, _, err = ensureSlot(ctx, conn, slot, false)
	return created, err
}

// ensureSlot is EnsureSlot, and creates the slot with the failover option
// when failover is true (PostgreSQL 17 and later). It returns the slot
// found when it created none.
func ensureSlot(ctx context.Context, conn *pgconn.PgConn, slot string, failover bool) (created bool, info SlotInfo, err error) {
	if !ValidSlotName(slot) {
		// CREATE_REPLICATION_SLOT takes the name unquoted.
		return false, info, &SlotError{Slot: slot, Msg: fmt.Sprintf("create replication slot %q: a slot name is 1 to 63 lowercase letters, digits and underscores", slot)}
	}
	if failover {
		// pglogrepl has no failover option: the command, as PostgreSQL 17
		// documents it.
		_, err = conn.Exec(ctx, "CREATE_REPLICATION_SLOT "+slot+" LOGICAL pgoutput (SNAPSHOT 'nothing', FAILOVER true)").ReadAll()
	} else {
		_, err = pglogrepl.CreateReplicationSlot(ctx, conn, slot, "pgoutput",
			pglogrepl.CreateReplicationSlotOptions{SnapshotAction: "NOEXPORT_SNAPSHOT"})
	}
	if err == nil {
		return true, info, nil
	}
	createErr := err

	// The slot exists, or the server refused for another reason: a
	// standby refuses to create any slot once its primary's wal_level is
	// below logical, and has invalidated the one that exists. Check that
	// the slot is ours to use. A walsender in replication=database mode
	// runs plain SQL through the simple protocol.
	results, err := conn.Exec(ctx, fmt.Sprintf(slotQuery, "'"+slot+"'")).ReadAll()
	if err != nil {
		return false, info, fmt.Errorf("read slot %s: %w", slot, err)
	}
	if len(results) != 1 || len(results[0].Rows) != 1 {
		if sqlState(createErr) != codeDuplicateObject {
			return false, info, fmt.Errorf("create replication slot %s: %w", slot, createErr)
		}
		return false, info, fmt.Errorf("read slot %s: it was dropped while being checked", slot)
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
		return false, info, fmt.Errorf("read slot %s: %w", slot, err)
	}
	if err := info.Check(database); err != nil {
		return false, info, err
	}
	if sqlState(createErr) != codeDuplicateObject {
		return false, info, fmt.Errorf("create replication slot %s: %w", slot, createErr)
	}
	return false, info, nil
}

// DropSlot drops slot if it exists in the current database, whatever its
// state, and reports whether it did. A walsender still streaming from it is
// terminated first, but only when the drop fails because of it (SQLSTATE
// 55006); it retries for up to ten seconds while the walsender goes.
func DropSlot(ctx context.Context, conn *pgx.Conn, slot string) (dropped bool, err error) {
	return dropSlot(ctx, conn, slot, false)
}

// DropLostSlot is DropSlot for a slot whose wal_status is lost: a slot
// that can still stream is left alone, and dropped is false.
func DropLostSlot(ctx context.Context, conn *pgx.Conn, slot string) (dropped bool, err error) {
	return dropSlot(ctx, conn, slot, true)
}

func dropSlot(ctx context.Context, conn *pgx.Conn, slot string, onlyLost bool) (dropped bool, err error) {
	const drop = `
SELECT pg_drop_replication_slot(s.slot_name)
FROM pg_replication_slots s
WHERE s.slot_name = $1 AND s.database = current_database() AND (NOT $2 OR to_jsonb(s)->>'wal_status' = 'lost')`
	deadline := time.Now().Add(10 * time.Second)
	for {
		tag, err := conn.Exec(ctx, drop, slot, onlyLost)
		if err == nil {
			return tag.RowsAffected() > 0, nil
		}
		if !SlotActive(err) || time.Now().After(deadline) {
			return false, fmt.Errorf("drop replication slot %s: %w", slot, err)
		}
		if _, err := conn.Exec(ctx, `
SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
WHERE slot_name = $1 AND active_pid IS NOT NULL`, slot); err != nil {
			return false, fmt.Errorf("terminate the walsender on replication slot %s: %w", slot, err)
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// EnsureSlot is EnsureSlot on the stream's connection and slot. Call it
// before Start. With Config.Failover, on PostgreSQL 17 and later, it also
// makes the slot a failover slot: see ensureFailover.
func (s *Stream) EnsureSlot(ctx context.Context) (created bool, err error) {
	failover := s.cfg.Failover && serverMajor(s.conn.ParameterStatus("server_version")) >= 17
	created, info, err := ensureSlot(ctx, s.conn, s.cfg.Slot, failover)
	if err != nil || !failover {
		return created, err
	}
	s.ensureFailover(ctx, created, info)
	return created, nil
}

// CreateTemporarySlot creates the stream's slot as a temporary logical
// pgoutput slot, which the server drops when the connection ends. It starts
// at the current WAL position: only transactions that commit after it are
// streamed. Use it for a look at the stream that must leave nothing behind,
// never for the daemon's own slot. Call it before Start.
func (s *Stream) CreateTemporarySlot(ctx context.Context) error {
	_, err := pglogrepl.CreateReplicationSlot(ctx, s.conn, s.cfg.Slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Temporary: true, SnapshotAction: "NOEXPORT_SNAPSHOT"})
	if err != nil {
		return fmt.Errorf("create temporary replication slot %s: %w", s.cfg.Slot, err)
	}
	return nil
}

// DropSlot drops the stream's slot over the replication protocol
// (DROP_REPLICATION_SLOT). Call it before Start, or after the stream has
// stopped.
func (s *Stream) DropSlot(ctx context.Context) error {
	if err := pglogrepl.DropReplicationSlot(ctx, s.conn, s.cfg.Slot, pglogrepl.DropReplicationSlotOptions{}); err != nil {
		return fmt.Errorf("drop replication slot %s: %w", s.cfg.Slot, err)
	}
	return nil
}

// TerminateSlotHolder ends the backend pid when it is the walsender that
// holds slot, and waits up to ten seconds for the slot to be released. It
// reports whether it ended one. Use it for a walsender whose client has
// given up on its connection, which the server would otherwise keep until
// its wal_sender_timeout. The role needs to be the walsender's, or a member
// of pg_signal_backend.
func TerminateSlotHolder(ctx context.Context, conn *pgx.Conn, slot string, pid uint32) (bool, error) {
	var ended bool
	err := conn.QueryRow(ctx, `
SELECT coalesce(bool_or(pg_terminate_backend(active_pid)), false) FROM pg_replication_slots
WHERE slot_name = $1 AND active_pid = $2`, slot, int64(pid)).Scan(&ended)
	if err != nil {
		return false, fmt.Errorf("terminate the walsender %d on replication slot %s: %w", pid, slot, err)
	}
	if !ended {
		return false, nil
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var held bool
		err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active_pid = $2)`,
			slot, int64(pid)).Scan(&held)
		if err != nil {
			return true, fmt.Errorf("read replication slot %s: %w", slot, err)
		}
		if !held || time.Now().After(deadline) {
			return true, nil
		}
		select {
		case <-ctx.Done():
			return true, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// CurrentDatabase returns the name of the database conn is connected to,
// where the slot of a logical replication connection to the same URL lives.
func CurrentDatabase(ctx context.Context, conn *pgx.Conn) (string, error) {
	var name string
	if err := conn.QueryRow(ctx, `SELECT current_database()`).Scan(&name); err != nil {
		return "", fmt.Errorf("read the current database: %w", err)
	}
	return name, nil
}

// Identity names the database a slot lives in: the server's system
// identifier, which every physical copy of it keeps (a standby promoted in
// a failover, a base backup restored) and no other server has, and the
// database's name.
type Identity struct {
	SystemID string // pg_control_system().system_identifier, in decimal
	Database string
}

// ReadIdentity returns the identity of the database conn is connected to.
// Any role may read it.
func ReadIdentity(ctx context.Context, conn *pgx.Conn) (Identity, error) {
	var id Identity
	err := conn.QueryRow(ctx, `SELECT system_identifier::text, current_database() FROM pg_control_system()`).Scan(&id.SystemID, &id.Database)
	if err != nil {
		return Identity{}, fmt.Errorf("read the server's system identifier: %w", err)
	}
	return id, nil
}
