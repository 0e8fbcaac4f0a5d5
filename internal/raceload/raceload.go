// Package raceload is the cache-aside workload that shows the races
// event-driven invalidation leaves open, for the integration tests and
// the bench: readers that read a row from PostgreSQL (the primary or a
// standby), pause, and SET it in Redis on a miss; writers that update rows
// on the primary; and a count, once everything is quiet, of the cached
// entries that hold an old value. Aside, one cache-aside read, is also the
// reader of the bench's chaos run.
//
// It talks to the servers only as an application would; it knows nothing
// of the daemon.
package raceload

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
	"github.com/redis/go-redis/v9"
)

// Schema creates the table the workload reads and writes, with rows rows.
// Its rule: table = "race_items", del = ["<prefix>item:<id>"].
func Schema(rows int) string {
	return fmt.Sprintf(`CREATE TABLE race_items (id int PRIMARY KEY, v bigint NOT NULL DEFAULT 0);
INSERT INTO race_items (id) SELECT g FROM generate_series(1, %d) g;`, rows)
}

// Options describes one run.
type Options struct {
	WriteURL string        // the primary, which writers update
	ReadURL  string        // where readers read rows: the primary or a standby; empty: WriteURL
	Redis    *redis.Client // the cache
	Prefix   string        // keys are Prefix + "item:" + id
	Rows     int           // rows in race_items, from 1

	Readers   int           // cache-aside readers
	ReadDelay time.Duration // each reader's pause between the row's read and the SET
	Writers   int
	// WritePause is each writer's pause between two updates; zero: none.
	WritePause time.Duration
	Duration   time.Duration
}

// Counts is what a run did.
type Counts struct {
	Reads  int64 // cache reads (GET)
	Hits   int64 // of them, hits
	Sets   int64 // misses filled from the database
	Writes int64 // rows updated
}

// Key returns the cache key of row id.
func Key(prefix string, id int) string { return prefix + "item:" + strconv.Itoa(id) }

