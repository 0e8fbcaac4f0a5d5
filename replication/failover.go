package replication

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pg-invalidator/pg-invalidator/internal/redact"
)

// Failover slots (PostgreSQL 17 and later). A logical slot with the
// failover option is copied to the physical standbys that run with
// sync_replication_slots = on, and survives their promotion with its
// position, so the daemon streams on after a failover with nothing missed
// and nothing flushed. The option costs nothing where no standby
// synchronizes slots.
//
// A copy is only a temporary one until the primary's slot has moved past
// the standby's catalog horizon; a failover in that window loses the slot.
// A new slot crosses it when the primary logs a running-transactions
// record, which it does on its own every 15 s or so (bgwriter), and at once
// with pg_log_standby_snapshot(); the daemon's next acknowledgement then
// moves the slot past it.

// ensureFailover makes the stream's slot a failover slot after
// ensureSlot: a slot it found without the option gets it
// (ALTER_REPLICATION_SLOT), and a slot it created or altered has the
// standbys' horizon moved at once. Neither can stop the daemon, which
// streams as well from a slot without the option: a failure is logged.
func (s *Stream) ensureFailover(ctx context.Context, created bool, info SlotInfo) {
	log := s.cfg.Logger
	if !created {
		if info.Failover {
			return
		}
		_, err := s.conn.Exec(ctx, "ALTER_REPLICATION_SLOT "+s.cfg.Slot+" (FAILOVER true)").ReadAll()
		if err != nil {
			log.Warn("could not make the replication slot a failover slot; it streams, but a PostgreSQL failover loses it",
				"slot", s.cfg.Slot, "err", err)
			return
		}
		log.Info("replication slot made a failover slot: standbys with sync_replication_slots = on keep a copy", "slot", s.cfg.Slot)
	}
	// Simple query protocol: a walsender in replication=database mode
	// runs SQL. The function is for superusers unless granted; without it
	// the server logs the same record on its own within about 15 s.
	if _, err := s.conn.Exec(ctx, "SELECT pg_log_standby_snapshot()").ReadAll(); err != nil {
		log.Debug("pg_log_standby_snapshot() failed; standbys get a usable copy of the slot within about 15 s instead",
			"slot", s.cfg.Slot, "err", err)
	}
}

// StandbySlotsProblem checks synchronized_standby_slots (PostgreSQL 17
// and later): every slot it names must be a physical slot on this server.
// A name without a slot makes every logical walsender wait for ever, with
// a server WARNING as the only sign: nothing reaches the daemon. A standby
// made with pg_basebackup inherits its primary's setting, which names a
// slot that does not exist on it once it is promoted. It returns nil when
// all is well or the server has no such setting, and a *PrerequisiteError
// with the fix otherwise.
func StandbySlotsProblem(ctx context.Context, conn *pgx.Conn) (problem, err error) {
	var setting string
	var missing []string
	err = conn.QueryRow(ctx, `
WITH named AS (
  SELECT btrim(n) AS name
  FROM unnest(string_to_array(coalesce(current_setting('synchronized_standby_slots', true), ''), ',')) AS n
  WHERE btrim(n) <> '')
SELECT coalesce(current_setting('synchronized_standby_slots', true), ''),
       ARRAY(SELECT name FROM named
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots s
                                               WHERE s.slot_name = named.name AND s.slot_type = 'physical')
             ORDER BY name)`).Scan(&setting, &missing)
	if err != nil {
		return nil, fmt.Errorf("read synchronized_standby_slots: %w", err)
	}
	if len(missing) == 0 {
		return nil, nil
	}
	return &PrerequisiteError{
		Msg: fmt.Sprintf("synchronized_standby_slots = '%s' names %s, which is not a physical replication slot on this server: "+
			"logical decoding waits for it for ever, and no change reaches the daemon "+
			"(a standby promoted from a pg_basebackup keeps its old primary's setting)", setting, strings.Join(missing, ", ")),
		Fix: fmt.Sprintf("ALTER SYSTEM SET synchronized_standby_slots = '%s'; SELECT pg_reload_conf(); "+
			"(name only the physical slots of this server's standbys, or none)", strings.Join(without(strings.Split(setting, ","), missing), ",")),
	}, nil
}

// without returns the trimmed names of names that are not in drop.
func without(names, drop []string) []string {
	var out []string
	for _, n := range names {
		n = strings.TrimSpace(n)
		if n != "" && !slices.Contains(drop, n) {
			out = append(out, n)
		}
	}
	return out
}

// FailoverCopy is what one standby holds of a failover slot.
type FailoverCopy struct {
	Addr string // host:port, as the URL names it
	// Ready is true when the standby's copy is synced and no longer
	// temporary: a failover to it now keeps the slot.
	Ready bool
	// State says what the standby holds, for a message: "usable",
	// "temporary", "missing" or "not synced".
	State string
	// Problems are the standby's settings that slot synchronization
	// needs and it lacks, each with its fix.
	Problems []string
	Err      error // the standby could not be read; State is empty
}

