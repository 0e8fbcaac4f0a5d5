package daemon

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
	"github.com/pg-invalidator/pg-invalidator/mapping"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// metrics is what the daemon tells Prometheus (health.go serves it, with
// what it tells a load balancer). The
// pipeline counts only what nobody else counts (transactions, row changes by
// table, latency, positions); everything the mapper and the invalidator count
// already is read from their Stats at scrape time, so the hot path pays for
// it once.
type metrics struct {
	reg *prometheus.Registry

	transactions prometheus.Counter
	rowChanges   *prometheus.CounterVec
	latency      prometheus.Histogram
	reconnects   prometheus.Counter
	resyncs      prometheus.Counter

	redeletesPending prometheus.Gauge
	redeletePauses   prometheus.Counter

	streamedTxs   prometheus.Counter
	streamedSpill prometheus.Counter

	visibilityWait     prometheus.Histogram
	visibilityWaits    prometheus.Counter
	visibilityTimeouts prometheus.Counter

	replicaWait     prometheus.Histogram
	replicaTimeouts *prometheus.CounterVec
	replicaLagging  *prometheus.GaugeVec
	// gate and vis are the pipeline's standby and visibility gates, whose
	// notes go on /readyz; nil before the pipeline is built, and gate
	// while no standby is named. The metrics server may already serve.
	gate atomic.Pointer[standbyGate]
	vis  atomic.Pointer[visibilityGate]

	rels    map[uint32]*relCounters // by Relation.ID; under the consumer's lock (see consumer)
	lastRel *relCounters            // the previous change's; under the consumer's lock
	commits []time.Time             // commit times of the transactions received and not yet applied; under the consumer's lock, or between sessions

	seen         atomic.Uint64 // highest server WAL position the stream has reported
	acked        atomic.Uint64 // highest position acknowledged, across sessions
	pendingSince atomic.Int64  // commit time (Unix ns) of the oldest transaction received and not applied; 0: none
	lastApplied  atomic.Int64  // commit time (Unix ns) of the last transaction applied; 0: none yet
	atEnd        atomic.Bool   // a keepalive came after the last commit received: the stream had reached the server's end
	streaming    atomic.Bool   // a session is streaming

	mapper  *mapping.Mapper
	targets fanout    // each knows when its Redis last answered
	cover   *coverage // the rule tables the catalog watch finds not covered; a dry run does not watch

	readyChecks []readyCheck // more reasons for /readyz (addReadyCheck); set before the metrics server starts
	canary      *canary      // the end-to-end canary; nil: off. Set before the metrics server starts

	slotMu sync.Mutex           // protects slot and copies
	slot   replication.SlotInfo // what the last poll of pg_replication_slots said; zero: unknown
	// copies are the standbys' copies of a failover slot, read with the
	// slot (see failover.go); nil when the slot is not one, or the URL
	// names no standby.
	copies []replication.FailoverCopy
}

// relCounters are the row change counters of one relation, by Op, so that
// counting a row costs no label lookup.
type relCounters struct {
	rel  *pginvalidator.Relation
	byOp [pginvalidator.OpTruncate + 1]prometheus.Counter
}

// walStatuses are the values of pg_replication_slots.wal_status.
var walStatuses = []string{"reserved", "extended", "unreserved", "lost"}

// actions are the label values of the action label, in pginvalidator.Action order.
var actions = []string{"del", "incr", "del_pattern", "incr_pattern", "version", "version_pattern"}

// latencyBuckets span a millisecond on one host to minutes behind a backlog.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}

