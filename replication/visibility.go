package replication

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// A transaction is streamed once its commit record is flushed. Other
// sessions see its changes only later, once the backend has left the proc
// array: after it waited for its synchronous standbys
// (synchronous_standby_names, with synchronous_commit on or remote_apply),
// and after a moment's scheduling in any case. Until then its xid is in
// the xip list of every snapshot taken, and a reader reads the old row.
// Snapshot reads that list.

// Snapshot is what pg_current_snapshot() says at one moment: every xid
// before Xmin has ended, none from Xmax on had begun, and Running are the
// xids in between still in progress. The values are xid8 (epoch and xid).
type Snapshot struct {
	Xmin, Xmax uint64
	Running    []uint64 // sorted
}

// CurrentSnapshot reads pg_current_snapshot() on conn, outside any
// transaction, so that it is taken now. Any role may run it, on a primary
// and on a standby.
func CurrentSnapshot(ctx context.Context, conn *pgx.Conn) (Snapshot, error) {
	var text string
	if err := conn.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&text); err != nil {
		return Snapshot{}, fmt.Errorf("read pg_current_snapshot(): %w", err)
	}
	return ParseSnapshot(text)
}

// ParseSnapshot parses a pg_snapshot's text form, "xmin:xmax:xip,xip,...".
func ParseSnapshot(text string) (Snapshot, error) {
	parts := strings.Split(text, ":")
	if len(parts) != 3 {
		return Snapshot{}, fmt.Errorf("parse snapshot %q: want xmin:xmax:xip", text)
	}
	var s Snapshot
	var err error
	if s.Xmin, err = strconv.ParseUint(parts[0], 10, 64); err != nil {
		return Snapshot{}, fmt.Errorf("parse snapshot %q: xmin: %w", text, err)
	}
	if s.Xmax, err = strconv.ParseUint(parts[1], 10, 64); err != nil {
		return Snapshot{}, fmt.Errorf("parse snapshot %q: xmax: %w", text, err)
	}
	if parts[2] != "" {
		for f := range strings.SplitSeq(parts[2], ",") {
			x, err := strconv.ParseUint(f, 10, 64)
			if err != nil {
				return Snapshot{}, fmt.Errorf("parse snapshot %q: xip: %w", text, err)
			}
			s.Running = append(s.Running, x)
		}
		slices.Sort(s.Running)
	}
	return s, nil
}

// Visible reports whether the changes of transaction xid, a 32-bit xid as
// pgoutput's Begin carries it whose commit was streamed, are visible to a
// snapshot taken after s: it began before s.Xmax and is not running in s.
// The 32-bit xid is compared with the xid8 values modulo 2^32, as
// PostgreSQL compares xids: valid for xids less than 2^31 apart, which
// holds for any transaction still in progress.
func (s Snapshot) Visible(xid uint32) bool {
	if Precedes(xid, uint32(s.Xmin)) {
		return true
	}
	if !Precedes(xid, uint32(s.Xmax)) {
		return false // not begun when s was taken: not known to have ended
	}
	for _, x := range s.Running {
		if uint32(x) == xid {
			return false
		}
	}
	return true
}

// Precedes reports whether xid a is older than xid b, in PostgreSQL's
// circular order of 32-bit xids.
func Precedes(a, b uint32) bool { return int32(a-b) < 0 }

// SynchronousStandbyNames returns the server's synchronous_standby_names:
// empty when no commit waits for a standby.
func SynchronousStandbyNames(ctx context.Context, conn *pgx.Conn) (string, error) {
	var names string
	if err := conn.QueryRow(ctx, `SELECT current_setting('synchronous_standby_names')`).Scan(&names); err != nil {
		return "", fmt.Errorf("read synchronous_standby_names: %w", err)
	}
	return names, nil
}
