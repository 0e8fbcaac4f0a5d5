package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/pg-invalidator/pg-invalidator/replication"
)

// DefaultReplicaTimeout is how long a standby may hold invalidations back
// before the daemon stops waiting for it (Config.ReplicaTimeout).
const DefaultReplicaTimeout = 5 * time.Second

// Polling the standbys' positions while a batch waits: the first poll at
// once, then after replicaPollMin, doubling up to replicaPollMax.
const (
	replicaPollMin = time.Millisecond
	replicaPollMax = 16 * time.Millisecond
)

// replicaQueryTimeout bounds connecting and reading the positions once,
// when replica_timeout is shorter.
const replicaQueryTimeout = 5 * time.Second

// gateQueryTimeout bounds one read of a gate (the standbys' positions, the
// primary's snapshot) whose timeout is gate: the longer of gate and
// replicaQueryTimeout, but never longer than silent, how long the primary
// may stay silent (Config.Timeout; zero: no bound).
func gateQueryTimeout(gate, silent time.Duration) time.Duration {
	d := max(gate, replicaQueryTimeout)
	if silent > 0 {
		d = min(d, silent)
	}
	return d
}

// standbyGate holds a batch of commands back until every standby named in
// Config.Replicas has replayed the transactions that caused them, so that
// an application reading from a standby cannot read the old row, after the
// delete, and cache it again. It reads the standbys' replay_lsn from the
// primary's pg_stat_replication, on an ordinary connection of its own, and
// only while a batch waits.
//
// A standby missing from pg_stat_replication, or still behind after
// Config.ReplicaTimeout, is given up on: the gate logs it once, counts it,
// shows it on /readyz, and waits for it no more, until a poll finds it has
// replayed a batch it was not waited for. Invalidation never stops for a
// standby.
//
// wait runs in a turn of the consumer, under its lock (see consumer.go);
// lagging is read by /readyz and /metrics.
type standbyGate struct {
	names   []string
	timeout time.Duration
	cfg     Config // how to connect
	log     *slog.Logger
	m       *metrics
	conn    *pgx.Conn // opened at the first wait, kept; nil after an error

	failing bool // the last read of positions failed; logged once
	// stopping is told of each failed read, which may say the server is
	// shutting down; nil: nobody listens.
	stopping *serverStopping

	mu      sync.Mutex        // protects lagging
	lagging map[string]string // standbys given up on, and why
}

func newStandbyGate(cfg Config, m *metrics) *standbyGate {
	return &standbyGate{names: cfg.Replicas, timeout: cfg.ReplicaTimeout, cfg: cfg, log: cfg.Logger, m: m,
		lagging: make(map[string]string)}
}

// wait returns once every standby not given up on has replayed lsn, or was
// given up on meanwhile, or ctx ends. It returns at once without standbys.
func (g *standbyGate) wait(ctx context.Context, lsn pglogrepl.LSN) error {
	if len(g.names) == 0 {
		return nil
	}
	start := time.Now()
	defer func() { g.m.replicaWait.Observe(time.Since(start).Seconds()) }()
	pause := replicaPollMin
	for {
		pos, err := g.positions(ctx)
		if err != nil && ctx.Err() != nil {
			return ctx.Err()
		}
		waiting := g.waiting(pos, err == nil, lsn)
		if len(waiting) == 0 {
			return nil
		}
		if time.Since(start) >= g.timeout {
			for _, name := range waiting {
				g.giveUp(name, g.why(name, pos, err))
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause):
		}
		pause = min(2*pause, replicaPollMax)
	}
}

// waiting returns the standbys, not given up on, that have not replayed
// lsn, and takes back those given up on that have. ok is false when the
// positions could not be read: every standby not given up on waits.
func (g *standbyGate) waiting(pos map[string]replication.Standby, ok bool, lsn pglogrepl.LSN) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var waiting []string
	for _, name := range g.names {
		s := pos[name]
		replayed := ok && s.Connected && s.Replay >= lsn
		if _, lagging := g.lagging[name]; lagging {
			if replayed {
				delete(g.lagging, name)
				g.m.replicaLagging.WithLabelValues(name).Set(0)
				g.log.Info("standby caught up; invalidations wait for it again", "standby", name)
			}
			continue
		}
		if !replayed {
			waiting = append(waiting, name)
		}
	}
	return waiting
}

// why says, for the log and /readyz, why standby name holds invalidations
// back.
func (g *standbyGate) why(name string, pos map[string]replication.Standby, err error) string {
	s := pos[name]
	switch {
	case err != nil:
		return "its position cannot be read: " + err.Error()
	case !s.Connected:
		return "it is not in the primary's pg_stat_replication (not connected, or another application_name)"
	case s.Replay == 0:
		return "its replay_lsn is NULL in pg_stat_replication (not reported yet, or the daemon's role needs pg_monitor to see it)"
	}
	return fmt.Sprintf("it has not replayed what it was waited for within %s (replay_lsn %s)", g.timeout, s.Replay)
}

