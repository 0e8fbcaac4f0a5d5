package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"

	"github.com/pg-invalidator/pg-invalidator/internal/raceload"
)

// The chaos run's load: writers that update, insert and delete rows of the
// rule tables and log every commit, and cache-aside readers
// (raceload.Aside) that read from the primary or the standby.

// txRecord is one committed transaction, as its writer logged it.
type txRecord struct {
	xid uint64
	// before is pg_current_wal_insert_lsn() just before COMMIT: the commit
	// record ends after it. after is pg_current_wal_lsn() once COMMIT
	// returned: at or past the commit record's end. The slot at or past
	// after has acknowledged the transaction.
	before, after uint64
	commit        time.Time // when COMMIT returned
	keys          []txKey   // the del keys its changes render under every rule set
	versions      []string  // the version keys it moves (chaos_prices)
}

// txKey is one del key of a transaction.
type txKey struct {
	key   string
	items bool // rendered from chaos_items, which the swap fault replaces
}

// touchesOnlyItems reports whether every key of r is of chaos_items.
func (r *txRecord) touchesOnlyItems() bool {
	for _, k := range r.keys {
		if !k.items {
			return false
		}
	}
	return len(r.versions) == 0
}

// commitLog is every transaction the writers committed, in the order they
// logged them (commit order give or take a writer's few microseconds).
type commitLog struct {
	mu  sync.Mutex // protects txs
	txs []*txRecord
}

func (l *commitLog) add(r *txRecord) {
	l.mu.Lock()
	l.txs = append(l.txs, r)
	l.mu.Unlock()
}

// since returns the records logged from index i on.
func (l *commitLog) since(i int) []*txRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	if i >= len(l.txs) {
		return nil
	}
	return append([]*txRecord(nil), l.txs[i:]...)
}

func (l *commitLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.txs)
}

// loadCounts are what the writers and readers did.
type loadCounts struct {
	committed, rolledBack, writeErrors atomic.Int64
	commitsResolved                    atomic.Int64 // COMMIT failed and pg_xact_status said committed
	plantsSkipped                      atomic.Int64 // plants not made on a target under a fault
	plantsLate                         atomic.Int64 // transactions rolled back because their plant came later than the budget
	reads, hits, sets, absent, dropped atomic.Int64
	readErrors                         atomic.Int64
	slowSets                           atomic.Int64 // reads that filled a miss more than the budget after they began (the SET itself was slow)
}

// The writers.

// writer owns the ids id % of == n of every table, so that no two writers
// change one row: a row read at the start of a transaction is the row the
// transaction changes.
type writer struct {
	c     *chaos
	n, of int
	rng   *rand.Rand
	conn  *pgx.Conn
}

