// Package invalidator speaks Redis for pg-invalidator: it runs the commands of
// a Batch as single-key UNLINK, INCR and INCRBY, and single-key Lua scripts
// for version keys, in bounded pipelines, and expands patterns with SCAN
// (never KEYS). It knows nothing of PostgreSQL: an LSN is a number the
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
// answered MOVED or ASK is resent, alone, where Redis said, and patterns are
// scanned on every master. With Options.WaitReplicas, every pipeline ends
// with WAIT on the connection that carried its writes, and its commands
// count as applied only once enough replicas acknowledged them; otherwise
// they are resent (see Options.WaitReplicas).
package invalidator

import (
	"context"
	"fmt"
	"log/slog"
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
	// Username is set). Empty: the URL's, or none. The sentinels themselves
	// are reached without a password.
	Username, Password string
	// TLS turns TLS on; in mode single a rediss:// URL does too. TLSCA is
	// a PEM file of the CAs to trust (empty: the system's), TLSCert and
	// TLSKey a client certificate and its key (empty: none), and
	// TLSServerName the name the server's certificate must hold (empty: the
	// host dialled). Setting any of them while TLS is off is an error.
	TLS                                   bool
	TLSCA, TLSCert, TLSKey, TLSServerName string
	// WaitReplicas, when above zero, ends every pipeline that writes with
	// WAIT WaitReplicas WaitTimeout on the same connection, so on the master
	// that ran its commands. Fewer acknowledgements than WaitReplicas, or a
	// failed WAIT, make Apply resend the pipeline's commands, with backoff,
	// until a WAIT confirms them: the master may have failed over and lost
	// them. An INCR may then count twice. Zero: no WAIT.
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
	// PipelineSize is the most commands sent in one round trip; zero means 1000.
	PipelineSize int
}

// Invalidator runs batches of commands against Redis: one server, a
// sentinel-managed master, or a cluster.
type Invalidator struct {
	client       redis.UniversalClient // single, or cluster
	single       *redis.Client         // mode single or sentinel; nil in a cluster
	cluster      *redis.ClusterClient  // mode cluster; nil otherwise
	log          *slog.Logger
	url          string // raw, for redaction only
	password     string // Options.Password, for redaction only
	addr         string // host:port, or the topology, for logs
	waitReplicas int    // 0: no WAIT
	waitTimeout  time.Duration
	minBackoff   time.Duration
	maxBackoff   time.Duration
	scanCount    int64
	pipeSize     int

	mu        sync.Mutex // serializes Apply; protects the fields below
	down      bool       // the last attempt failed
	downSince time.Time
	ops       []op                     // scratch: the commands of one pipeline or SCAN page
	groups    map[*redis.Client]*group // scratch: ops by the master that serves them

	stats counters
}

// New checks opts and builds a client for its mode: it parses the URL,
// reads the TLS files and resolves nothing else. It does not connect: see
// Ping. Errors name the setting at fault and never contain a password.
func New(opts Options) (*Invalidator, error) {
	inv := &Invalidator{
		log:          opts.Logger,
		url:          opts.URL,
		password:     opts.Password,
		waitReplicas: opts.WaitReplicas,
		waitTimeout:  opts.WaitTimeout,
		minBackoff:   opts.MinBackoff,
		maxBackoff:   opts.MaxBackoff,
		scanCount:    int64(opts.ScanCount),
		pipeSize:     opts.PipelineSize,
		groups:       make(map[*redis.Client]*group),
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
	return inv, nil
}

// Ping checks once that Redis answers, every master of a cluster; it does
// not retry.
func (inv *Invalidator) Ping(ctx context.Context) error {
	var err error
	if inv.cluster != nil {
		err = inv.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			if err := c.Ping(ctx).Err(); err != nil {
				return fmt.Errorf("%s: %w", c.Options().Addr, err)
			}
			return nil
		})
	} else {
		err = inv.single.Ping(ctx).Err()
	}
	if err != nil {
		return fmt.Errorf("ping redis %s: %w", inv.addr, inv.redactErr(err))
	}
	return nil
}

// Addr describes where Redis is, for logs: host:port in mode single, the
// sentinels and master name, or the cluster's seed nodes.
func (inv *Invalidator) Addr() string { return inv.addr }

// redactErr hides the passwords Redis was given in err's text.
func (inv *Invalidator) redactErr(err error) error {
	return redact.Secrets(redact.Error(err, inv.url), inv.password)
}

// Close closes the client's connections.
func (inv *Invalidator) Close() error { return inv.client.Close() }
