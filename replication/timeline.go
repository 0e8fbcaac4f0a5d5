package replication

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"
)

// Timeline returns the server's current timeline (IDENTIFY_SYSTEM). A
// promotion starts a new one. Call it before Start.
func (s *Stream) Timeline(ctx context.Context) (uint32, error) {
	id, err := pglogrepl.IdentifySystem(ctx, s.conn)
	if err != nil {
		return 0, fmt.Errorf("identify system: %w", err)
	}
	return uint32(id.Timeline), nil
}

// TimelineEnd returns where timeline old ended in the history of the
// server's current timeline now: the position at which the server's WAL
// left it (the switchpoint of TIMELINE_HISTORY). WAL written on old past
// that position is not in this server's history: a failover lost it.
// found is false when old is not an ancestor of now. Call it before Start,
// with old < now.
func (s *Stream) TimelineEnd(ctx context.Context, now, old uint32) (end pglogrepl.LSN, found bool, err error) {
	h, err := pglogrepl.TimelineHistory(ctx, s.conn, int32(now))
	if err != nil {
		return 0, false, fmt.Errorf("read the history of timeline %d: %w", now, err)
	}
	return timelineEnd(h.Content, old)
}

// timelineEnd reads a timeline history file: one line per ancestor,
// "parent TLI <tab> switchpoint <tab> reason", and comments after "#".
func timelineEnd(history []byte, old uint32) (pglogrepl.LSN, bool, error) {
	sc := bufio.NewScanner(bytes.NewReader(history))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		tli, err := strconv.ParseUint(f[0], 10, 32)
		if err != nil {
			return 0, false, fmt.Errorf("timeline history line %q: %w", sc.Text(), err)
		}
		if uint32(tli) != old {
			continue
		}
		lsn, err := pglogrepl.ParseLSN(f[1])
		if err != nil {
			return 0, false, fmt.Errorf("timeline history line %q: %w", sc.Text(), err)
		}
		return lsn, true, nil
	}
	return 0, false, sc.Err()
}
