// Package invalidator speaks Redis for pg-invalidator: it runs the commands of
// a Batch as UNLINK of up to unlinkBatch keys (of one hash slot in a
// cluster), single-key INCR and INCRBY, and single-key Lua scripts for
// version keys, in bounded pipelines, and expands patterns with SCAN (never
// KEYS). It knows nothing of PostgreSQL: an LSN is a number the
// caller hands to the batch.
//
// What it guarantees: when Apply returns nil, Redis has applied every command
// of the batch, except one Redis rejected for good (see Apply). Apply checks
// every reply of a pipeline, resends only the commands that failed, and keeps
// retrying, with capped and jittered exponential backoff, for as long as Redis
// is unavailable; only the caller's context stops it. So the caller may
// acknowledge the batch's LSN once Apply returns nil, and must not before.
//
// Delivery is at least once. A batch replayed after a crash or a failed Apply
// runs its commands again: a DEL is harmless twice, an INCR counts twice. In
// normal operation an INCR runs once per key per transaction, even for a
// transaction applied across several batches; the one exception is a
// transaction that increments more than MaxOpenIncrs distinct keys (see
// Batch). go-redis never resends a pipeline
// by itself here (MaxRetries: -1, and MaxRedirects: -1 on a cluster), so a
// timeout does not double an INCR behind our back; a command whose reply was
// lost is still resent, and may run twice. A version key runs twice without
// harm: it is set only to an LSN later than the one it holds.
//
// It speaks to one server (mode single), to the master a set of sentinels
// names (mode sentinel), or to Redis Cluster (mode cluster). In a cluster,
// each pipeline goes to the master that owns its keys' slots; a command
// answered MOVED or ASK is resent, alone, where Redis said (an UNLINK of
// several keys answered ASK or TRYAGAIN, its slot half migrated, one key at
// a time), and patterns are scanned on every master, which must own every
// slot between them. The
// slot map is read again after the scans: a master that gained or imported
// a slot meanwhile is scanned again, and a slot migration in progress is
// waited for, until a reading finds the slots as the one before, so a key
// that moved with its slot during the scan is not missed. A scan cut short
// by a restart or a failover starts over on the new server process: a SCAN
// cursor means nothing to another. With
// Options.WaitReplicas, every pipeline ends with WAIT on the connection
// that carried its writes, and its commands count as applied only once the
// replicas the master has (up to WaitReplicas) acknowledged them; otherwise
// they are resent (see Options.WaitReplicas and Degraded).
package invalidator

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pg-invalidator/pg-invalidator/internal/redact"
)