// giveUp stops waiting for standby name, once per streak.
func (g *standbyGate) giveUp(name, why string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.lagging[name]; ok {
		return
	}
	g.lagging[name] = why
	g.m.replicaTimeouts.WithLabelValues(name).Inc()
	g.m.replicaLagging.WithLabelValues(name).Set(1)
	g.log.Warn("invalidating without waiting for a standby: applications reading from it may cache old rows until it catches up",
		"standby", name, "replica_timeout", g.timeout.String(), "why", why)
}

// notes returns a line for /readyz per standby given up on.
func (g *standbyGate) notes() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for _, name := range g.names {
		if why, ok := g.lagging[name]; ok {
			out = append(out, fmt.Sprintf("degraded: standby %s is not waited for: %s", name, why))
		}
	}
	return out
}

// positions reads the named standbys' positions, connecting first when
// needed. After an error the connection is closed; the next call opens a
// new one. A failure is logged once per streak.
func (g *standbyGate) positions(ctx context.Context) (map[string]replication.Standby, error) {
	pos, err := func() (map[string]replication.Standby, error) {
		// Not replica_timeout: a poll slower than that (connecting on a
		// loaded host) still says why a standby is given up on. But no
		// longer than the primary may stay silent (Config.Timeout): a
		// connection as silent as that is dropped, and the next poll
		// connects again, as the stream does. Before, a batch waited on a
		// silent connection up to replica_timeout, and with it the
		// session, which could not notice that its stream was silent too
		// (TestSilentPostgresPeerWhileGated: 22 s against a timeout of 2).
		qctx, cancel := context.WithTimeout(ctx, gateQueryTimeout(g.timeout, g.cfg.Timeout))
		defer cancel()
		if g.conn == nil {
			c, err := connectPrimary(qctx, g.cfg) // pg_stat_replication lists the standbys there
			if err != nil {
				return nil, err
			}
			g.conn = c
		}
		pos, err := replication.StandbyPositions(qctx, g.conn, g.names)
		if err != nil {
			g.close()
		}
		return pos, err
	}()
	if err != nil && g.stopping != nil {
		g.stopping.note(err)
	}
	switch {
	case err != nil && !g.failing && ctx.Err() == nil:
		g.failing = true
		g.log.Warn("cannot read the standbys' positions; invalidations wait for them up to replica_timeout", "err", err)
	case err == nil && g.failing:
		g.failing = false
		g.log.Info("reading the standbys' positions again")
	}
	return pos, err
}

// close closes the connection, if any.
func (g *standbyGate) close() {
	if g.conn != nil {
		g.conn.Close(context.Background())
		g.conn = nil
	}
}

// StandbyCheck is what check says of one standby named in Config.Replicas.
type StandbyCheck struct {
	Name string
	// Problem is empty when the standby is connected and its replay
	// position can be read; otherwise it says what is wrong. A standby
	// with a problem holds invalidations back for up to ReplicaTimeout,
	// then no more until it catches up.
	Problem string
}

// CheckStandbys reads, once, what the primary's pg_stat_replication says
// of each standby named in cfg.Replicas, for the check command: a typo in
// a name would otherwise show only as a standby given up on at the first
// transaction. It returns nothing when no standby is named.
func CheckStandbys(ctx context.Context, cfg Config) ([]StandbyCheck, error) {
	if len(cfg.Replicas) == 0 {
		return nil, nil
	}
	cfg.setDefaults()
	conn, err := connectPrimary(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	pos, err := replication.StandbyPositions(ctx, conn, cfg.Replicas)
	if err != nil {
		return nil, err
	}
	connected, err := replication.ConnectedStandbys(ctx, conn)
	if err != nil {
		return nil, err
	}
	out := make([]StandbyCheck, len(cfg.Replicas))
	for i, name := range cfg.Replicas {
		out[i].Name = name
		switch s := pos[name]; {
		case !s.Connected && len(connected) == 0:
			out[i].Problem = "not in the primary's pg_stat_replication, where no standby is connected"
		case !s.Connected:
			out[i].Problem = fmt.Sprintf("not in the primary's pg_stat_replication, whose standbys are named %s", strings.Join(connected, ", "))
		case s.Replay == 0:
			out[i].Problem = "its replay_lsn is NULL in pg_stat_replication (not reported yet)"
		}
	}
	return out, nil
}
