// Package daemon wires the three stages together and runs them for as long
// as it takes:
//
//	replication.Stream  -> events, in WAL order
//	mapping.Mapper      -> commands for each row change
//	standbyGate.wait    -> with Config.Replicas, until the standbys replayed the batch (standbys.go)
//	invalidator.Apply   -> Redis, checked command by command, on every target
//	redeleter           -> the re-deletes of redelete_after rules, sent when due (redelete.go)
//	Stream.Ack          -> the transaction's end LSN, only after every target said yes
//	                       and its re-deletes are sent
//
// It decides what is fatal: a bad rule or schema stops the daemon before it
// streams; a lost connection to PostgreSQL or Redis never does.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pg-invalidator/pg-invalidator/mapping"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// Config is everything Run needs. The command line builds it, from the
// rules file (see package config), its flags and the environment.
type Config struct {
	Rules       *mapping.Rules
	PostgresURL string
	Slot        string // zero means replication.DefaultSlot
	Publication string // zero means replication.DefaultPublication
	Logger      *slog.Logger

	// Targets are the Redis deployments to invalidate, each applying every
	// transaction before it is acknowledged. Run needs at least one, unless
	// DryRun; a dry run connects to none.
	Targets []Target

	// MaxBatch is how many pending commands force a flush to Redis even while
	// more data is waiting, or in the middle of a large transaction. Zero
	// means 4096. It bounds memory whatever the size of a transaction.
	MaxBatch int
	// Replicas names the PostgreSQL standbys, by their application_name in
	// the primary's pg_stat_replication, that must have replayed a
	// transaction before its commands are sent: applications that read
	// from them cannot cache an old row after the delete. Empty: none.
	Replicas []string
	// ReplicaTimeout is how long a standby may hold commands back before
	// it is given up on until it catches up. Zero means
	// DefaultReplicaTimeout.
	ReplicaTimeout time.Duration
	// Visibility says when a batch of commands waits, before it goes to
	// Redis, until the transactions that caused it are visible on the
	// primary (see visibility.go): VisibilityOn, VisibilityAuto (while the
	// server has synchronous_standby_names set) or VisibilityOff. Zero
	// means VisibilityAuto: docs/consistency.md says why.
	Visibility string
	// VisibilityTimeout is how long a transaction that is not visible may
	// hold its batch back; past it the batch is applied, and applied again
	// once the transaction is visible. Zero means
	// DefaultVisibilityTimeout.
	VisibilityTimeout time.Duration
	// RedeleteLimit is how many re-deletes (rules with redelete_after) may
	// wait before the daemon stops reading the stream until some are sent.
	// Zero means DefaultRedeleteLimit.
	RedeleteLimit int
	// StatusInterval is passed to replication.Config; zero means its default.
	StatusInterval time.Duration
	// Timeout is how long the replication connection may stay silent, the
	// counterpart of PostgreSQL's wal_receiver_timeout: after half of it
	// with nothing received, a status update asks the server for a reply;
	// after all of it the connection is dropped and the daemon reconnects,
	// as after any connection error. It also sets the TCP keepalives and
	// the connect timeout of every connection to PostgreSQL, and bounds
	// each heartbeat. Zero means 30s (replication.DefaultTimeout).
	Timeout time.Duration
	// PrimaryURL, when not empty, is the primary, and PostgresURL a hot
	// standby that the daemon decodes on (PostgreSQL 16 and later): the
	// slot lives on the standby, and the daemon writes on the primary what
	// a standby cannot take: heartbeats and canaries, the publication, and
	// the running-transactions record a slot being created on a standby
	// waits for (pg_log_standby_snapshot). See standby.go.
	PrimaryURL string
	// NoStreaming, when true, asks for pgoutput protocol 1: a transaction
	// reaches the daemon whole, after its commit. False: on PostgreSQL 14
	// and later, a transaction larger than DecodingWorkMem is streamed
	// while it runs, mapped as it comes, and applied at its commit
	// (protocol 2, streaming on; see streamed.go).
	NoStreaming bool
	// DecodingWorkMem is the walsender's logical_decoding_work_mem on the
	// replication connection: past it, a transaction is streamed (or, with
	// NoStreaming, spilled to disk on the server). Zero means
	// DefaultDecodingWorkMem.
	DecodingWorkMem string
	// NoFailoverSlot, when true, creates the slot without the failover
	// option. False: on PostgreSQL 17 and later the slot is a failover
	// slot, which standbys with sync_replication_slots = on keep a copy
	// of (see replication/failover.go).
	NoFailoverSlot bool
	// StreamMemory bounds, in bytes, the memory the commands of one
	// streamed transaction hold before its Del keys go to a temporary file
	// (see streamedTx). Zero means 4 MB.
	StreamMemory int
	// ShutdownGrace is how long a batch in flight may take to finish after
	// ctx ends. Zero means 2s.
	ShutdownGrace time.Duration
	// MaxBackoff caps the delay between reconnection attempts. Zero means 10s.
	MaxBackoff time.Duration

	// MetricsAddr is the host:port that serves /metrics, /healthz and
	// /readyz. Zero means none: no listener, and no polling for them.
	MetricsAddr string
	// ReadyRedisWithin is how recently Redis must have answered for /readyz
	// to say ready. Zero means 30s.
	ReadyRedisWithin time.Duration
	// SlotPollInterval is how often the slot's wal_status and safe_wal_size
	// are read for /metrics. Zero means 10s.
	SlotPollInterval time.Duration
	// CatalogPollInterval is how often the catalog is read to notice that a
	// rule table was swapped, renamed or dropped, that its replica identity
	// was weakened, or that a partition of it was truncated, detached or
	// dropped (see coverage.go). Zero means 10s.
	CatalogPollInterval time.Duration
	// Heartbeat is how often a logical decoding message is written so that
	// the slot moves even when keepalives stop coming, and the canary goes
	// round. Zero means 10s.
	Heartbeat time.Duration
	// ProgressInterval is how often the daemon says how far behind it is
	// while it is behind, and how far a long pattern scan got (a TRUNCATE's,
	// or a resync's flush). Zero means 10s.
	ProgressInterval time.Duration
	// BehindBytes and BehindTime say when the daemon counts as behind: the
	// slot trails the server's WAL by BehindBytes or more, or the oldest
	// commit not yet applied is BehindTime old or older. Zero means 64 MB
	// and 10s.
	BehindBytes int64
	BehindTime  time.Duration
	// CanaryKey is the Redis key of the end-to-end canary, set and deleted
	// in every target on every heartbeat; "<slot>" in it stands for Slot
	// (see CanaryKey). Zero means DefaultCanaryKey.
	CanaryKey string
	// NoCanary, when true, turns the canary off: heartbeats carry none, and
	// /readyz cannot see a stalled path. False: on, with PostgreSQL 14 and
	// later (pgoutput passes no messages before).
	NoCanary bool
	// Reload, when not nil, asks for the rules to be re-read with LoadRules,
	// validated against the live schema and swapped in between
	// transactions. The command line sends on it on SIGHUP.
	Reload <-chan struct{}
	// LoadRules re-reads the rules file for a reload. Nil disables reloads.
	LoadRules func() (*mapping.Rules, error)

	// Resync, when true, recovers from a lost slot (invalidated, or gone
	// while the daemon ran) instead of stopping: the slot is dropped and
	// created anew, every key the rules can render is flushed as a TRUNCATE
	// would flush it, and streaming goes on. False: a lost slot is fatal.
	Resync bool
	// DryRun, when true, streams from a temporary slot and prints each
	// transaction's commands to DryRunOut instead of applying them. It
	// connects to neither Redis nor the real slot, and changes nothing in
	// the database. False: run for real.
	DryRun bool
	// DryRunOut receives the JSON lines of a dry run. Nil means os.Stdout.
	DryRunOut io.Writer
}