// Options configures an Invalidator.
type Options struct {
	// URL is a redis:// or rediss:// URL, as go-redis's ParseURL reads it.
	// Mode single only.
	URL string
	// Mode is ModeSingle, ModeCluster or ModeSentinel; empty means
	// ModeSingle.
	Mode string
	// Addrs are the cluster's seed nodes (ModeCluster) or the sentinels
	// (ModeSentinel), as host:port. Nil in mode single.
	Addrs []string
	// MasterName is the master's name at the sentinels; ModeSentinel only.
	MasterName string
	// Username and Password authenticate with AUTH (an ACL user when
	// Username is set). Empty: the URL's, or none. In mode sentinel they are
	// the master's and replicas', not the sentinels'.
	Username, Password string
	// SentinelUsername and SentinelPassword authenticate to the sentinels
	// (an ACL user when SentinelUsername is set; the sentinels' requirepass
	// otherwise). Mode sentinel only. Empty: the sentinels are reached
	// without authentication.
	SentinelUsername, SentinelPassword string
	// TLS turns TLS on; in mode single a rediss:// URL does too. TLSCA is
	// a PEM file of the CAs to trust (empty: the system's), TLSCert and
	// TLSKey a client certificate and its key (empty: none), and
	// TLSServerName the name the server's certificate must hold (empty: the
	// host dialled). Setting any of them while TLS is off is an error.
	TLS                                   bool
	TLSCA, TLSCert, TLSKey, TLSServerName string
	// WaitReplicas, when above zero, ends every pipeline that writes with
	// WAIT n WaitTimeout on the same connection, so on the master that ran
	// its commands, where n is WaitReplicas or, on a master with fewer
	// replicas online, as many as it has (none: no WAIT). Fewer
	// acknowledgements than n, unless the master has lost replicas
	// meanwhile, or a failed WAIT, make Apply resend the pipeline's
	// commands, with backoff, until a WAIT confirms them: the master may have
	// failed over and lost them. An INCR may then count twice.
	//
	// A master with fewer replicas than WaitReplicas is degraded (see
	// Degraded): a write it acknowledged is held by fewer replicas, or only
	// by itself, until a replica attaches and syncs. A replica that attaches
	// later copies the master's data, so it holds those writes too; a
	// failover that promotes a replica that was not online meanwhile loses
	// them. A replica counts while it is in state online and acknowledged
	// the replication stream within the last 5s. The count of each master is
	// read with INFO replication, at most once a second, and again when a
	// WAIT comes back short. Zero: no WAIT.
	WaitReplicas int
	// WaitTimeout is how long one WAIT may block; zero means 1s.
	WaitTimeout time.Duration
	// Logger receives state changes; nil means slog.Default().
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the wait before a retry: the n-th wait
	// is random in [0, min(MaxBackoff, MinBackoff·2ⁿ)). Zero means 50ms and 5s.
	MinBackoff, MaxBackoff time.Duration
	// ScanCount is the COUNT hint of each SCAN for a pattern; zero means 1000.
	ScanCount int
	// PipelineSize is the most commands sent in one round trip, an UNLINK
	// of many keys counting as one; zero means 1000.
	PipelineSize int
	// ProgressInterval is how often a pattern scan that is still running
	// logs how far it got: keys scanned, keys changed, time spent. Zero
	// means 10s.
	ProgressInterval time.Duration
}

// Invalidator runs batches of commands against Redis: one server, a
// sentinel-managed master, or a cluster.
type Invalidator struct {
	client         redis.UniversalClient // single, or cluster
	single         *redis.Client         // mode single or sentinel; nil in a cluster
	cluster        *redis.ClusterClient  // mode cluster; nil otherwise
	log            *slog.Logger
	url            string   // raw, for redaction only
	passwords      []string // Options.Password and SentinelPassword, for redaction only
	addr           string   // host:port, or the topology, for logs
	waitReplicas   int      // 0: no WAIT
	waitTimeout    time.Duration
	minBackoff     time.Duration
	maxBackoff     time.Duration
	scanCount      int64
	pipeSize       int
	unlinkKeys     int           // the most keys of one UNLINK: unlinkBatch, or 1 in a test that compares
	progressEvery  time.Duration // how often a running pattern scan logs its progress
	replicas       replicaSet    // how many replicas WAIT asks for, per master
	sentinelMaster *dialedAddr   // mode sentinel: where the master is; nil otherwise
	// scanPage reads one SCAN page and the server's run_id: the function
	// scanPage, wrapped by tests only.
	scanPage func(ctx context.Context, m *redis.Client, cursor uint64, match string, count int64) ([]string, uint64, string, error)

	// mu protects the fields below, and the since and lastErr of every
	// call. Each Apply takes a call from idle, or makes one, puts it in
	// active while it runs, and back in idle when it returns: Waiting reads
	// active.
	mu        sync.Mutex
	idle      []*call   // calls no Apply uses now, kept for the next: empty at first
	active    []*call   // the calls of the Applys in progress, in no order; empty: none
	down      bool      // an attempt failed, and Redis was not logged available again since
	downSince time.Time // when down last became true

	stats counters
}