func newMetrics(rules *mapping.Rules, mapper *mapping.Mapper, ts fanout) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		transactions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pg_invalidator_transactions_total",
			Help: "Transactions received from the replication stream (a replayed one counts again).",
		}),
		rowChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pg_invalidator_row_changes_total",
			Help: "Row changes received, by table (schema.table) and op (insert, update, delete, truncate).",
		}, []string{"table", "op"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pg_invalidator_commit_to_applied_seconds",
			Help:    "Time from a transaction's COMMIT on the server to Redis having applied its invalidations.",
			Buckets: latencyBuckets,
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pg_invalidator_reconnects_total",
			Help: "Replication sessions that ended with an error and were retried.",
		}),
		resyncs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pg_invalidator_resyncs_total",
			Help: "Lost replication slots recreated, with every rule's keys flushed (run --resync).",
		}),
		redeletesPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pg_invalidator_redeletes_pending",
			Help: "Re-deletes (rules with redelete_after) waiting for their time; each holds its transaction's acknowledgement back.",
		}),
		redeletePauses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pg_invalidator_redelete_pauses_total",
			Help: "Times reading from the stream paused because the re-deletes pending reached their limit, until some were sent.",
		}),
		streamedTxs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pg_invalidator_streamed_transactions_total",
			Help: "Transactions PostgreSQL streamed while they ran (larger than logical_decoding_work_mem), mapped as they came and handed to Redis at their commit.",
		}),
		streamedSpill: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pg_invalidator_streamed_spilled_bytes_total",
			Help: "Bytes of keys of streamed transactions written to a temporary file, past the memory one transaction may hold.",
		}),
		visibilityWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pg_invalidator_visibility_wait_seconds",
			Help:    "Time each batch of commands waited for its transactions to be visible on the primary (with visibility on, or auto and synchronous standbys).",
			Buckets: latencyBuckets,
		}),
		visibilityWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pg_invalidator_visibility_waits_total",
			Help: "Batches of commands that found a transaction of theirs streamed but not yet visible on the primary, and waited for it.",
		}),
		visibilityTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pg_invalidator_visibility_timeouts_total",
			Help: "Transactions still not visible on the primary after visibility_timeout: their commands were applied then, and again once they were visible.",
		}),
		replicaWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pg_invalidator_replica_wait_seconds",
			Help:    "Time each batch of commands waited for the standbys named in replicas to replay its transactions.",
			Buckets: latencyBuckets,
		}),
		replicaTimeouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pg_invalidator_replica_timeouts_total",
			Help: "Times a standby named in replicas was given up on: missing, or still behind after replica_timeout; invalidations stopped waiting for it until it caught up.",
		}, []string{"standby"}),
		replicaLagging: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pg_invalidator_replica_lagging",
			Help: "1 while a standby named in replicas is given up on (missing, or behind by more than replica_timeout) and invalidations do not wait for it, else 0.",
		}, []string{"standby"}),
		rels:    make(map[uint32]*relCounters),
		mapper:  mapper,
		targets: ts,
	}
	m.cover = newCoverage(rules, m.reg)
	// Every rule table shows up from the start, at zero.
	for _, table := range rules.Tables() {
		for _, op := range []pginvalidator.Op{pginvalidator.OpInsert, pginvalidator.OpUpdate, pginvalidator.OpDelete, pginvalidator.OpTruncate} {
			m.rowChanges.WithLabelValues(table, op.String())
		}
	}
	m.reg.MustRegister(m.transactions, m.rowChanges, m.latency, m.reconnects, m.resyncs, m.redeletesPending, m.redeletePauses,
		m.streamedTxs, m.streamedSpill, m.visibilityWait, m.visibilityWaits, m.visibilityTimeouts, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pg_invalidator_invisible_seconds",
			Help: "How long the oldest transaction streamed but not yet visible on the primary has waited (its commands held back, or applied past visibility_timeout and to apply again); 0: none.",
		}, func() float64 { return m.vis.Load().oldest(time.Now()).Seconds() }),
		m.replicaWait, m.replicaTimeouts, m.replicaLagging, scrapeCollector{m},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// rowChange counts one row change. A relation's counters are looked up by
