package integration

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
)

const pricesSchema = `
CREATE TABLE products (id bigint PRIMARY KEY, price int NOT NULL);
INSERT INTO products VALUES (1, 100), (2, 100);
`

// setSynchronousStandbys sets the server's synchronous_standby_names and
// waits until a new session sees it.
func setSynchronousStandbys(t *testing.T, dbURL, names string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER SYSTEM SET synchronous_standby_names = '%s'", names)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		t.Fatal(err)
	}
	var got string
	waitFor(t, 10*time.Second, func() bool {
		c, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		if err := c.QueryRow(ctx, "SHOW synchronous_standby_names").Scan(&got); err != nil {
			t.Fatal(err)
		}
		return got == names
	}, func() string { return fmt.Sprintf("synchronous_standby_names = %q, want %q", got, names) })
}

// waitingWriter runs sql, a write whose commit waits for a synchronous
// standby, on a connection of its own.
func (f *fixture) waitingWriter(sql string) *syncWriter {
	f.t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, f.dbURL)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { conn.Close(context.Background()) })
	w := &syncWriter{f: f, done: make(chan error, 1)}
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&w.pid); err != nil {
		f.t.Fatal(err)
	}
	go func() {
		_, err := conn.Exec(ctx, sql)
		w.done <- err
	}()
	return w
}

// syncWriter is a write waiting for a synchronous standby.
type syncWriter struct {
	f    *fixture
	pid  uint32     // its backend
	done chan error // its outcome
}

// endWait cancels the write's wait for its standby, which makes its commit
// visible, and waits for the write to return.
func (w *syncWriter) endWait() {
	w.f.t.Helper()
	if _, err := w.f.db.Exec(context.Background(), "SELECT pg_cancel_backend($1)", w.pid); err != nil {
		w.f.t.Fatal(err)
	}
	if err := <-w.done; err != nil {
		w.f.t.Fatalf("the write: %v", err)
	}
}

// cacheAsideReader reads product 1 as an application's cache-aside code
// does, every few milliseconds until stop: on a miss it reads the row and
// caches its price.
func (f *fixture) cacheAsideReader(stop <-chan struct{}) *sync.WaitGroup {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, f.dbURL)
	if err != nil {
		f.t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		defer conn.Close(ctx)
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			err := f.rdb.Get(ctx, f.key("product:1")).Err()
			if !errors.Is(err, redis.Nil) {
				continue
			}
			var price int
			if err := conn.QueryRow(ctx, "SELECT price FROM products WHERE id = 1").Scan(&price); err != nil {
				f.t.Error(err)
				return
			}
			f.rdb.Set(ctx, f.key("product:1"), fmt.Sprint(price), time.Hour)
		}
	})
	return &wg
}

