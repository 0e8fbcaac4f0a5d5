package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
	"github.com/pg-invalidator/pg-invalidator/mapping"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// Some catalog changes stop invalidation without a single row event: a
// rule table swapped for a new relation that the publication does not hold
// (ALTER TABLE ... RENAME, then CREATE TABLE ... (LIKE ...), as online
// schema-change tools do), renamed or dropped; a replica identity weakened
// under a rule that needs old values; and, under publish_via_partition_root,
// a leaf partition truncated, detached or dropped, or a table with rows
// attached. The catalog watch reads the catalog every
// Config.CatalogPollInterval, and at once when a row change arrives whose
// relation a rule table's name was bound to under another name; it
// compares each reading with the last:
//
//   - a name that resolves to a relation the publication does not stream is
//     added to it when this role may, and then the rules' keys of that table
//     are flushed as a TRUNCATE would flush them, since the changes made
//     before the ADD were never streamed; when the role may not, one error
//     gives the SQL to run, and the table is not covered until someone does;
//   - a name that resolves to no table (dropped, or renamed away) is not
//     covered: its rules match nothing. Its keys are flushed once, since its
//     rows are gone, or live on under a name no rule knows;
//   - a new relation the publication already streams (FOR ALL TABLES, or a
//     DBA ran the SQL), or a name back after it was gone, is covered again,
//     after a flush;
//   - a replica identity that no longer sends the old values a rule needs is
//     not covered until it is fixed, and then the table's keys are flushed,
//     since keys of old rows were skipped meanwhile;
//   - a leaf partition missing (detached or dropped), with a new
//     relfilenode (truncated, or rewritten by VACUUM FULL, CLUSTER or ALTER
//     TABLE), or new and not empty (attached with rows, whose keys may list
//     them as absent) has the rules' keys of its partitioned table flushed.
//
// Each change is logged once, when it happens, and counted in
// pg_invalidator_catalog_changes_total; a table that is not covered makes
// /readyz answer 503 and say why, until it is covered again.
//
// Changes made while no daemon runs produce no row event either, and the
// slot replays only row events. So every reading is saved in each Redis
// target (CatalogMarker), beside the slot's marker, and a daemon's first
// reading is compared with the one its predecessor saved, as with any
// other: a partition detached, or a table swapped, while the daemon was
// stopped is flushed when it starts. A Redis that was emptied holds no
// reading, and no stale key either.

// coverage is what the catalog watch knows about the rule tables, for
// /readyz and /metrics. The watch writes it; the pipeline shows it each row
// change's relation; a reload stores the new rules in it; /readyz reads it.
type coverage struct {
	rules atomic.Pointer[mapping.Rules] // the rules in force; a reload stores new ones once they are

	changes *prometheus.CounterVec // pg_invalidator_catalog_changes_total{table,change}

	// bound maps the OID each rule table's name resolved to at the last
	// reading to that name; nil before the first. The watch stores it; see
	// reads it.
	bound   atomic.Pointer[map[uint32]string]
	wake    chan struct{}           // asks the watch to read the catalog now; buffered, one request pending at most
	lastRel *pginvalidator.Relation // the relation see looked at last; under the consumer's lock (see consumer)

	mu       sync.Mutex        // protects problems and added
	problems map[string]string // why a rule table is not covered, by table; empty: all are
	added    []string          // rule tables a reload added to the publication, for the watch to flush; nil: none
}

// Change labels of pg_invalidator_catalog_changes_total.
const (
	changeSwapped   = "swapped"   // a new relation under the name, streamed now (added to the publication, or in it already); keys flushed
	changeAdded     = "added"     // a table new in the rules, added to the publication (at start or by a reload); keys flushed
	changeUncovered = "uncovered" // a new relation under the name that the publication does not stream, and this role may not add
	changeMissing   = "missing"   // the name resolves to no table: dropped, or renamed away; keys flushed
	changeRestored  = "restored"  // a table not covered before is streamed again, or its replica identity serves its rules again; keys flushed
	changeIdentity  = "identity"  // the replica identity no longer sends old values a rule needs
	changePartition = "partition" // a leaf partition truncated or rewritten, detached or dropped; keys flushed
)