func (c *Config) setDefaults() {
	if c.Slot == "" {
		c.Slot = replication.DefaultSlot
	}
	if c.Publication == "" {
		c.Publication = replication.DefaultPublication
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = 4096
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = 2 * time.Second
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 10 * time.Second
	}
	if c.Timeout == 0 {
		c.Timeout = replication.DefaultTimeout
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = 10 * time.Second
	}
	if c.ReadyRedisWithin == 0 {
		c.ReadyRedisWithin = 30 * time.Second
	}
	if c.ReplicaTimeout == 0 {
		c.ReplicaTimeout = DefaultReplicaTimeout
	}
	if c.DecodingWorkMem == "" {
		c.DecodingWorkMem = DefaultDecodingWorkMem
	}
	if c.StreamMemory == 0 {
		c.StreamMemory = streamMemory
	}
	if c.Visibility == "" {
		c.Visibility = VisibilityAuto
	}
	if c.VisibilityTimeout == 0 {
		c.VisibilityTimeout = DefaultVisibilityTimeout
	}
	if c.CatalogPollInterval == 0 {
		c.CatalogPollInterval = 10 * time.Second
	}
	if c.SlotPollInterval == 0 {
		c.SlotPollInterval = 10 * time.Second
	}
	if c.ProgressInterval == 0 {
		c.ProgressInterval = 10 * time.Second
	}
	if c.BehindBytes == 0 {
		c.BehindBytes = 64 << 20
	}
	if c.BehindTime == 0 {
		c.BehindTime = 10 * time.Second
	}
}

