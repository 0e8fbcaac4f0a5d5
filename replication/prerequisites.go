package replication

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// MinServerVersion is the oldest PostgreSQL the daemon supports, as
// server_version_num: 13. It creates publications with
// publish_via_partition_root and reads pg_replication_slots.wal_status and
// safe_wal_size, which PostgreSQL 13 introduced. CI tests 15, 17 and 18
// (docs/postgresql.md#versions).
const MinServerVersion = 130000

// PrerequisiteError is one thing the server or the connecting role lacks
// for the daemon to stream, and how to fix it. Retrying cannot help: an
// operator must act.
type PrerequisiteError struct {
	Msg string // what is wrong
	Fix string // what to run or change
}

func (e *PrerequisiteError) Error() string { return e.Msg + "; fix: " + e.Fix }

// Server is what the prerequisite checks found on a server.
type Server struct {
	Version    string // server_version, such as "15.4 (Debian 15.4-1)"
	VersionNum int    // server_version_num, such as 150004
	WALLevel   string // wal_level; empty when the version is not supported (not read)

	MaxSlots int      // max_replication_slots
	Slots    []string // every replication slot on the server, by name
	// SlotExists is true when the daemon's own slot exists already: it needs
	// no free slot then.
	SlotExists bool

	// MaxSlotWALKeepSize is max_slot_wal_keep_size as the server shows it
	// ("-1": no limit): past it behind, the slot is invalidated.
	MaxSlotWALKeepSize string
	// IdleSlotTimeout is idle_replication_slot_timeout (PostgreSQL 18 and
	// later; empty before), such as "0" (off) or "1d": a slot nobody
	// streams from for that long is invalidated, so a daemon stopped for
	// longer loses its slot.
	IdleSlotTimeout string

	MaxWALSenders int // max_wal_senders
	// WALSenders counts the walsender processes, not counting one that
	// streams from the daemon's own slot (a previous or an active instance
	// of the daemon, which a standby replaces).
	WALSenders int

	// InRecovery is true on a hot standby (pg_is_in_recovery), where the
	// daemon decodes only from PostgreSQL 16 and with hot_standby_feedback
	// on; HotStandbyFeedback is that setting.
	InRecovery         bool
	HotStandbyFeedback string

	// Managed names the managed service the server's own settings give
	// away, such as "Amazon RDS or Aurora"; empty for none.
	Managed string
}

// managedService is a managed PostgreSQL, told by a setting only it
// defines, and how logical decoding is turned on there.
type managedService struct {
	setting string // a setting only this service defines
	name    string
	fix     string // how to get wal_level = logical
}

// managedServices are checked in order; the first whose setting exists wins.
var managedServices = []managedService{
	{"rds.logical_replication", "Amazon RDS or Aurora",
		"set rds.logical_replication = 1 in the DB parameter group (on Aurora, the DB cluster parameter group), then reboot"},
	{"cloudsql.logical_decoding", "Google Cloud SQL", "set the database flag cloudsql.logical_decoding = on, then restart"},
	{"azure.replication_support", "Azure Database for PostgreSQL single server", "set azure.replication_support = logical, then restart"},
	{"azure.extensions", "Azure Database for PostgreSQL flexible server", "set the server parameter wal_level = logical, then restart"},
}

// String sums up the server for a line of check's output.
func (s Server) String() string {
	out := fmt.Sprintf("PostgreSQL %s, wal_level %s, %d of %d replication slots in use, %d of %d WAL senders in use, max_slot_wal_keep_size %s",
		s.Version, s.WALLevel, len(s.Slots), s.MaxSlots, s.WALSenders, s.MaxWALSenders, s.MaxSlotWALKeepSize)
	if s.IdleSlotTimeout != "" {
		out += ", idle_replication_slot_timeout " + s.IdleSlotTimeout
	}
	if s.InRecovery {
		out += ", a hot standby"
	}
	return out
}

// SlotTimeoutWarning says, when idle_replication_slot_timeout is set, that
// a daemon stopped for longer loses its slot; empty otherwise.
func (s Server) SlotTimeoutWarning() string {
	if s.IdleSlotTimeout == "" || s.IdleSlotTimeout == "0" {
		return ""
	}
	return fmt.Sprintf("idle_replication_slot_timeout is %s: a daemon stopped for longer than that loses its slot, "+
		"and on_slot_lost then decides (stop, or flush every rule's keys); set it to 0, or keep the daemon's downtime shorter", s.IdleSlotTimeout)
}