// FailoverCopies reads the copy of slot on every standby that url names:
// the other hosts of a multi-host URL, which are the servers a failover
// would promote ("host=a,b"; a URL of one host names none). Each is
// connected to in turn with the URL's user, password and database, and
// read if it is in recovery; the primary among them is left out.
func FailoverCopies(ctx context.Context, url, slot string, timeout time.Duration) ([]FailoverCopy, error) {
	base, err := pgconn.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse postgres url %s: %w", redact.URL(url), redact.Error(err, url))
	}
	hosts := append([]*pgconn.FallbackConfig{{Host: base.Host, Port: base.Port, TLSConfig: base.TLSConfig}}, base.Fallbacks...)
	if len(hosts) < 2 {
		return nil, nil
	}
	var out []FailoverCopy
	for _, h := range hosts {
		c := FailoverCopy{Addr: net.JoinHostPort(h.Host, strconv.Itoa(int(h.Port)))}
		standby, err := readCopy(ctx, base, h, slot, timeout, &c)
		switch {
		case err != nil:
			c.Err = redact.Error(err, url)
		case !standby:
			continue
		}
		out = append(out, c)
	}
	return out, nil
}

// readCopy connects to one host of base and reads its copy of slot.
func readCopy(ctx context.Context, base *pgconn.Config, h *pgconn.FallbackConfig, slot string, timeout time.Duration, c *FailoverCopy) (standby bool, err error) {
	cfg := base.Copy()
	cfg.Host, cfg.Port, cfg.TLSConfig, cfg.Fallbacks = h.Host, h.Port, h.TLSConfig, nil
	cfg.ValidateConnect = nil // any server: the standbys are the point
	cfg.ConnectTimeout = timeout
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	// pg_settings leaves out primary_conninfo for a role that may not read
	// it (it may hold a password): unknown, then, and not judged.
	res := conn.ExecParams(ctx, `
SELECT pg_is_in_recovery()::text,
       coalesce((SELECT CASE WHEN coalesce((to_jsonb(s)->>'synced')::bool, false) IS NOT TRUE THEN 'not synced'
                             WHEN s.temporary THEN 'temporary' ELSE 'usable' END
                 FROM pg_replication_slots s WHERE s.slot_name = $1), 'missing'),
       coalesce(current_setting('sync_replication_slots', true), ''),
       current_setting('hot_standby_feedback'),
       current_setting('primary_slot_name'),
       (SELECT (setting ~ 'dbname\s*=')::text FROM pg_settings WHERE name = 'primary_conninfo')`,
		[][]byte{[]byte(slot)}, nil, nil, nil).Read()
	if res.Err != nil {
		return false, res.Err
	}
	if len(res.Rows) != 1 {
		return false, fmt.Errorf("read the slot's copy: %d rows", len(res.Rows))
	}
	row := res.Rows[0]
	c.State = string(row[1])
	c.Ready = c.State == "usable"
	c.Problems = copyProblems(string(row[2]), string(row[3]), string(row[4]), row[5])
	return string(row[0]) == "true", nil
}

// copyProblems judges a standby's settings for slot synchronization;
// hasDBName is nil when primary_conninfo could not be read.
func copyProblems(syncSlots, feedback, primarySlot string, hasDBName []byte) []string {
	var out []string
	if syncSlots != "on" {
		out = append(out, "sync_replication_slots is off, so it keeps no copy of the slot; fix: ALTER SYSTEM SET sync_replication_slots = on; SELECT pg_reload_conf();")
	}
	if feedback != "on" {
		out = append(out, "hot_standby_feedback is off, which slot synchronization needs; fix: ALTER SYSTEM SET hot_standby_feedback = on; SELECT pg_reload_conf();")
	}
	if primarySlot == "" {
		out = append(out, "primary_slot_name is empty, which slot synchronization needs; fix: create a physical slot on the primary (SELECT pg_create_physical_replication_slot('standby1')), set primary_slot_name to it, and list it in the primary's synchronized_standby_slots")
	}
	if string(hasDBName) == "false" {
		out = append(out, "primary_conninfo names no dbname, which slot synchronization needs; fix: add dbname=<the application database> to primary_conninfo, then SELECT pg_reload_conf();")
	}
	return out
}

// StandbySlotsUnset returns a warning, with its fix, when the primary's
// synchronized_standby_slots is empty (or the server is older than 17):
// the daemon may then be sent commits a standby has not received. Empty
// when it names standby slots.
func StandbySlotsUnset(ctx context.Context, conn *pgx.Conn) (string, error) {
	var s string
	err := conn.QueryRow(ctx, "SELECT coalesce(current_setting('synchronized_standby_slots', true), '')").Scan(&s)
	if err != nil {
		return "", fmt.Errorf("read synchronized_standby_slots: %w", err)
	}
	if s != "" {
		return "", nil
	}
	return "synchronized_standby_slots is empty: the daemon may be sent commits a standby has not received, and a failover that loses them makes it flush every rule's keys; " +
		"fix: ALTER SYSTEM SET synchronized_standby_slots = '<the standbys' physical slots>'; SELECT pg_reload_conf();", nil
}