// ConfigError lists every problem found, before anything is created, in
// the rules, the live schema, or the server's and the role's prerequisites.
// The daemon refuses to start on it; retrying cannot help.
type ConfigError struct {
	Problems []error
}

func (e *ConfigError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.Error()
	}
	return strings.Join(lines, "\n")
}

// Check verifies, without starting replication or changing anything, what
// run verifies before it creates anything: the server's prerequisites
// (version, wal_level, a free slot and WAL sender, the daemon's own slot
// counting as free), the role's right to replicate and to read the rule
// tables, and the rules against the live schema. It connects once and fails
// fast: a connection error is returned as is, problems as one
// *ConfigError. It returns what it found on the server either way.
func Check(ctx context.Context, cfg Config) (replication.Server, error) {
	cfg.setDefaults()
	conn, err := connect(ctx, cfg)
	if err != nil {
		return replication.Server{}, err
	}
	defer conn.Close(context.Background())
	return verify(ctx, conn, cfg, cfg.Slot)
}

// connect opens an ordinary connection to PostgreSQL, with TCP keepalives
// and a connect timeout from cfg.Timeout.
func connect(ctx context.Context, cfg Config) (*pgx.Conn, error) {
	return replication.ConnectSQL(ctx, cfg.PostgresURL, cfg.Timeout)
}

// connectPrimary opens an ordinary connection to the primary: PrimaryURL
// when the daemon decodes on a standby, else the server it streams from.
func connectPrimary(ctx context.Context, cfg Config) (*pgx.Conn, error) {
	if cfg.PrimaryURL == "" {
		return connect(ctx, cfg)
	}
	return replication.ConnectSQL(ctx, cfg.PrimaryURL, cfg.Timeout)
}

// verify checks everything that retrying cannot fix before anything is
// created: the server's prerequisites for streaming from slot (empty: a new
// slot), the connecting role's rights on the rule tables (and to see the
// standbys' positions, when cfg.Replicas names some), and the rules
// against the live schema. Every problem found is in one *ConfigError, the
// server's first.
func verify(ctx context.Context, conn *pgx.Conn, cfg Config, slot string) (replication.Server, error) {
	rules := cfg.Rules
	srv, problems, err := replication.ServerProblems(ctx, conn, slot)
	if err != nil {
		return srv, err
	}
	if srv.VersionNum < replication.MinServerVersion {
		// The catalog queries below need a supported version.
		return srv, &ConfigError{Problems: problems}
	}
	switch {
	case srv.InRecovery && cfg.PrimaryURL == "":
		problems = append(problems, &replication.PrerequisiteError{
			Msg: "the server is a hot standby: the daemon can decode there (PostgreSQL 16 and later), but writes its heartbeats, canaries and publication on the primary, and knows of none",
			Fix: "set [postgres] primary_url (or PRIMARY_DATABASE_URL, or --primary) to the primary, or point url at the primary"})
	case !srv.InRecovery && cfg.PrimaryURL != "":
		problems = append(problems, &replication.PrerequisiteError{
			Msg: "primary_url is set, which is for decoding on a standby, but url names a server that is not one",
			Fix: "remove primary_url, or point url at a hot standby of that primary"})
	}
	roleProblems, err := replication.RoleProblems(ctx, conn, rules.Tables())
	if err != nil {
		return srv, err
	}
	problems = append(problems, roleProblems...)
	if len(cfg.Replicas) > 0 {
		problem, err := replication.StandbyRoleProblem(ctx, conn)
		if err != nil {
			return srv, err
		}
		if problem != nil {
			problems = append(problems, problem)
		}
	}
	tables, err := replication.DescribeTables(ctx, conn, rules.Tables())
	if err != nil {
		return srv, fmt.Errorf("describe rule tables: %w", err)
	}
	problems = append(problems, rules.CheckSchema(tables)...)
	if len(problems) > 0 {
		return srv, &ConfigError{Problems: problems}
	}
	return srv, nil
}

// checkSchema validates rules against the live schema: the check a reload
// makes before new rules take over.
func checkSchema(ctx context.Context, conn *pgx.Conn, rules *mapping.Rules) error {
	tables, err := replication.DescribeTables(ctx, conn, rules.Tables())
	if err != nil {
		return fmt.Errorf("describe rule tables: %w", err)
	}
	if problems := rules.CheckSchema(tables); len(problems) > 0 {
		return &ConfigError{Problems: problems}
	}
	return nil
}