// ServerProblems checks the server-wide prerequisites of streaming from
// slot: a supported version (MinServerVersion), wal_level logical, a free
// replication slot and a free WAL sender. slot is the daemon's own slot:
// when it exists it counts as available, and so does the walsender
// streaming from it. An empty slot means a new slot is needed whatever
// exists (a dry run's temporary slot). Each problem is a
// *PrerequisiteError; err is for a failure to read the server.
func ServerProblems(ctx context.Context, conn *pgx.Conn, slot string) (s Server, problems []error, err error) {
	err = conn.QueryRow(ctx, `SELECT current_setting('server_version_num')::int, current_setting('server_version')`).
		Scan(&s.VersionNum, &s.Version)
	if err != nil {
		return s, nil, fmt.Errorf("read server version: %w", err)
	}
	if s.VersionNum < MinServerVersion {
		return s, serverProblems(s), nil
	}
	settings := make([]string, len(managedServices))
	for i, m := range managedServices {
		settings[i] = m.setting
	}
	var managed []string
	// pg_stat_replication lists every walsender, streaming or not, to every
	// role (pg_stat_activity hides other roles' backend_type from a role
	// without pg_read_all_stats). A walsender of the daemon's own slot is
	// not counted: it is the daemon's, from before a restart, or the active
	// one a standby waits for.
	err = conn.QueryRow(ctx, `
SELECT ARRAY(SELECT s FROM unnest($2::text[]) AS s WHERE current_setting(s, true) IS NOT NULL),
       current_setting('wal_level'),
       current_setting('max_replication_slots')::int,
       current_setting('max_wal_senders')::int,
       current_setting('max_slot_wal_keep_size'),
       pg_is_in_recovery(),
       current_setting('hot_standby_feedback'),
       coalesce(current_setting('idle_replication_slot_timeout', true), ''),
       ARRAY(SELECT slot_name::text FROM pg_replication_slots ORDER BY slot_name),
       EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1),
       (SELECT count(*)::int FROM pg_stat_replication r
        WHERE r.pid IS DISTINCT FROM (SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1))`, slot, settings).
		Scan(&managed, &s.WALLevel, &s.MaxSlots, &s.MaxWALSenders, &s.MaxSlotWALKeepSize, &s.InRecovery, &s.HotStandbyFeedback, &s.IdleSlotTimeout, &s.Slots, &s.SlotExists, &s.WALSenders)
	if err != nil {
		return s, nil, fmt.Errorf("read replication settings: %w", err)
	}
	for _, m := range managedServices {
		if slices.Contains(managed, m.setting) {
			s.Managed = m.name
			break
		}
	}
	problems = serverProblems(s)
	standbySlots, err := StandbySlotsProblem(ctx, conn)
	if err != nil {
		return s, nil, err
	}
	if standbySlots != nil {
		problems = append(problems, standbySlots)
	}
	return s, problems, nil
}

// restart ends every fix that changes a setting only a restart applies.
const restart = "then restart PostgreSQL (a reload is not enough)"

// serverProblems judges what ServerProblems read.
func serverProblems(s Server) []error {
	if s.VersionNum < MinServerVersion {
		return []error{&PrerequisiteError{
			Msg: fmt.Sprintf("PostgreSQL %s is not supported: pg-invalidator needs PostgreSQL %d or later (for publish_via_partition_root and pg_replication_slots.wal_status)",
				s.Version, MinServerVersion/10000),
			Fix: fmt.Sprintf("upgrade the server to PostgreSQL %d or later (15, 17 and 18 are tested)", MinServerVersion/10000),
		}}
	}
	var problems []error
	if s.WALLevel != "logical" {
		p := &PrerequisiteError{
			Msg: fmt.Sprintf("wal_level is %s, but logical decoding needs logical", s.WALLevel),
			Fix: "as a superuser, run ALTER SYSTEM SET wal_level = logical; " + restart + ". " +
				"A managed service takes its own parameter instead, then a reboot: rds.logical_replication = 1 on Amazon RDS and Aurora, " +
				"cloudsql.logical_decoding = on on Google Cloud SQL, wal_level = logical as a server parameter on Azure flexible server " +
				"(azure.replication_support = logical on the retired single server)",
		}
		for _, m := range managedServices {
			if m.name == s.Managed {
				p.Fix = "this is " + m.name + ": " + m.fix
			}
		}
		problems = append(problems, p)
	}
	if s.InRecovery && s.VersionNum < 160000 {
		problems = append(problems, &PrerequisiteError{
			Msg: fmt.Sprintf("the server is a standby (pg_is_in_recovery), and PostgreSQL %s cannot decode on a standby: that needs 16 or later", s.Version),
			Fix: "point the daemon's url at the primary, or upgrade the standby to PostgreSQL 16 or later",
		})
	}
	if s.InRecovery && s.HotStandbyFeedback != "on" {
		problems = append(problems, &PrerequisiteError{
			Msg: "the server is a standby with hot_standby_feedback off: the primary may remove catalog rows the slot needs, and the standby then invalidates the slot (rows_removed)",
			Fix: "on the standby, run ALTER SYSTEM SET hot_standby_feedback = on; SELECT pg_reload_conf(); and give it a physical slot on the primary (primary_slot_name) so that the feedback holds across its restarts",
		})
	}
	if !s.SlotExists && len(s.Slots) >= s.MaxSlots {
		msg := fmt.Sprintf("no free replication slot: max_replication_slots is %d", s.MaxSlots)
		fix := fmt.Sprintf("raise the limit with ALTER SYSTEM SET max_replication_slots = %d; %s", len(s.Slots)+1, restart)
		if len(s.Slots) > 0 {
			msg += fmt.Sprintf(" and %s in use (%s)", plural(len(s.Slots), "slot is", "slots are"), listSome(s.Slots, 5))
			fix = fmt.Sprintf("drop a slot nobody uses with SELECT pg_drop_replication_slot('name'), or %s", fix)
		}
		problems = append(problems, &PrerequisiteError{Msg: msg, Fix: fix})
	}
	if s.WALSenders >= s.MaxWALSenders {
		msg := fmt.Sprintf("no free WAL sender: max_wal_senders is %d", s.MaxWALSenders)
		fix := fmt.Sprintf("raise the limit with ALTER SYSTEM SET max_wal_senders = %d; %s", s.WALSenders+1, restart)
		if s.WALSenders > 0 {
			msg += fmt.Sprintf(" and %s in use by other replication connections (standbys, subscribers, other consumers)",
				plural(s.WALSenders, "is", "are"))
			fix += "; or end a replication connection nobody needs (pg_stat_replication lists them)"
		}
		problems = append(problems, &PrerequisiteError{Msg: msg, Fix: fix})
	}
	return problems
}

// plural writes n and the singular or plural words after it.
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// listSome joins up to max names, saying how many more there are.
func listSome(names []string, max int) string {
	if len(names) <= max {
		return strings.Join(names, ", ")
	}
	return strings.Join(names[:max], ", ") + fmt.Sprintf(" and %d more", len(names)-max)
}