func (w *writer) run(ctx context.Context) {
	defer func() {
		if w.conn != nil {
			w.conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if w.conn == nil || w.conn.IsClosed() {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			conn, err := pgx.Connect(cctx, w.c.pg.URL())
			cancel()
			if err != nil {
				w.c.load.writeErrors.Add(1)
				sleepCtx(ctx, 200*time.Millisecond)
				continue
			}
			w.conn = conn
		}
		if err := w.transaction(ctx, w.pick); err != nil && ctx.Err() == nil {
			w.c.load.writeErrors.Add(1)
			w.c.debug("writer %d: %v", w.n, err)
			if w.conn.IsClosed() || pgconn.SafeToRetry(err) {
				sleepCtx(ctx, 100*time.Millisecond)
			}
		}
		sleepCtx(ctx, time.Duration(2+w.rng.IntN(8))*time.Millisecond)
	}
}

// own returns a random id in 1..rows that the writer owns.
func (w *writer) own(rows int) int {
	first := w.n
	if first == 0 {
		first = w.of
	}
	return first + w.of*w.rng.IntN((rows-first)/w.of+1)
}

// change is one row change of a transaction: what it read before, the
// keys it renders, and its statement.
type change struct {
	row      string            // the table and the row's key columns
	plants   map[string]string // key -> the value read before the change, as a reader would cache it
	keys     []txKey
	versions []string
	sql      string
	args     []any
}

// transaction runs one transaction of one or two row changes: it reads
// the rows and the lists it will change, plants what it read in every
// healthy target (a reader that read just before the commit, and cached
// it), changes the rows, and commits. Each planted value must be gone, or
// newer, once the daemon has applied the transaction.
func (w *writer) transaction(ctx context.Context, pick func(context.Context, pgx.Tx) ([]change, error)) error {
	tx, err := w.conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	began := time.Now()
	changes, err := pick(ctx, tx)
	if err != nil {
		return err
	}
	rec := &txRecord{}
	plants := map[string]string{}
	for _, ch := range changes {
		rec.keys = append(rec.keys, ch.keys...)
		rec.versions = append(rec.versions, ch.versions...)
		for k, v := range ch.plants {
			plants[k] = v
		}
	}
	if err := w.plant(ctx, plants, began); err != nil {
		return err
	}
	for _, ch := range changes {
		tag, err := tx.Exec(ctx, ch.sql, ch.args...)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			// The row went away under us (its partition detached): what
			// was planted is a reader's value like any other, read
			// before the change, which the catalog watch's flush removes.
			w.c.load.rolledBack.Add(1)
			return nil
		}
	}
	var xid string
	if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text, pg_current_wal_insert_lsn() - '0/0'`).Scan(&xid, &rec.before); err != nil {
		return err
	}
	if rec.xid, err = strconv.ParseUint(xid, 10, 64); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return w.resolve(ctx, rec, err)
	}
	rec.commit = time.Now()
	if err := w.conn.QueryRow(ctx, `SELECT pg_current_wal_lsn() - '0/0'`).Scan(&rec.after); err != nil {
		return w.resolve(ctx, rec, err)
	}
	w.c.log.add(rec)
	w.c.load.committed.Add(1)
	return nil
}

// resolve finds out, after a COMMIT (or the read after it) failed, whether
// the transaction committed, and logs it if it did: a server restarting
// under a COMMIT may have committed it.
func (w *writer) resolve(ctx context.Context, rec *txRecord, cause error) error {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		var status *string
		var after uint64
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		err := w.c.ctl.queryRow(qctx, `SELECT pg_xact_status($1::text::xid8), pg_current_wal_lsn() - '0/0'`,
			[]any{strconv.FormatUint(rec.xid, 10)}, &status, &after)
		cancel()
		if err == nil && status != nil && *status != "in progress" {
			if *status != "committed" {
				w.c.load.rolledBack.Add(1)
				return nil
			}
			rec.commit, rec.after = time.Now(), after
			w.c.log.add(rec)
			w.c.load.committed.Add(1)
			w.c.load.commitsResolved.Add(1)
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	w.c.anomaly("writer %d: cannot tell whether xid %d committed (COMMIT failed: %v)", w.n, rec.xid, cause)
	return cause
}

// plant sets each key to the value read before the change, in every target
// that is not under a fault, as a reader that read just before the commit
// would. A plant later than the budget is taken back and the transaction
// not made: a value landing that late could outlive the re-delete.
func (w *writer) plant(ctx context.Context, plants map[string]string, began time.Time) error {
	if len(plants) == 0 {
		return nil
	}
	for _, t := range w.c.targets {
		t.mu.RLock()
		if t.faulty {
			t.mu.RUnlock()
			w.c.load.plantsSkipped.Add(1)
			continue
		}
		pipe := t.client.Pipeline()
		for k, v := range plants {
			pipe.Set(ctx, k, v, time.Hour)
		}
		_, err := pipe.Exec(ctx)
		late := time.Since(began) > chaosSetBudget
		if late {
			del := t.client.Pipeline()
			for k := range plants {
				del.Del(context.WithoutCancel(ctx), k)
			}
			del.Exec(context.WithoutCancel(ctx))
		}
		t.mu.RUnlock()
		if err != nil {
			return fmt.Errorf("plant in %s: %w", t.name, err)
		}
		if late {
			w.c.load.plantsLate.Add(1)
			return errors.New("plant later than the budget")
		}
	}
	return nil
}

// pick chooses one or two row changes among the tables, and reads what
// each needs before it is made.
// Two changes of one transaction are to different rows: each reads its
// row before either is made.
func (w *writer) pick(ctx context.Context, tx pgx.Tx) ([]change, error) {
	var changes []change
	rows := map[string]bool{}
	for range 1 + w.rng.IntN(2) {
		ch, err := w.pickOne(ctx, tx)
		if err != nil {
			return nil, err
		}
		if rows[ch.row] {
			continue
		}
		rows[ch.row] = true
		changes = append(changes, ch)
	}
	return changes, nil
}

func (w *writer) pickOne(ctx context.Context, tx pgx.Tx) (change, error) {
	switch x := w.rng.IntN(100); {
	case x < 40:
		return w.itemRow(ctx, tx, w.own(chaosItemRows), false)
	case x < 75:
		return w.event(ctx, tx)
	case x < 95:
		return w.price(ctx, tx)
	default:
		return w.note(ctx, tx)
	}
}

// itemRow updates chaos_items row id (moving it to another category one
// time in three), deletes or inserts it; with update, it updates it and
// keeps its category.
func (w *writer) itemRow(ctx context.Context, tx pgx.Tx, id int, update bool) (change, error) {
	ch := change{row: "item:" + strconv.Itoa(id), plants: map[string]string{}}
	row, exists, err := loadValue(ctx, tx, qItem, id)
	if err != nil {
		return ch, err
	}
	newCat := w.rng.IntN(chaosCats)
	oldCat := -1
	if exists {
		ch.plants[itemKey(id)] = row
		payload, _, _ := cachedValue(row)
		oldCat, _ = strconv.Atoi(payload[:indexByte(payload, ':')])
		if update || w.rng.IntN(3) != 0 {
			newCat = oldCat
		}
	}
	switch {
	case !exists && update:
		return ch, fmt.Errorf("chaos_items row %d does not exist", id)
	case !exists:
		ch.sql, ch.args = `INSERT INTO chaos_items (id, cat, ver) VALUES ($1, $2, nextval('chaos_ver'))`, []any{id, newCat}
	case !update && w.rng.IntN(5) == 0:
		ch.sql, ch.args, newCat = `DELETE FROM chaos_items WHERE id = $1`, []any{id}, -1
	default:
		ch.sql, ch.args = `UPDATE chaos_items SET cat = $2, ver = nextval('chaos_ver') WHERE id = $1`, []any{id, newCat}
	}
	ch.keys = append(ch.keys, txKey{itemKey(id), true})
	for _, cat := range []int{oldCat, newCat} {
		if cat < 0 || ch.plants[catKey(cat)] != "" {
			continue
		}
		v, _, err := loadValue(ctx, tx, qCat, cat)
		if err != nil {
			return ch, err
		}
		ch.plants[catKey(cat)] = v
		ch.keys = append(ch.keys, txKey{catKey(cat), true})
	}
	return ch, nil
}

// event updates, deletes or inserts a chaos_events row of a random region.
func (w *writer) event(ctx context.Context, tx pgx.Tx) (change, error) {
	id, region := w.own(chaosEventRows), chaosRegions[w.rng.IntN(len(chaosRegions))]
	ch := change{row: "event:" + region + ":" + strconv.Itoa(id), plants: map[string]string{}}
	row, exists, err := loadValue(ctx, tx, qEvent, region, id)
	if err != nil {
		return ch, err
	}
	list, _, err := loadValue(ctx, tx, qEvents, region)
	if err != nil {
		return ch, err
	}
	ch.plants[eventsKey(region)] = list
	switch {
	case !exists:
		ch.sql = `INSERT INTO chaos_events (region, id, ver) VALUES ($1, $2, nextval('chaos_ver'))`
	case w.rng.IntN(5) == 0:
		ch.plants[eventKey(region, id)] = row
		ch.sql = `DELETE FROM chaos_events WHERE region = $1 AND id = $2`
	default:
		ch.plants[eventKey(region, id)] = row
		ch.sql = `UPDATE chaos_events SET ver = nextval('chaos_ver') WHERE region = $1 AND id = $2`
	}
	ch.args = []any{region, id}
	ch.keys = []txKey{{eventKey(region, id), false}, {eventsKey(region), false}}
	return ch, nil
}

// price updates, deletes or inserts a chaos_prices row, whose rule moves a
// version key: nothing to plant, since readers cache under the version.
func (w *writer) price(ctx context.Context, tx pgx.Tx) (change, error) {
	id := w.own(chaosPriceRows)
	_, exists, err := loadValue(ctx, tx, qPrice, id)
	if err != nil {
		return change{}, err
	}
	ch := change{row: "price:" + strconv.Itoa(id), versions: []string{priceVersionKey(id)}, args: []any{id}}
	switch {
	case !exists:
		ch.sql = `INSERT INTO chaos_prices (id, amount) VALUES ($1, nextval('chaos_ver'))`
	case w.rng.IntN(10) == 0:
		ch.sql = `DELETE FROM chaos_prices WHERE id = $1`
	default:
		ch.sql = `UPDATE chaos_prices SET amount = nextval('chaos_ver') WHERE id = $1`
	}
	return ch, nil
}

// note writes chaos_notes, which only some rule sets name and no reader
// caches: a table that joins and leaves the publication with reloads.
func (w *writer) note(ctx context.Context, tx pgx.Tx) (change, error) {
	id := w.own(chaosNoteRows)
	if w.rng.IntN(4) == 0 {
		var n int
		err := tx.QueryRow(ctx, `SELECT count(*) FROM chaos_notes WHERE id = $1`, id).Scan(&n)
		if err == nil && n == 1 {
			return change{row: "note:" + strconv.Itoa(id), sql: `DELETE FROM chaos_notes WHERE id = $1`, args: []any{id}}, nil
		}
	}
	return change{row: "note:" + strconv.Itoa(id), sql: `INSERT INTO chaos_notes (id, body) VALUES ($1, nextval('chaos_ver'))
		ON CONFLICT (id) DO UPDATE SET body = excluded.body`, args: []any{id}}, nil
}

func indexByte(s string, b byte) int {
	for i := range len(s) {
		if s[i] == b {
			return i
		}
	}
	return len(s)
}

// The readers.

// reader is a cache-aside reader of one target, reading rows from the
// primary or from the standby.
type reader struct {
	c      *chaos
	target *chaosTarget
	client *redis.Client // its own client of the target
	dbURL  string
	rng    *rand.Rand
	conn   *pgx.Conn
}

func (r *reader) run(ctx context.Context) {
	defer r.client.Close()
	defer func() {
		if r.conn != nil {
			r.conn.Close(context.Background())
		}
	}()
	aside := raceload.Aside{Redis: r.client, TTL: time.Hour, Budget: chaosSetBudget,
		Pause: func() time.Duration { return time.Duration(1+r.rng.IntN(5)) * time.Millisecond }}
	for ctx.Err() == nil {
		if r.conn == nil || r.conn.IsClosed() {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			conn, err := pgx.Connect(cctx, r.dbURL)
			cancel()
			if err != nil {
				r.c.load.readErrors.Add(1)
				sleepCtx(ctx, 200*time.Millisecond)
				continue
			}
			r.conn = conn
		}
		key, sql, args, err := r.pick(ctx)
		if err != nil {
			r.failed(ctx, err)
			continue
		}
		began := time.Now()
		r.c.load.reads.Add(1)
		got, err := aside.Read(ctx, key, func(ctx context.Context) (string, bool, error) {
			return loadValue(ctx, r.conn, sql, args...)
		})
		if err != nil {
			r.failed(ctx, err)
			continue
		}
		switch got {
		case raceload.Hit:
			r.c.load.hits.Add(1)
		case raceload.Set:
			r.c.load.sets.Add(1)
			if time.Since(began) > chaosSetBudget {
				r.c.load.slowSets.Add(1)
				r.c.debug("slow set: %s took %s", key, time.Since(began).Round(time.Millisecond))
			}
		case raceload.Absent:
			r.c.load.absent.Add(1)
		case raceload.Dropped:
			r.c.load.dropped.Add(1)
		}
		// An application's request rate, not a loop as fast as the CPU:
		// each reader reads a few hundred times a second.
		sleepCtx(ctx, time.Duration(1+r.rng.IntN(4))*time.Millisecond)
	}
}

func (r *reader) failed(ctx context.Context, err error) {
	if ctx.Err() != nil {
		return
	}
	r.c.load.readErrors.Add(1)
	r.c.debug("reader of %s: %v", r.target.name, err)
	sleepCtx(ctx, 20*time.Millisecond)
}

// pick chooses a key to read, and the query that fills it. A price is read
// under its version key, which it seeds when missing with a value nobody
// used before, as docs/rules.md shows.
func (r *reader) pick(ctx context.Context) (key, sql string, args []any, err error) {
	switch x := r.rng.IntN(100); {
	case x < 30:
		id := 1 + r.rng.IntN(chaosItemRows)
		return itemKey(id), qItem, []any{id}, nil
	case x < 40:
		cat := r.rng.IntN(chaosCats)
		return catKey(cat), qCat, []any{cat}, nil
	case x < 70:
		id, region := 1+r.rng.IntN(chaosEventRows), chaosRegions[r.rng.IntN(len(chaosRegions))]
		return eventKey(region, id), qEvent, []any{region, id}, nil
	case x < 78:
		region := chaosRegions[r.rng.IntN(len(chaosRegions))]
		return eventsKey(region), qEvents, []any{region}, nil
	default:
		id := 1 + r.rng.IntN(chaosPriceRows)
		vk := priceVersionKey(id)
		v, err := r.client.Get(ctx, vk).Result()
		if err == redis.Nil {
			if err = r.client.SetNX(ctx, vk, fmt.Sprintf("seed-%016x", r.rng.Uint64()), 0).Err(); err == nil {
				v, err = r.client.Get(ctx, vk).Result()
			}
		}
		if err != nil {
			return "", "", nil, fmt.Errorf("version key %s: %w", vk, err)
		}
		return priceKey(id, v), qPrice, []any{id}, nil
	}
}