// label once per Relation message, not per row.
func (m *metrics) rowChange(ch *pginvalidator.Change) {
	c := m.lastRel
	if c == nil || c.rel != ch.Rel {
		c = m.rels[ch.Rel.ID]
		if c == nil || c.rel != ch.Rel {
			c = &relCounters{rel: ch.Rel}
			table := ch.Rel.QualifiedName()
			for op := pginvalidator.OpInsert; op <= pginvalidator.OpTruncate; op++ {
				c.byOp[op] = m.rowChanges.WithLabelValues(table, op.String())
			}
			m.rels[ch.Rel.ID] = c
		}
		m.lastRel = c
	}
	if ch.Op <= pginvalidator.OpTruncate {
		c.byOp[ch.Op].Inc()
	}
}

// see records a WAL position the server has reached.
func (m *metrics) see(lsn pglogrepl.LSN) {
	if uint64(lsn) > m.seen.Load() {
		m.seen.Store(uint64(lsn))
	}
}

// committed records a transaction received in full.
func (m *metrics) committed(end pglogrepl.LSN, commitTime time.Time) {
	m.transactions.Inc()
	m.see(end)
	m.atEnd.Store(false)
	m.commits = append(m.commits, commitTime)
	if m.pendingSince.Load() == 0 {
		m.pendingSince.Store(commitTime.UnixNano())
	}
}

// keepalive records a keepalive: the server had nothing more to send.
func (m *metrics) keepalive(lsn pglogrepl.LSN) {
	m.see(lsn)
	m.atEnd.Store(true)
}

// applied records that Redis has applied every transaction received so far.
func (m *metrics) applied(now time.Time) {
	for _, t := range m.commits {
		m.latency.Observe(max(now.Sub(t).Seconds(), 0)) // clock skew between hosts
	}
	if len(m.commits) > 0 {
		m.lastApplied.Store(m.commits[len(m.commits)-1].UnixNano())
	}
	m.commits = m.commits[:0]
	m.pendingSince.Store(0)
}

// discard forgets the transactions of a failed session: the next session
// receives them again. They stay pending for the lag.
func (m *metrics) discard() { m.commits = m.commits[:0] }

// ack records the position acknowledged to the server.
func (m *metrics) ack(lsn pglogrepl.LSN) {
	if uint64(lsn) > m.acked.Load() {
		m.acked.Store(uint64(lsn))
	}
}

// lagSeconds is how long the oldest transaction received and not yet
// applied has been committed; 0 when none is pending.
func lagSeconds(now time.Time, pendingSince int64) float64 {
	if pendingSince == 0 {
		return 0
	}
	return max(now.Sub(time.Unix(0, pendingSince)).Seconds(), 0)
}

// lagBytes is how far the acknowledged position trails the server's.
func lagBytes(seen, acked uint64) float64 {
	if seen <= acked {
		return 0
	}
	return float64(seen - acked)
}

// batchBuckets turns the invalidator's per-bucket batch counts into
// Prometheus's cumulative buckets, keyed by upper bound.
func batchBuckets(st invalidator.Stats) map[float64]uint64 {
	buckets := make(map[float64]uint64, len(invalidator.BatchSizeBounds))
	var sum uint64
	for i, bound := range invalidator.BatchSizeBounds {
		sum += st.BatchSizes[i]
		buckets[float64(bound)] = sum
	}
	return buckets
}