func newCoverage(rules *mapping.Rules, reg prometheus.Registerer) *coverage {
	c := &coverage{
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pg_invalidator_catalog_changes_total",
			Help: "Catalog changes to rule tables that produce no row event, by table and change: swapped, added, uncovered, missing, restored, identity, partition.",
		}, []string{"table", "change"}),
		problems: make(map[string]string),
		wake:     make(chan struct{}, 1),
	}
	c.rules.Store(rules)
	// Every rule table shows up from the start, at zero.
	for _, t := range rules.Tables() {
		for _, change := range []string{changeSwapped, changeAdded, changeUncovered, changeMissing, changeRestored, changeIdentity, changePartition} {
			c.changes.WithLabelValues(t, change)
		}
	}
	reg.MustRegister(c.changes, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pg_invalidator_rule_tables_not_covered",
		Help: "Rule tables whose changes the daemon cannot invalidate now: not streamed by the publication, missing, or with a replica identity that hides old values. /readyz says which and why.",
	}, func() float64 {
		c.mu.Lock()
		defer c.mu.Unlock()
		return float64(len(c.problems))
	}))
	return c
}

// reasons returns why each rule table not covered is not, sorted by table;
// none when every rule table is covered.
func (c *coverage) reasons() []string {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, t := range slices.Sorted(maps.Keys(c.problems)) {
		out = append(out, c.problems[t])
	}
	return out
}

// setProblems replaces the reasons.
func (c *coverage) setProblems(problems map[string]string) {
	c.mu.Lock()
	c.problems = problems
	c.mu.Unlock()
}

// setRules stores rules just put in force: the next poll watches their
// tables.
func (c *coverage) setRules(rules *mapping.Rules) {
	if c != nil {
		c.rules.Store(rules)
	}
}

// addedByReload hands the watch the rule tables a reload added to the
// publication, and wakes it: it flushes their keys as it flushes those of
// the tables start adds, since changes made to them before were not
// streamed.
func (c *coverage) addedByReload(tables []string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.added = append(c.added, tables...)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// takeAdded returns the tables addedByReload handed over since the last
// call.
func (c *coverage) takeAdded() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	added := c.added
	c.added = nil
	return added
}