// TestVisibilityGap runs the real binary beside a primary whose commits
// wait for a synchronous standby that never answers
// (synchronous_standby_names names one that is not connected). A writer's
// UPDATE is flushed, and so streamed, but not visible: other sessions read
// the old row until the wait ends. A cache-aside reader misses, reads the
// old row, and caches it, all the while. Then the wait is cancelled, which
// makes the UPDATE visible. The entry the reader cached must not outlive
// that: the daemon deletes product:1 once the commit is visible, whether
// that comes within visibility_timeout (it waits) or after it (it deletes
// at the timeout, and again once the commit is visible).
func TestVisibilityGap(t *testing.T) {
	pg, err := localsvc.StartPostgres(context.Background(), localsvc.PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close() })

	for _, tc := range []struct {
		name      string
		timeout   time.Duration // visibility_timeout
		invisible time.Duration // how long the UPDATE stays invisible
		readyz    string        // what /readyz says meanwhile, still 200
	}{
		{"visible within the timeout", 30 * time.Second, 2 * time.Second, "its invalidations wait, up to visibility_timeout"},
		{"visible after the timeout", time.Second, 3 * time.Second, "its invalidations were applied at visibility_timeout and are applied again once it is visible"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The publication exists before the server waits for its
			// standby: the daemon then writes nothing that would wait too.
			f := newFixtureOn(t, pg.URL(), env.RedisURL, pricesSchema, markerSchema,
				"CREATE PUBLICATION pg_invalidator FOR TABLE products, marker")
			setSynchronousStandbys(t, f.dbURL, "nosuch")
			t.Cleanup(func() { setSynchronousStandbys(t, f.dbURL, "") })

			// The default visibility, "auto", waits: the server names a
			// synchronous standby.
			rules := f.rules(fmt.Sprintf(`
[postgres]
visibility_timeout = %q

[[rule]]
table = "products"
del = ["{p}product:<id>"]
`, tc.timeout) + markerRule)
			port, err := localsvc.FreePort()
			if err != nil {
				t.Fatal(err)
			}
			addr := fmt.Sprintf("127.0.0.1:%d", port)
			p := f.startProcess(rules, "--metrics-addr", addr)
			f.waitSlotActive("pg_invalidator", nil)
			waitReady(t, addr)
			f.rdb.Set(context.Background(), f.key("product:1"), "100", time.Hour)
			ctx := context.Background()
			w := f.waitingWriter("UPDATE products SET price = 200 WHERE id = 1")

			stop := make(chan struct{})
			reader := f.cacheAsideReader(stop)
			defer func() {
				select {
				case <-stop:
				default:
					close(stop)
				}
				reader.Wait()
			}()
			time.Sleep(tc.invisible)
			code, body := readyz(t, addr)
			if code != http.StatusOK || !strings.Contains(body, "is not visible on the primary") || !strings.Contains(body, tc.readyz) {
				t.Errorf("/readyz while the UPDATE is not visible = %d %q, want 200 and a line that says %q", code, body, tc.readyz)
			}

			// The standby's wait ends: the UPDATE is visible.
			w.endWait()
			visible := time.Now()
			var cached string
			waitFor(t, 15*time.Second, func() bool {
				cached, err = f.rdb.Get(ctx, f.key("product:1")).Result()
				return errors.Is(err, redis.Nil) || cached == "200"
			}, func() string {
				return fmt.Sprintf("product:1 is %q in Redis after the UPDATE to 200 turned visible; the daemon logged:\n%s", cached, p.stderr)
			})
			close(stop)
			reader.Wait()
			t.Logf("visibility_timeout %s, invisible for %s: the stale entry was gone %s after the UPDATE turned visible",
				tc.timeout, tc.invisible, time.Since(visible).Round(time.Millisecond))
			if cached, err = f.rdb.Get(ctx, f.key("product:1")).Result(); err == nil && cached != "200" {
				t.Errorf("product:1 = %q at the end, want 200 or no entry", cached)
			}
			code, body = readyz(t, addr)
			if code != http.StatusOK || strings.Contains(body, "not visible") {
				t.Errorf("/readyz after the UPDATE turned visible = %d %q, want 200 without a line about it", code, body)
			}
		})
	}
}

// TestVisibilityAuto: with visibility = "auto", the daemon waits for
// visibility only while the server names synchronous standbys, which the
// catalog watch reads at every poll: set after the start, it is noticed,
// and an UPDATE that waits for the standby has its key deleted only once
// it is visible.
func TestVisibilityAuto(t *testing.T) {
	pg, err := localsvc.StartPostgres(context.Background(), localsvc.PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close() })
	f := newFixtureOn(t, pg.URL(), env.RedisURL, pricesSchema, markerSchema)
	cfg := f.config(f.rules(`
[[rule]]
table = "products"
del = ["{p}product:<id>"]
` + markerRule))
	cfg.Visibility = daemon.VisibilityAuto
	w := f.startWatched(cfg)
	if n := w.logCount("synchronous standbys are named"); n != 0 {
		t.Fatalf("auto waits for visibility without synchronous standbys:\n%s", w.log)
	}

	setSynchronousStandbys(t, f.dbURL, "nosuch")
	t.Cleanup(func() { setSynchronousStandbys(t, f.dbURL, "") })
	w.waitLog("INFO", "synchronous standbys are named", "synchronous_standby_names=nosuch")
	ctx := context.Background()
	f.rdb.Set(ctx, f.key("product:1"), "100", time.Hour)
	writer := f.waitingWriter("UPDATE products SET price = 200 WHERE id = 1")
	// No reader runs: an entry deleted now would be the daemon's doing.
	time.Sleep(time.Second)
	if got := f.rdb.Get(ctx, f.key("product:1")).Val(); got != "100" {
		t.Errorf("product:1 = %q while the UPDATE is not visible, want it left for readers, who still read 100", got)
	}
	writer.endWait()
	var cached string
	waitFor(t, 15*time.Second, func() bool {
		cached, err = f.rdb.Get(ctx, f.key("product:1")).Result()
		return errors.Is(err, redis.Nil) || cached == "200"
	}, func() string { return fmt.Sprintf("product:1 is %q after the UPDATE to 200 turned visible", cached) })
}