var (
	keysRenderedDesc = prometheus.NewDesc("pg_invalidator_keys_rendered_total",
		"Keys and patterns the rules rendered from row changes, by action, after deduplication within each change.",
		[]string{"action"}, nil)
	keysSkippedDesc = prometheus.NewDesc("pg_invalidator_keys_skipped_total",
		"Keys not rendered, by reason: null (a placeholder column was NULL), unavailable (the stream did not send the value), unknown_column (the table has no such column).",
		[]string{"reason"}, nil)
	commandsDesc = prometheus.NewDesc("pg_invalidator_commands_total",
		"Redis commands applied, by action: UNLINK for del, INCR/INCRBY for incr, the version script for version, and for del_pattern, incr_pattern and version_pattern the keys SCAN found and unlinked, incremented or set; by target.",
		[]string{"action", "target"}, nil)
	versionKeptDesc = prometheus.NewDesc("pg_invalidator_version_keys_kept_total",
		"Version commands that left their key as it was, because it held the transaction's LSN or a later one already (a replayed transaction), by target.",
		[]string{"target"}, nil)
	redisErrorsDesc = prometheus.NewDesc("pg_invalidator_redis_errors_total",
		"Redis commands and SCAN calls that failed, whether retried or rejected for good, by target.", []string{"target"}, nil)
	redisRetriesDesc = prometheus.NewDesc("pg_invalidator_redis_retries_total",
		"Redis commands and SCAN calls sent again after a failure, by target.", []string{"target"}, nil)
	redisRejectedDesc = prometheus.NewDesc("pg_invalidator_redis_rejected_total",
		"Redis commands rejected for good (WRONGTYPE, not an integer, overflow), logged and skipped, by target.", []string{"target"}, nil)
	redeletesDesc = prometheus.NewDesc("pg_invalidator_redeletes_total",
		"Re-deletes sent (rules with redelete_after): UNLINKs of a key, or of each key a truncate's pattern found, sent again after the delay, by target.",
		[]string{"target"}, nil)
	redeletesFoundDesc = prometheus.NewDesc("pg_invalidator_redeletes_found_total",
		"Re-deletes that removed a key: a value cached again after the first delete, from a read before the change (a race repaired) or after it (a fresh value, deleted once more), by target.",
		[]string{"target"}, nil)
	targetUpDesc = prometheus.NewDesc("pg_invalidator_target_up",
		"1 when the target's last Apply or ping succeeded, else 0; a target at 0 holds the acknowledgement back.",
		[]string{"target"}, nil)
	batchDesc = prometheus.NewDesc("pg_invalidator_batch_commands",
		"Commands per batch applied to Redis.", nil, nil)
	lagBytesDesc = prometheus.NewDesc("pg_invalidator_replication_lag_bytes",
		"Server WAL position last reported by the stream minus the acknowledged position.", nil, nil)
	lagSecondsDesc = prometheus.NewDesc("pg_invalidator_replication_lag_seconds",
		"Age of the commit of the oldest transaction received and not yet applied to Redis; 0 when caught up.", nil, nil)
	ackedDesc = prometheus.NewDesc("pg_invalidator_acknowledged_lsn",
		"The last LSN acknowledged to PostgreSQL, as a number of bytes.", nil, nil)
	streamingDesc = prometheus.NewDesc("pg_invalidator_streaming",
		"1 while a replication session is streaming, else 0.", nil, nil)
	slotWALStatusDesc = prometheus.NewDesc("pg_invalidator_slot_wal_status",
		"1 for the slot's current wal_status in pg_replication_slots, 0 for the others; absent when unknown.",
		[]string{"status"}, nil)
	failoverReadyDesc = prometheus.NewDesc("pg_invalidator_failover_slot_ready",
		"1 when the standby holds a usable copy of the failover slot (synced, not temporary): a failover to it keeps the slot; 0 otherwise. One per standby the URL names.",
		[]string{"standby"}, nil)
	slotSafeWALSizeDesc = prometheus.NewDesc("pg_invalidator_slot_safe_wal_size_bytes",
		"Bytes of WAL that can still be written before the slot is in danger of being lost; absent when NULL (max_slot_wal_keep_size = -1) or unknown.",
		nil, nil)
)

// scrapeCollector reads the mapper's and the invalidator's Stats, the
// positions and the slot status when Prometheus scrapes.
type scrapeCollector struct{ m *metrics }

func (c scrapeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{keysRenderedDesc, keysSkippedDesc, commandsDesc, versionKeptDesc, redisErrorsDesc,
		redisRetriesDesc, redisRejectedDesc, redeletesDesc, redeletesFoundDesc, targetUpDesc, batchDesc, lagBytesDesc, lagSecondsDesc, ackedDesc, streamingDesc,
		slotWALStatusDesc, slotSafeWALSizeDesc, failoverReadyDesc, redisDegradedDesc, canarySecondsDesc, canaryPendingDesc} {
		ch <- d
	}
}