// New checks opts and builds a client for its mode: it parses the URL,
// reads the TLS files and resolves nothing else. It does not connect: see
// Ping. Errors name the setting at fault and never contain a password.
func New(opts Options) (*Invalidator, error) {
	inv := &Invalidator{
		log:           opts.Logger,
		url:           opts.URL,
		passwords:     []string{opts.Password, opts.SentinelPassword},
		waitReplicas:  opts.WaitReplicas,
		waitTimeout:   opts.WaitTimeout,
		minBackoff:    opts.MinBackoff,
		maxBackoff:    opts.MaxBackoff,
		scanCount:     int64(opts.ScanCount),
		pipeSize:      opts.PipelineSize,
		unlinkKeys:    unlinkBatch,
		progressEvery: opts.ProgressInterval,
		scanPage:      scanPage,
	}
	if inv.waitReplicas < 0 {
		return nil, fmt.Errorf("redis wait_replicas %d: want zero or more", inv.waitReplicas)
	}
	if inv.waitTimeout <= 0 {
		inv.waitTimeout = defaultWaitTimeout
	}
	if err := inv.newClient(opts); err != nil {
		return nil, err
	}
	if inv.log == nil {
		inv.log = slog.Default()
	}
	inv.replicas = replicaSet{want: inv.waitReplicas, log: inv.log, addrOf: inv.masterAddr,
		masters: make(map[string]*masterReplicas)}
	if inv.minBackoff <= 0 {
		inv.minBackoff = 50 * time.Millisecond
	}
	if inv.maxBackoff <= 0 {
		inv.maxBackoff = 5 * time.Second
	}
	inv.maxBackoff = max(inv.maxBackoff, inv.minBackoff)
	if inv.scanCount <= 0 {
		inv.scanCount = 1000
	}
	if inv.pipeSize <= 0 {
		inv.pipeSize = 1000
	}
	if inv.progressEvery <= 0 {
		inv.progressEvery = 10 * time.Second
	}
	return inv, nil
}

// Ping checks once that Redis answers, every master of a cluster; it does
// not retry. With Options.WaitReplicas, it also reads how many replicas each
// master has (see Degraded), and fails when it cannot.
func (inv *Invalidator) Ping(ctx context.Context) error {
	ping := func(ctx context.Context, c *redis.Client) error {
		if err := c.Ping(ctx).Err(); err != nil {
			return err
		}
		if inv.waitReplicas > 0 { // keeps Degraded true while no batch comes
			if _, err := inv.replicas.waitFor(ctx, c, false); err != nil {
				return err
			}
		}
		return nil
	}
	var err error
	if inv.cluster != nil {
		err = inv.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			if err := ping(ctx, c); err != nil {
				return fmt.Errorf("%s: %w", c.Options().Addr, err)
			}
			return nil
		})
	} else {
		err = ping(ctx, inv.single)
	}
	if err != nil {
		err = inv.redactErr(err)
		if inv.sentinelMaster != nil && strings.Contains(err.Error(), "sentinels") &&
			(strings.Contains(err.Error(), "NOAUTH") || strings.Contains(err.Error(), "WRONGPASS")) {
			err = fmt.Errorf("%w (the sentinels' own credentials are sentinel_username and sentinel_password_env or sentinel_password_file)", err)
		}
		return fmt.Errorf("ping redis %s: %w", inv.addr, err)
	}
	return nil
}

// Addr describes where Redis is, for logs: host:port in mode single, the
// sentinels and master name, or the cluster's seed nodes.
func (inv *Invalidator) Addr() string { return inv.addr }

// redactErr hides the passwords Redis was given in err's text, and puts
// the text on one line: go-redis joins the error of each sentinel, one a
// line, and they are often the same.
func (inv *Invalidator) redactErr(err error) error {
	err = redact.Secrets(redact.Error(err, inv.url), inv.passwords...)
	if err == nil || !strings.Contains(err.Error(), "\n") {
		return err
	}
	var lines []string
	for line := range strings.Lines(err.Error()) {
		line = strings.TrimSpace(line)
		if line != "" && !slices.ContainsFunc(lines, func(l string) bool { return strings.HasSuffix(l, line) }) {
			lines = append(lines, line)
		}
	}
	return oneLineError{msg: strings.Join(lines, "; "), err: err}
}

// oneLineError is an error whose text was put on one line.
type oneLineError struct {
	msg string
	err error
}

func (e oneLineError) Error() string { return e.msg }

// Unwrap keeps errors.Is and errors.As working.
func (e oneLineError) Unwrap() error { return e.err }

// Close closes the client's connections.
func (inv *Invalidator) Close() error { return inv.client.Close() }