// see is called by the pipeline with the relation of each row change. A
// relation whose OID a rule table's name was bound to, under another name
// now (a Relation message after ALTER TABLE ... RENAME), wakes the watch at
// once instead of at its next interval. It costs a pointer comparison per
// row, and a map lookup when the relation changes.
func (c *coverage) see(rel *pginvalidator.Relation) {
	if c == nil || rel == c.lastRel || rel == nil {
		return
	}
	c.lastRel = rel
	bound := c.bound.Load()
	if bound == nil {
		return
	}
	if name, ok := (*bound)[rel.ID]; ok && name != rel.QualifiedName() {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// seenTable is one rule table as the last poll saw it.
type seenTable struct {
	replication.BoundTable
	problem  string // why it is not covered, as logged; "": covered
	identity string // why its replica identity does not serve its rules, as logged; "": it does
}

// savedReading is a reading as CatalogMarker holds it.
type savedReading struct {
	Tables map[string]savedTable `json:"tables"` // by rule table
}

// savedTable is one seenTable as saved. A leaf's HasData matters only for
// a leaf new to the next reading, so it is left out: a reading changes, and
// is saved again, only when the relations change.
type savedTable struct {
	OID         uint32               `json:"oid"`
	Published   bool                 `json:"published,omitempty"`
	Partitioned bool                 `json:"partitioned,omitempty"`
	Leaves      map[uint32]savedLeaf `json:"leaves,omitempty"`
	Problem     string               `json:"problem,omitempty"`
	Identity    string               `json:"identity,omitempty"`
}

type savedLeaf struct {
	Name     string `json:"name"`
	Filenode uint32 `json:"filenode"`
}

// encodeReading returns seen as CatalogMarker holds it.
func encodeReading(seen map[string]seenTable) string {
	r := savedReading{Tables: make(map[string]savedTable, len(seen))}
	for name, t := range seen {
		st := savedTable{OID: t.OID, Published: t.Published, Partitioned: t.Partitioned, Problem: t.problem, Identity: t.identity}
		if t.Leaves != nil {
			st.Leaves = make(map[uint32]savedLeaf, len(t.Leaves))
			for oid, l := range t.Leaves {
				st.Leaves[oid] = savedLeaf{Name: l.Name, Filenode: l.Filenode}
			}
		}
		r.Tables[name] = st
	}
	b, err := json.Marshal(r) // maps marshal sorted: the same reading, the same text
	if err != nil {
		panic(err) // maps of strings and numbers always marshal
	}
	return string(b)
}

// decodeReading is encodeReading's inverse.
func decodeReading(s string) (map[string]seenTable, error) {
	var r savedReading
	if err := json.Unmarshal([]byte(s), &r); err != nil {
		return nil, err
	}
	seen := make(map[string]seenTable, len(r.Tables))
	for name, st := range r.Tables {
		t := seenTable{BoundTable: replication.BoundTable{OID: st.OID, Published: st.Published, Partitioned: st.Partitioned},
			problem: st.Problem, identity: st.Identity}
		if st.Leaves != nil {
			t.Leaves = make(map[uint32]replication.Leaf, len(st.Leaves))
			for oid, l := range st.Leaves {
				t.Leaves[oid] = replication.Leaf{Name: l.Name, Filenode: l.Filenode}
			}
		}
		seen[name] = t
	}
	return seen, nil
}

// catalogWatch polls the catalog for Run. Its fields belong to the goroutine
// running watchCatalog.
type catalogWatch struct {
	cfg   Config
	cov   *coverage
	redis fanout
	conn  *pgx.Conn            // an ordinary connection, kept open; nil: reconnect at the next poll
	seen  map[string]seenTable // by rule table, as the last poll saw it, or as the last daemon saved it; empty: neither
	added []string             // rule tables added to the publication, at start or by a reload, flushed by the next poll that succeeds; nil after it

	keys    markerKeys // the slot's notes in Redis; zero until the first poll that connects
	loaded  bool       // the reading the last daemon saved was looked for
	saved   string     // the reading last saved or loaded, encoded
	unsaved int        // polls since the reading was last saved
	polled  bool       // a poll succeeded: problems seen before were logged by this process

	failing bool // the last poll failed, and that was logged

	// later sends a flush's keys again after redelete_after; nil: never.
	later *flushRedeletes

	// onSyncStandbys is told the primary's synchronous_standby_names at
	// every poll; nil: nobody is. When the daemon decodes on a standby it
	// is read on primary, a connection of its own.
	onSyncStandbys func(names string)
	primary        *pgx.Conn
	// streaming reports whether a session streams, and so the slot
	// exists: the watch then sets the slot's marker again whenever it
	// saves its reading. Nil: it never does.
	streaming func() bool
}

// newCatalogWatch returns the catalog watch of Run. added are the rule
// tables that prepare added to a publication that existed: the first poll
// flushes their keys, as it would after adding them itself.
func newCatalogWatch(cfg Config, cov *coverage, redis fanout, added []string) *catalogWatch {
	return &catalogWatch{cfg: cfg, cov: cov, redis: redis, seen: make(map[string]seenTable), added: added}
}

// run polls every cfg.CatalogPollInterval, and at once when the pipeline
// sees a rule table's relation under another name, until ctx ends, and
// reacts to the changes described above. Run takes the first reading itself, before
// it streams, so run waits one interval first.
func (w *catalogWatch) run(ctx context.Context) {
	defer func() {
		if w.conn != nil {
			w.conn.Close(context.Background())
		}
	}()
	t := time.NewTicker(w.cfg.CatalogPollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-w.cov.wake:
			t.Reset(w.cfg.CatalogPollInterval)
		}
		w.poll(ctx)
	}
}

// poll reads the catalog once and reacts to what changed. A failed poll is
// logged once per streak at warn level, and its connection closed; the
// next poll tries again.
func (w *catalogWatch) poll(ctx context.Context) {
	err := w.read(ctx)
	switch {
	case err != nil && ctx.Err() == nil && !w.failing:
		w.cfg.Logger.Warn("catalog watch failed; rule tables swapped, renamed or dropped go unnoticed until it works again", "err", err)
		w.failing = true
	case err == nil && w.failing:
		w.cfg.Logger.Info("catalog watch recovered")
		w.failing = false
	}
	if err != nil {
		for _, c := range []**pgx.Conn{&w.conn, &w.primary} {
			if *c != nil {
				(*c).Close(context.Background())
				*c = nil
			}
		}
	}
}

// read reads the catalog once, compares it with the last reading, flushes
// what needs flushing, and only then takes the new reading as the last: a
// read that fails before its flush is done is redone in full by the next.
func (w *catalogWatch) read(ctx context.Context) error {
	if w.conn == nil {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := connect(cctx, w.cfg)
		cancel()
		if err != nil {
			return err
		}
		w.conn = c
	}
	w.added = append(w.added, w.cov.takeAdded()...)
	rules := w.cov.rules.Load()
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if !w.loaded {
		if err := w.load(qctx); err != nil {
			return err
		}
	}
	r, err := w.take(qctx, rules)
	if err != nil {
		return err
	}
	for _, t := range r.names {
		w.judge(r, t)
	}
	if len(r.flush) > 0 {
		if err := w.flush(ctx, rules, r.flush); err != nil {
			return err
		}
	}
	w.keep(r)
	return w.save(ctx, r.next)
}

// reading is one poll's view of the rule tables, and what the watch makes
// of it (judge): what to flush, what to log, and why a table is not
// covered.
type reading struct {
	names []string                          // the rule tables
	now   map[string]replication.BoundTable // what each name resolves to
	// unpublished are the rule tables whose relation the publication did
	// not stream (or that start added to it), added to it just now unless
	// refused says this role may not.
	unpublished []string
	refused     *replication.PublicationError
	infos       map[string]pginvalidator.TableInfo // the tables that exist, described
	identity    map[string]mapping.IdentityNeed    // tables whose replica identity hides old values a rule needs

	next     map[string]seenTable // the reading to keep, by rule table
	problems map[string]string    // why a rule table is not covered, by table
	flush    []string             // tables whose rules' keys to flush
	logs     []func()             // what to log and count, once the flush is done
}

// take reads the catalog for rules: what each rule table's name resolves
// to, with the relations the publication does not stream added to it when
// this role may, and the tables described.
func (w *catalogWatch) take(ctx context.Context, rules *mapping.Rules) (*reading, error) {
	r := &reading{names: rules.Tables(), identity: make(map[string]mapping.IdentityNeed), problems: make(map[string]string)}
	var err error
	if r.now, err = replication.ResolveRuleTables(ctx, w.conn, w.cfg.Publication, r.names); err != nil {
		return nil, err
	}
	if err := w.publish(ctx, r); err != nil {
		return nil, err
	}
	existing := make([]string, 0, len(r.names))
	for _, t := range r.names {
		if r.now[t].OID != 0 {
			existing = append(existing, t)
		}
	}
	if r.infos, err = replication.DescribeTables(ctx, w.conn, existing); err != nil {
		return nil, fmt.Errorf("describe rule tables: %w", err)
	}
	for _, need := range rules.FullIdentityNeeds(r.infos) {
		r.identity[need.Table] = need
	}
	if w.onSyncStandbys != nil {
		conn := w.conn
		if w.cfg.PrimaryURL != "" {
			if w.primary == nil {
				if w.primary, err = connectPrimary(ctx, w.cfg); err != nil {
					return nil, err
				}
			}
			conn = w.primary
		}
		names, err := replication.SynchronousStandbyNames(ctx, conn)
		if err != nil {
			return nil, err
		}
		w.onSyncStandbys(names)
	}
	r.next = make(map[string]seenTable, len(r.names))
	return r, nil
}

// publish adds to the publication, when this role may, the relations of r
// that it does not stream, and notes them in r.unpublished; r.refused says
// why not when it may not.
func (w *catalogWatch) publish(ctx context.Context, r *reading) error {
	for _, t := range r.names {
		if b := r.now[t]; b.OID != 0 && (!b.Published || slices.Contains(w.added, t)) {
			r.unpublished = append(r.unpublished, t)
		}
	}
	if !slices.ContainsFunc(r.unpublished, func(t string) bool { return !r.now[t].Published }) {
		return nil
	}
	_, added, err := ensurePublication(ctx, w.cfg, w.conn, r.unpublished) // on the primary, when decoding on a standby
	switch {
	case errors.As(err, &r.refused):
	case err != nil:
		return err
	default:
		for _, t := range added {
			b := r.now[t]
			b.Published = true
			r.now[t] = b
		}
	}
	return nil
}

// judge compares rule table t in r with the last reading, and notes in r
// what the watch does about it: flush its keys, log and count a change,
// hold it not covered.
func (w *catalogWatch) judge(r *reading, t string) {
	cur := seenTable{BoundTable: r.now[t]}
	prev, known := w.seen[t]
	// A problem still there is logged again by a new process, though the
	// last daemon saw it too.
	logAgain := !known || !w.polled
	switch {
	case cur.OID == 0:
		w.judgeMissing(r, t, &cur, prev, known, logAgain)
	case !cur.Published:
		w.judgeUncovered(r, t, &cur, prev, logAgain)
	case !known && !slices.Contains(r.unpublished, t):
		// The first reading: what prepare checked.
	case !known || slices.Contains(r.unpublished, t) || prev.OID != cur.OID || prev.problem != "":
		w.judgeStreamedNow(r, t, prev, known)
	case cur.Partitioned && prev.OID == cur.OID:
		if why := leavesChanged(prev.BoundTable, cur.BoundTable); len(why) > 0 {
			r.flush = append(r.flush, t)
			r.logs = append(r.logs, w.change(t, changePartition, false,
				"partitions of a rule table were truncated, detached, dropped or attached, which the stream does not report: flushed its keys as a TRUNCATE would",
				"partitions", why))
		}
	}
	w.judgeIdentity(r, t, &cur, prev, logAgain)
	if cur.problem != "" {
		r.problems[t] = cur.problem
	} else if cur.identity != "" {
		r.problems[t] = cur.identity
	}
	r.next[t] = cur
}

// judgeMissing handles a rule table whose name resolves to no table: its
// keys are flushed once, since its rows are gone or live on under a name
// no rule knows.
func (w *catalogWatch) judgeMissing(r *reading, t string, cur *seenTable, prev seenTable, known, logAgain bool) {
	cur.problem = fmt.Sprintf("rule table %s does not exist (dropped, or renamed): its rules match nothing; "+
		"rename it back, or remove its rules and reload", t)
	if !known || prev.OID != 0 {
		r.flush = append(r.flush, t)
	}
	if logAgain || prev.OID != 0 {
		r.logs = append(r.logs, w.change(t, changeMissing, true,
			"rule table does not exist any more (dropped, or renamed): its rules match nothing, and its keys were flushed once; rename it back, or remove its rules and reload"))
	}
}

// judgeUncovered handles a rule table whose relation the publication does
// not stream, and this role may not add: a DBA must.
func (w *catalogWatch) judgeUncovered(r *reading, t string, cur *seenTable, prev seenTable, logAgain bool) {
	fix := replication.AddTablesSQL(w.cfg.Publication, []string{t})
	if r.refused != nil {
		fix = strings.Join(r.refused.Fix, "; ")
	}
	cur.problem = fmt.Sprintf("rule table %s is not covered: publication %s does not stream it (a new relation: swapped or recreated?), and this role may not add it; a DBA must run: %s",
		t, w.cfg.Publication, fix)
	if logAgain || prev.OID != cur.OID || prev.Published || prev.problem == "" {
		args := []any{"publication", w.cfg.Publication, "sql", fix}
		if r.refused != nil && r.refused.Err != nil {
			args = append(args, "err", r.refused.Err)
		}
		r.logs = append(r.logs, w.change(t, changeUncovered, true,
			"rule table is a new relation (swapped or recreated) that the publication does not stream, and this role may not add it: its changes are not invalidated until a DBA runs the SQL given", args...))
	}
}

// judgeStreamedNow handles a rule table whose relation is streamed now and
// was not before: changes made to it meanwhile were not streamed, so its
// keys are flushed.
func (w *catalogWatch) judgeStreamedNow(r *reading, t string, prev seenTable, known bool) {
	r.flush = append(r.flush, t)
	var change, msg string
	switch {
	case slices.Contains(w.added, t) && !known:
		change, msg = changeAdded, "rule table joined the publication (new in the rules): flushed its keys, since changes made to it before were not streamed"
	case slices.Contains(r.unpublished, t):
		change, msg = changeSwapped, "rule table is a new relation (swapped or recreated), or was dropped from the publication: added it to the publication, and flushed its keys, since changes made to it before were not streamed"
	case prev.OID != 0 && prev.OID != r.now[t].OID:
		change, msg = changeSwapped, "rule table is a new relation (swapped or recreated), which the publication streams already: flushed its keys, since changes made to it before the daemon noticed were not mapped"
	default:
		change, msg = changeRestored, "rule table is covered again: flushed its keys, since changes made to it meanwhile were not streamed or not mapped"
	}
	r.logs = append(r.logs, w.change(t, change, false, msg, "publication", w.cfg.Publication))
}

// judgeIdentity handles the replica identity of rule table t: one that no
// longer sends the old values its rules need makes it not covered; one
// that serves them again has its keys flushed, since keys of old rows were
// skipped meanwhile.
func (w *catalogWatch) judgeIdentity(r *reading, t string, cur *seenTable, prev seenTable, logAgain bool) {
	if need, ok := r.identity[t]; ok && cur.OID != 0 {
		fix := mapping.IdentityFix(r.infos[t])
		cur.identity = fmt.Sprintf("rule table %s: its replica identity no longer sends the old values its rules need: %s; fix: %s",
			t, need.Reason, fix)
		if logAgain || cur.identity != prev.identity {
			r.logs = append(r.logs, w.change(t, changeIdentity, true,
				"the replica identity of a rule table no longer sends the old values its rules need: keys rendered from old rows are skipped",
				"reason", need.Reason, "fix", fix))
		}
	}
	if cur.OID != 0 && cur.identity == "" && prev.identity != "" && !slices.Contains(r.flush, t) {
		r.flush = append(r.flush, t)
		r.logs = append(r.logs, w.change(t, changeRestored, false,
			"the replica identity of a rule table serves its rules again: flushed its keys, since keys of old rows were skipped meanwhile"))
	}
}

// keep takes r as the last reading, once its flush is done: it logs its
// changes, and shows its problems and bound names to /readyz and the
// pipeline.
func (w *catalogWatch) keep(r *reading) {
	for _, log := range r.logs {
		log()
	}
	w.seen = r.next
	w.polled = true
	w.added = nil
	w.cov.setProblems(r.problems)
	bound := make(map[uint32]string, len(r.next))
	for t, s := range r.next {
		if s.OID != 0 {
			bound[s.OID] = t
		}
	}
	w.cov.bound.Store(&bound)
}

// save saves the reading next in every target, after its flush: a daemon
// stopped in between finds the reading before it, and flushes again. A
// save that fails is tried again by the next poll, which does not flush
// again. An unchanged reading is saved again every resaveEvery polls, for
// a Redis emptied meanwhile.
func (w *catalogWatch) save(ctx context.Context, next map[string]seenTable) error {
	w.unsaved++
	if enc := encodeReading(next); enc != w.saved || w.unsaved >= resaveEvery {
		if err := w.redis.SetMarker(ctx, w.keys.catalog, enc); err != nil {
			return fmt.Errorf("save the catalog reading: %w", err)
		}
		// The slot's marker too, while a session streams (the slot
		// exists): an eviction or a FLUSHALL removes it as well.
		if w.streaming != nil && w.streaming() {
			if err := w.redis.SetMarker(ctx, w.keys.slot, slotMarkerValue(w.cfg.Slot, time.Now())); err != nil {
				return fmt.Errorf("set the replication slot's marker again: %w", err)
			}
		}
		w.saved, w.unsaved = enc, 0
	}
	return nil
}

// resaveEvery is how many polls an unchanged reading goes without being
// saved again: a minute at the default interval of 10s.
const resaveEvery = 6

// load takes the reading the last daemon saved as the last reading, before
// the first poll. A Redis user that may not read it (an ACL set up for an
// older daemon, without GET on the markers) is logged once, and the first
// poll goes on without it, as if there were none.
func (w *catalogWatch) load(ctx context.Context) error {
	if w.keys.catalog == "" {
		id, err := replication.ReadIdentity(ctx, w.conn)
		if err != nil {
			return err
		}
		w.keys = newMarkerKeys(id, w.cfg.Slot)
	}
	key := w.keys.catalog
	target, value, err := w.redis.Marker(ctx, key)
	if err == nil && target == "" { // saved by a daemon of before the system identifier
		key = w.keys.legacyCatalog
		target, value, err = w.redis.Marker(ctx, key)
	}
	switch {
	case errors.Is(err, invalidator.ErrNoPermission):
		w.cfg.Logger.Error("cannot read the catalog reading the last daemon saved: rule tables swapped, and partitions detached, dropped or truncated, while no daemon ran go unnoticed; let the Redis user read the markers: ACL SETUSER <user> (~"+SlotMarkerPrefix+"* +get), as setup --redis-acl prints",
			"key", key, "err", err)
	case err != nil:
		return fmt.Errorf("read the catalog reading the last daemon saved: %w", err)
	case target != "":
		seen, err := decodeReading(value)
		if err != nil {
			w.cfg.Logger.Warn("ignored the catalog reading the last daemon saved: it cannot be decoded", "key", key, "target", target, "err", err)
			break
		}
		w.seen, w.saved = seen, value
	}
	w.loaded = true
	return nil
}

// change returns what logs and counts one change to table: an error when
// the table is not covered, else a warning.
func (w *catalogWatch) change(table, change string, isError bool, msg string, args ...any) func() {
	return func() {
		w.cov.changes.WithLabelValues(table, change).Inc()
		args = append([]any{"table", table, "change", change}, args...)
		if isError {
			w.cfg.Logger.Error(msg, args...)
		} else {
			w.cfg.Logger.Warn(msg, args...)
		}
	}
}

// leavesChanged says which leaf partitions of a partitioned table went
// missing, got a new relfilenode, or joined with rows between two readings,
// one phrase each, sorted. A new leaf that holds rows was attached with
// them, or written to since it was created: either way the flush is safe,
// and only the first needs it. A new empty leaf needs none: its rows will
// be streamed.
func leavesChanged(prev, cur replication.BoundTable) []string {
	var why []string
	for oid, was := range prev.Leaves {
		now, ok := cur.Leaves[oid]
		switch {
		case !ok:
			why = append(why, was.Name+" detached or dropped")
		case now.Filenode != was.Filenode:
			why = append(why, was.Name+" truncated or rewritten")
		}
	}
	for oid, l := range cur.Leaves {
		if _, ok := prev.Leaves[oid]; !ok && l.HasData {
			why = append(why, l.Name+" attached with rows")
		}
	}
	slices.Sort(why)
	return why
}

// flush runs the flush commands of the rules of tables on every Redis
// target, each template as a TRUNCATE of its table would. Version keys are
// set to the server's WAL position read now, after the catalog: above every
// change the flush stands for, below every change still to come.
func (w *catalogWatch) flush(ctx context.Context, rules *mapping.Rules, tables []string) error {
	var cmds []pginvalidator.Command
	for _, t := range tables {
		cmds = append(cmds, rules.TableFlushCommands(t)...)
	}
	if len(cmds) == 0 {
		return nil
	}
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	lsn, err := replication.CurrentWALLSN(qctx, w.conn)
	cancel()
	if err != nil {
		return err
	}
	b := invalidator.NewBatch()
	for _, c := range cmds {
		b.Add(c)
	}
	b.EndTx(pginvalidator.LSN(lsn))
	if err := w.redis.Apply(ctx, b); err != nil {
		return fmt.Errorf("flush the keys of rule tables %s: %w", strings.Join(tables, ", "), err)
	}
	w.later.schedule(ctx, "rule tables "+strings.Join(tables, ", "), cmds)
	return nil
}