func (c scrapeCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}

	ms := m.mapper.Stats()
	for i, v := range []uint64{ms.Del, ms.Incr, ms.DelPattern, ms.IncrPattern, ms.Version, ms.VersionPattern} {
		counter(keysRenderedDesc, v, actions[i])
	}
	counter(keysSkippedDesc, ms.SkippedNull, "null")
	counter(keysSkippedDesc, ms.SkippedUnavailable, "unavailable")
	counter(keysSkippedDesc, ms.SkippedUnknownColumn, "unknown_column")

	for _, t := range m.targets {
		is := t.inv.Stats()
		for i, v := range []uint64{is.Del, is.Incr, is.DelPatternKeys, is.IncrPatternKeys, is.Version + is.VersionKept, is.VersionPatternKeys} {
			counter(commandsDesc, v, actions[i], t.name)
		}
		counter(versionKeptDesc, is.VersionKept, t.name)
		counter(redisErrorsDesc, is.Errors, t.name)
		counter(redisRetriesDesc, is.Retries, t.name)
		counter(redisRejectedDesc, is.Skipped, t.name)
		counter(redeletesDesc, is.Redeletes, t.name)
		counter(redeletesFoundDesc, is.RedeletesFound, t.name)
		gauge(targetUpDesc, boolValue(t.up.Load()), t.name)
	}
	collectDegraded(ch, m.targets)
	// Every target applies every batch: the first one's sizes stand for all.
	if len(m.targets) > 0 {
		is := m.targets[0].inv.Stats()
		ch <- prometheus.MustNewConstHistogram(batchDesc, is.Batches, float64(is.BatchCommands), batchBuckets(is))
	}

	now := time.Now()
	gauge(lagBytesDesc, lagBytes(m.seen.Load(), m.acked.Load()))
	gauge(lagSecondsDesc, lagSeconds(now, m.pendingSince.Load()))
	gauge(ackedDesc, float64(m.acked.Load()))
	gauge(streamingDesc, boolValue(m.streaming.Load()))
	collectCanary(ch, m.canary, now)

	m.slotMu.Lock()
	slot, copies := m.slot, m.copies
	m.slotMu.Unlock()
	for _, c := range copies {
		gauge(failoverReadyDesc, boolValue(c.Ready), c.Addr)
	}
	if slot.Exists && slot.WALStatus != "" {
		for _, s := range walStatuses {
			gauge(slotWALStatusDesc, boolValue(s == slot.WALStatus), s)
		}
		if slot.SafeWALSize >= 0 {
			gauge(slotSafeWALSizeDesc, float64(slot.SafeWALSize))
		}
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// pollSlot reads the slot's wal_status and safe_wal_size every
// cfg.SlotPollInterval on an ordinary connection, which it keeps open,
// until ctx ends.
func (m *metrics) pollSlot(ctx context.Context, cfg Config) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	t := time.NewTicker(cfg.SlotPollInterval)
	defer t.Stop()
	failing := false
	for {
		slot, err := readSlot(ctx, &conn, cfg)
		if err != nil && ctx.Err() == nil && !failing {
			cfg.Logger.Debug("read slot status for metrics", "err", err)
		}
		failing = err != nil
		copies := failoverCopies(ctx, cfg, slot)
		m.slotMu.Lock()
		m.slot, m.copies = slot, copies
		m.slotMu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// readSlot reads the slot on *conn, connecting first when *conn is nil;
// after an error *conn is closed and nil, and the slot is unknown.
func readSlot(ctx context.Context, conn **pgx.Conn, cfg Config) (replication.SlotInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if *conn == nil {
		c, err := connect(ctx, cfg)
		if err != nil {
			return replication.SlotInfo{}, err
		}
		*conn = c
	}
	slot, err := replication.SlotState(ctx, *conn, cfg.Slot)
	if err != nil {
		(*conn).Close(context.Background())
		*conn = nil
		return replication.SlotInfo{}, err
	}
	return slot, nil
}