// Run checks the server's and the role's prerequisites and the rules
// against the live schema, makes sure the publication and slot exist, and
// streams until ctx ends. It returns nil after a clean shutdown, a
// *ConfigError when the prerequisites, the rules or the schema are wrong
// (before it has created anything), and another error only when something
// cannot be fixed by retrying.
//
// Run owns every goroutine it starts (the stream's reader, the heartbeat,
// the catalog watch, the reload watcher, the metrics server and its pollers): they all end
// with it, and Run returns only once they have.
func Run(ctx context.Context, cfg Config) error {
	cfg.setDefaults()
	if cfg.DryRun {
		return dryRun(ctx, cfg)
	}
	log := cfg.Logger

	redis, err := newFanout(cfg)
	if err != nil {
		return err
	}
	defer redis.Close() // last: after every goroutine that uses the targets has ended

	// Every goroutine Run starts is on wg and ends with ctx, which Run
	// cancels on its way out, whether ctx ended or an error stopped it.
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	mapper := mapping.NewMapper(cfg.Rules)
	m := newMetrics(cfg.Rules, mapper, redis)
	var c *canary
	if !cfg.NoCanary {
		c = newCanary(CanaryKey(cfg.CanaryKey, cfg.Slot))
		m.canary = c
		m.addReadyCheck(func(now time.Time) []string { return c.notReady(now, cfg.ReadyRedisWithin) })
	}
	if cfg.MetricsAddr != "" {
		if err := serveMetrics(ctx, &wg, cfg, m, redis); err != nil {
			return err
		}
	}

	var added []string // rule tables prepare added to a publication that existed
	if err := retry(ctx, cfg, "prepare postgres", func() error {
		var err error
		added, err = prepare(ctx, cfg)
		return err
	}); err != nil {
		return ignoreCanceled(ctx, err)
	}
	if err := retry(ctx, cfg, "connect to redis", func() error { return redis.Ping(ctx) }); err != nil {
		return ignoreCanceled(ctx, err)
	}
	ectx, cancelEvictions := context.WithTimeout(ctx, 5*time.Second)
	logServers(ectx, log, redis)
	warnEvictions(ectx, log, cfg.Rules, redis) // incr keys that Redis may evict
	cancelEvictions()

	redel := newRedeleter(redis, cfg.RedeleteLimit, cfg.MaxBatch)
	p := newPipeline(cfg, mapper, m, newRedisSink(redis, redel), redel, redis)
	defer p.gate.close()
	defer p.vis.close()
	p.canary = c

	wg.Go(func() { heartbeat(ctx, cfg, c, redis, p.stopping) })
	// The catalog watch's first reading is taken before streaming starts,
	// so that every change after it is noticed; tables added to an existing
	// publication at start get their keys flushed by it. It also tells the
	// visibility gate whether synchronous standbys are named.
	later := &flushRedeletes{targets: redis, log: log, wg: &wg}
	p.later = later
	watch := newCatalogWatch(cfg, m.cover, redis, added)
	watch.later = later
	watch.onSyncStandbys = p.vis.syncStandbys
	watch.streaming = m.streaming.Load
	watch.poll(ctx)
	wg.Go(func() { watch.run(ctx) })
	wg.Go(func() { m.reportLag(ctx, cfg) })
	if cfg.Reload != nil && cfg.LoadRules != nil {
		wg.Go(func() { p.watchReloads(ctx, cfg.Rules) })
	}
	err = retry(ctx, cfg, "stream", func() error {
		err := p.session(ctx)
		if err != nil && retryable(err) && !replication.SlotActive(err) && ctx.Err() == nil { // a standby waiting for the slot is not reconnecting
			m.reconnects.Inc()
		}
		return err
	})
	return ignoreCanceled(ctx, err)
}

// prepare checks the prerequisites and the schema, then makes sure the
// publication exists and holds every rule table. It creates nothing when a
// check fails. It returns the rule tables it added to a publication that
// existed: their changes until now were not streamed.
func prepare(ctx context.Context, cfg Config) ([]string, error) {
	conn, err := connect(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	srv, err := verify(ctx, conn, cfg, cfg.Slot)
	if err != nil {
		return nil, err
	}
	cfg.Logger.Info("postgres is ready for logical decoding", "server", srv.String())
	if w := srv.SlotTimeoutWarning(); w != "" {
		cfg.Logger.Warn(w)
	}
	created, added, err := ensurePublication(ctx, cfg, conn, cfg.Rules.Tables())
	if err != nil {
		return nil, err
	}
	if created {
		cfg.Logger.Info("publication created", "publication", cfg.Publication, "tables", cfg.Rules.Tables())
		return nil, nil
	}
	if len(added) > 0 {
		cfg.Logger.Info("tables added to publication", "publication", cfg.Publication, "tables", added)
	}
	return added, nil
}

func ignoreCanceled(ctx context.Context, err error) error {
	if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return nil
	}
	return err
}