// Run runs readers and writers for o.Duration, then waits for them.
func Run(ctx context.Context, o Options) (Counts, error) {
	if o.ReadURL == "" {
		o.ReadURL = o.WriteURL
	}
	// One connection per reader and writer, as many as an application's
	// pool would use.
	var conns []*pgx.Conn
	defer func() {
		for _, c := range conns {
			c.Close(context.Background())
		}
	}()
	connect := func(url string) (*pgx.Conn, error) {
		c, err := pgx.Connect(ctx, url)
		if err != nil {
			return nil, fmt.Errorf("connect: %w", err)
		}
		conns = append(conns, c)
		return c, nil
	}
	readConns, writeConns := make([]*pgx.Conn, o.Readers), make([]*pgx.Conn, o.Writers)
	for i := range readConns {
		c, err := connect(o.ReadURL)
		if err != nil {
			return Counts{}, err
		}
		readConns[i] = c
	}
	for i := range writeConns {
		c, err := connect(o.WriteURL)
		if err != nil {
			return Counts{}, err
		}
		writeConns[i] = c
	}

	ctx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	var c struct{ reads, hits, sets, writes atomic.Int64 }
	var wg sync.WaitGroup
	errs := make(chan error, o.Readers+o.Writers)
	aside := Aside{Redis: o.Redis, Pause: func() time.Duration { return o.ReadDelay }, TTL: time.Hour}
	for _, reads := range readConns {
		wg.Go(func() {
			for ctx.Err() == nil {
				id := 1 + rand.IntN(o.Rows)
				c.reads.Add(1)
				got, err := aside.Read(ctx, Key(o.Prefix, id), func(ctx context.Context) (string, bool, error) {
					var v int64
					if err := reads.QueryRow(ctx, "SELECT v FROM race_items WHERE id = $1", id).Scan(&v); err != nil {
						return "", false, fmt.Errorf("read row %d: %w", id, err)
					}
					return strconv.FormatInt(v, 10), true, nil
				})
				var setErr *SetError
				switch {
				case errors.As(err, &setErr): // the SET ran on: the run is not over
					errs <- err
					return
				case err != nil:
					errs <- stop(ctx, err)
					return
				case got == Hit:
					c.hits.Add(1)
				case got == Set:
					c.sets.Add(1)
				}
			}
		})
	}
	for _, writes := range writeConns {
		wg.Go(func() {
			for ctx.Err() == nil {
				id := 1 + rand.IntN(o.Rows)
				if _, err := writes.Exec(ctx, "UPDATE race_items SET v = v + 1 WHERE id = $1", id); err != nil {
					errs <- stop(ctx, fmt.Errorf("update row %d: %w", id, err))
					return
				}
				c.writes.Add(1)
				if o.WritePause > 0 {
					time.Sleep(o.WritePause)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	counts := Counts{Reads: c.reads.Load(), Hits: c.hits.Load(), Sets: c.sets.Load(), Writes: c.writes.Load()}
	return counts, <-errs
}

// Aside is the cache-aside read of an application: GET the key; on a miss,
// load the value from the database, pause (the slow request), and SET it.
// The races of event-driven invalidation live between the load and the SET.
type Aside struct {
	Redis redis.Cmdable
	// Pause returns the pause between the load and the SET; nil: none.
	Pause func() time.Duration
	TTL   time.Duration // of each SET; zero: none
	// Budget, when not zero, drops a SET that would be sent later than this
	// after the load began, as an application gives up on a request past
	// its deadline. Zero: every SET is sent, however late.
	Budget time.Duration
}

// Outcome is what one Aside.Read did.
type Outcome int

const (
	Hit     Outcome = iota // the key was cached
	Set                    // a miss, filled from the database
	Absent                 // a miss, and the database had nothing to cache
	Dropped                // a miss whose SET was past the budget, and not sent
)

// SetError is the error of a SET that failed. The SET runs without the
// read's context, as an application's would once its query returned, so
// its failure is Redis's, never the caller's context ending.
type SetError struct {
	Key string
	Err error
}

func (e *SetError) Error() string { return fmt.Sprintf("set %s: %v", e.Key, e.Err) }

func (e *SetError) Unwrap() error { return e.Err }

// Read reads key through the cache. load returns the value to cache, or
// false when there is nothing to cache (the row is gone). On an error the
// outcome means nothing; a SET that failed returns a *SetError.
func (a Aside) Read(ctx context.Context, key string, load func(context.Context) (string, bool, error)) (Outcome, error) {
	if _, err := a.Redis.Get(ctx, key).Result(); err == nil {
		return Hit, nil
	} else if err != redis.Nil {
		return Absent, fmt.Errorf("get %s: %w", key, err)
	}
	began := time.Now()
	v, ok, err := load(ctx)
	if err != nil || !ok {
		return Absent, err
	}
	if a.Pause != nil {
		time.Sleep(a.Pause()) // the slow request: not cut short, as an application's would not be
	}
	if a.Budget > 0 && time.Since(began) > a.Budget {
		return Dropped, nil
	}
	if err := a.Redis.Set(context.WithoutCancel(ctx), key, v, a.TTL).Err(); err != nil {
		return Set, &SetError{Key: key, Err: err}
	}
	return Set, nil
}

// stop returns nil for an error that only says the run is over.
func stop(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// Stale counts the cached entries whose value is not the row's value on
// the primary at url, and the entries cached. Call it once writers have
// stopped and every invalidation has been applied.
func Stale(ctx context.Context, url string, rdb *redis.Client, prefix string) (stale, cached int, err error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "SELECT id, v FROM race_items ORDER BY id")
	if err != nil {
		return 0, 0, err
	}
	want := map[int]int64{}
	for rows.Next() {
		var id int
		var v int64
		if err := rows.Scan(&id, &v); err != nil {
			return 0, 0, err
		}
		want[id] = v
	}
	if err := rows.Err(); err != nil {
		return 0, 0, err
	}
	for id, v := range want {
		got, err := rdb.Get(ctx, Key(prefix, id)).Result()
		if err == redis.Nil {
			continue
		}
		if err != nil {
			return 0, 0, err
		}
		cached++
		if got != strconv.FormatInt(v, 10) {
			stale++
		}
	}
	return stale, cached, nil
}

// Forced makes the stale-set race happen on rows 1 to n, one after the
// other, the way a slow reader meets a writer: the reader reads the row
// (from readURL), the writer updates it on the primary (writeURL), the
// reader waits until the daemon has deleted the key (a placeholder set
// before goes away), and then caches what it read. Without a remedy each
// of these n entries ends stale.
//
// With readBeforeDelete false, the reader reads after the delete instead: the
// replica race, where the read itself is stale when it comes from a
// standby that has not replayed the update yet.
func Forced(ctx context.Context, writeURL, readURL string, rdb *redis.Client, prefix string, n int, readBeforeDelete bool) error {
	w, err := pgx.Connect(ctx, writeURL)
	if err != nil {
		return err
	}
	defer w.Close(context.Background())
	r := w
	if readURL != "" && readURL != writeURL {
		if r, err = pgx.Connect(ctx, readURL); err != nil {
			return err
		}
		defer r.Close(context.Background())
	}
	read := func(id int) (int64, error) {
		var v int64
		err := r.QueryRow(ctx, "SELECT v FROM race_items WHERE id = $1", id).Scan(&v)
		return v, err
	}
	for id := 1; id <= n; id++ {
		key := Key(prefix, id)
		if err := rdb.Set(ctx, key, "placeholder", time.Hour).Err(); err != nil {
			return err
		}
		var v int64
		if readBeforeDelete {
			if v, err = read(id); err != nil {
				return err
			}
		}
		if _, err := w.Exec(ctx, "UPDATE race_items SET v = v + 1 WHERE id = $1", id); err != nil {
			return err
		}
		deadline := time.Now().Add(60 * time.Second)
		for rdb.Exists(ctx, key).Val() == 1 {
			if time.Now().After(deadline) {
				return errors.New("forced race: the daemon did not delete " + key + " within 60s")
			}
			time.Sleep(2 * time.Millisecond)
		}
		if !readBeforeDelete {
			if v, err = read(id); err != nil {
				return err
			}
		}
		if err := rdb.Set(ctx, key, v, time.Hour).Err(); err != nil {
			return err
		}
	}
	return nil
}
