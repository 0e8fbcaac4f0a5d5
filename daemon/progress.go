package daemon

import (
	"context"
	"math"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pg-invalidator/pg-invalidator/replication"
)

// lagSample is one reading of how far the slot trails the server.
type lagSample struct {
	at        time.Time
	server    uint64 // the server's WAL position
	confirmed uint64 // the slot's confirmed_flush_lsn
}

// reportLag says how far behind the daemon is, while it is behind: every
// cfg.ProgressInterval it reads the server's WAL position and the slot's
// confirmed position, and while the slot trails by cfg.BehindBytes or more,
// or its oldest unapplied commit is cfg.BehindTime old or older, it logs
// one line with the lag, the rate it is catching up at and an estimate of
// the time left. It logs once more when the lag falls back under both. It
// says nothing while no session streams. It runs until ctx ends, on an
// ordinary connection that it keeps open.
func (m *metrics) reportLag(ctx context.Context, cfg Config) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	t := time.NewTicker(cfg.ProgressInterval)
	defer t.Stop()
	var (
		prev    lagSample // the last sample; zero: none yet
		start   lagSample // the first sample that was behind; zero: not behind
		failing bool
	)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !m.streaming.Load() {
			// A standby waiting for the slot, or a daemon between sessions:
			// another daemon may be the one behind.
			prev, start = lagSample{}, lagSample{}
			continue
		}
		lag, err := readLag(ctx, &conn, cfg)
		if err != nil {
			if ctx.Err() == nil && !failing {
				cfg.Logger.Debug("read the slot's lag", "err", err)
			}
			failing = true
			continue
		}
		failing = false
		if !lag.Exists {
			prev, start = lagSample{}, lagSample{}
			continue
		}
		now := time.Now()
		cur := lagSample{at: now, server: uint64(lag.Server), confirmed: uint64(lag.Confirmed)}
		bytes := lag.Bytes()
		secs, known := m.secondsBehind(now, bytes)
		if bytes >= uint64(cfg.BehindBytes) || (known && secs >= cfg.BehindTime.Seconds()) {
			base := start
			if start.at.IsZero() {
				start, base = cur, prev // the rates of the first line are those since the sample before
			}
			cfg.Logger.Info("behind the server", lagAttrs(base, cur, secs, known)...)
		} else if !start.at.IsZero() {
			cfg.Logger.Info("caught up", "behind_bytes", bytes, "behind_seconds", round(secs, 1),
				"behind_for", now.Sub(start.at).Round(time.Second).String())
			start = lagSample{}
		}
		prev = cur
	}
}

// lagAttrs are the fields of a "behind the server" line: how far behind
// in bytes and seconds (absent when unknown), how fast the slot moved and
// the WAL grew since base, the first sample that was behind (absent
// without one), the rate the gap closes at, and the time left at that rate
// ("unknown" when it does not close).
func lagAttrs(base, cur lagSample, secs float64, known bool) []any {
	bytes := uint64(0)
	if cur.server > cur.confirmed {
		bytes = cur.server - cur.confirmed
	}
	attrs := []any{"behind_bytes", bytes}
	if known {
		attrs = append(attrs, "behind_seconds", round(secs, 1))
	}
	if base.at.IsZero() || !cur.at.After(base.at) {
		return append(attrs, "eta", "unknown")
	}
	dt := cur.at.Sub(base.at).Seconds()
	applied := float64(int64(cur.confirmed-base.confirmed)) / dt
	grown := float64(int64(cur.server-base.server)) / dt
	closing := applied - grown
	attrs = append(attrs, "applied_bytes_per_second", int64(applied), "wal_bytes_per_second", int64(grown),
		"catch_up_bytes_per_second", int64(closing))
	if closing <= 0 {
		return append(attrs, "eta", "unknown")
	}
	eta := time.Duration(float64(bytes) / closing * float64(time.Second))
	return append(attrs, "eta", eta.Round(time.Second).String())
}

// secondsBehind is how old the oldest commit not yet applied is: the
// oldest one received and pending, or else, when the stream has not
// reached the server's end, the one after the last applied, which is
// about as old as that. It is 0 when nothing trails the server (bytes 0,
// or a keepalive since the last commit and nothing pending), and unknown
// before any transaction was applied or received.
func (m *metrics) secondsBehind(now time.Time, bytes uint64) (float64, bool) {
	pending := m.pendingSince.Load()
	switch {
	case bytes == 0:
		return 0, true
	case pending != 0:
		return lagSeconds(now, pending), true
	case m.atEnd.Load():
		return 0, true
	}
	if last := m.lastApplied.Load(); last != 0 {
		return lagSeconds(now, last), true
	}
	return 0, false
}

func round(v float64, digits int) float64 {
	p := math.Pow10(digits)
	return math.Round(v*p) / p
}

// readLag reads the slot's lag on *conn, connecting first when *conn is
// nil; after an error *conn is closed and nil.
func readLag(ctx context.Context, conn **pgx.Conn, cfg Config) (replication.SlotLag, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if *conn == nil {
		c, err := connect(ctx, cfg)
		if err != nil {
			return replication.SlotLag{}, err
		}
		*conn = c
	}
	lag, err := replication.ReadSlotLag(ctx, *conn, cfg.Slot)
	if err != nil {
		(*conn).Close(context.Background())
		*conn = nil
		return replication.SlotLag{}, err
	}
	return lag, nil
}
