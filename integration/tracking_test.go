package integration

// Client-side caching: an application that keeps Redis values in its own
// memory, with RESP3 CLIENT TRACKING, is told by Redis when a key changes.
// These tests check that the daemon's UNLINK and its version-key script
// make Redis send those invalidations, through the real daemon, to a
// tracking connection spoken to byte by byte and to go-redis's own
// client-side cache.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
)

// trackingConn is one RESP3 connection to Redis with CLIENT TRACKING on. It
// reads replies and push messages itself, so that the test sees exactly what
// Redis sends.
type trackingConn struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

// newTrackingConn connects to the Redis at addr, switches to RESP3 with
// HELLO 3 and turns tracking on with the given CLIENT TRACKING options,
// such as "BCAST", "PREFIX", "p:".
func newTrackingConn(t *testing.T, addr string, options ...string) *trackingConn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &trackingConn{t: t, conn: conn, r: bufio.NewReader(conn)}
	if hello := c.do("HELLO", "3"); !strings.Contains(fmt.Sprint(hello), "proto 3") {
		t.Fatalf("HELLO 3 = %v, want a RESP3 map with proto 3", hello)
	}
	if ok := c.do(append([]string{"CLIENT", "TRACKING", "ON"}, options...)...); ok != "OK" {
		t.Fatalf("CLIENT TRACKING ON %v = %v", options, ok)
	}
	return c
}

// do sends a command and returns its reply. A push message that arrives
// first fails the test: do is for setup, before anything changes.
func (c *trackingConn) do(args ...string) any {
	c.t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	c.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.conn.Write([]byte(b.String())); err != nil {
		c.t.Fatal(err)
	}
	v, push, err := c.read()
	if err != nil {
		c.t.Fatalf("%v: %v", args, err)
	}
	if push {
		c.t.Fatalf("%v: a push message came before the reply: %v", args, v)
	}
	return v
}

// invalidated waits up to within for the next "invalidate" push and
// returns the keys it names. A push of another kind fails the test; none
// in time returns nil.
func (c *trackingConn) invalidated(within time.Duration) []string {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(within))
	v, push, err := c.read()
	var nerr net.Error
	if errors.As(err, &nerr) && nerr.Timeout() {
		return nil
	}
	if err != nil {
		c.t.Fatal(err)
	}
	msg, _ := v.([]any)
	if !push || len(msg) != 2 || msg[0] != "invalidate" {
		c.t.Fatalf("got %v (push %v), want an invalidate push", v, push)
	}
	keys, _ := msg[1].([]any) // nil for FLUSHALL and FLUSHDB
	var out []string
	for _, k := range keys {
		out = append(out, k.(string))
	}
	return out
}

// invalidatedKeys collects the keys of invalidate pushes until it has seen
// every key of want, or until nothing comes for a second, and returns them
// sorted.
func (c *trackingConn) invalidatedKeys(want ...string) []string {
	c.t.Helper()
	var got []string
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && !containsAll(got, want) {
		keys := c.invalidated(time.Second)
		if keys == nil {
			break
		}
		got = append(got, keys...)
	}
	slices.Sort(got)
	return got
}

// drain reads the pushes that the test's own writes of keys caused.
func (c *trackingConn) drain(keys ...string) {
	c.t.Helper()
	if got := c.invalidatedKeys(keys...); !containsAll(got, keys) {
		c.t.Fatalf("the test's own writes pushed %q, want %q", got, keys)
	}
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// read reads one RESP3 value; push is true for a push message (">").
// Strings, errors and verbatim strings become string, numbers int64,
// aggregates []any (a map's keys and values in turn), null nil.
func (c *trackingConn) read() (v any, push bool, err error) {
	line, err := c.r.ReadString('\n')
	if err != nil {
		return nil, false, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, false, errors.New("empty RESP line")
	}
	body := line[1:]
	switch line[0] {
	case '+':
		return body, false, nil
	case '-', '!':
		return nil, false, fmt.Errorf("redis: %s", body)
	case ':':
		n, err := strconv.ParseInt(body, 10, 64)
		return n, false, err
	case ',', '(', '#':
		return body, false, nil
	case '_':
		return nil, false, nil
	case '$', '=':
		n, err := strconv.Atoi(body)
		if err != nil || n < 0 {
			return nil, false, err
		}
		buf := make([]byte, n+2)
		if _, err := readFull(c.r, buf); err != nil {
			return nil, false, err
		}
		return string(buf[:n]), false, nil
	case '*', '>', '~', '%', '|':
		n, err := strconv.Atoi(body)
		if err != nil {
			return nil, false, err
		}
		if line[0] == '%' || line[0] == '|' {
			n *= 2
		}
		list := make([]any, 0, max(n, 0))
		for range n {
			elem, _, err := c.read()
			if err != nil {
				return nil, false, err
			}
			list = append(list, elem)
		}
		if line[0] == '|' { // attributes precede the value they describe
			return c.read()
		}
		return list, line[0] == '>', nil
	}
	return nil, false, fmt.Errorf("unknown RESP3 type %q", line[0])
}

func readFull(r *bufio.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

const trackingRules = `
[[rule]]
table = "items"
del = ["{p}item:<id>", "{p}items:cat:<cat>"]
version = ["{p}version:items"]
` + markerRule

// redisAddr returns host:port of the fixture's Redis.
func (f *fixture) redisAddr() string {
	f.t.Helper()
	opts, err := redis.ParseURL(f.redisURL)
	if err != nil {
		f.t.Fatal(err)
	}
	return opts.Addr
}

// TestClientTrackingDefaultMode reads keys on a tracking connection, then
// changes their rows: Redis pushes an invalidation for each key the daemon
// deleted and for the version key its script set, once per read. An UNLINK
// of a key that does not exist pushes nothing, and neither does a key the
// connection did not read.
func TestClientTrackingDefaultMode(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	f.start(f.rules(trackingRules))
	f.cache("item:1", "items:cat:1", "item:5", "items:cat:2")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 5") // creates the version key
	f.waitGone("item:5")

	c := newTrackingConn(t, f.redisAddr())
	for _, k := range []string{"item:1", "items:cat:1", "version:items", "item:3"} { // item:3 is not cached
		c.do("GET", f.key(k))
	}

	// Item 3: its key is missing, so the daemon's UNLINK finds nothing and
	// Redis pushes nothing for it; the version key moves and is pushed.
	f.exec("UPDATE items SET v = v + 1 WHERE id = 3")
	f.sync()
	if got, want := c.invalidatedKeys(f.key("version:items")), []string{f.key("version:items")}; !slices.Equal(got, want) {
		t.Errorf("after updating item 3, pushed %q, want %q", got, want)
	}
	// Item 1: both its keys, but not the version key again (the connection
	// has not read it since its push), nor items:cat:2 (never read).
	f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 2")
	f.sync()
	want := []string{f.key("item:1"), f.key("items:cat:1")}
	if got := c.invalidatedKeys(want...); !slices.Equal(got, want) {
		t.Errorf("after updating items 1 and 2, pushed %q, want %q", got, want)
	}
	if keys := c.invalidated(300 * time.Millisecond); keys != nil {
		t.Errorf("an invalidation for a key not read since its last push: %q", keys)
	}

	// A version command that finds the key at a later LSN, as a replay
	// does, writes nothing and pushes nothing; an INCR pushes.
	c.do("GET", f.key("version:items"))
	c.do("GET", f.key("counter"))
	inv, err := invalidator.New(invalidator.Options{URL: f.redisURL})
	if err != nil {
		t.Fatal(err)
	}
	defer inv.Close()
	b := invalidator.NewBatch()
	b.Add(pginvalidator.Command{Action: pginvalidator.Version, Key: f.key("version:items")})
	b.EndTx(1)
	if err := inv.Apply(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	if keys := c.invalidated(300 * time.Millisecond); keys != nil {
		t.Errorf("a version key left as it was pushed %q", keys)
	}
	b.Clear()
	b.Add(pginvalidator.Command{Action: pginvalidator.Incr, Key: f.key("counter")})
	b.EndTx(2)
	if err := inv.Apply(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	if got, want := c.invalidatedKeys(f.key("counter")), []string{f.key("counter")}; !slices.Equal(got, want) {
		t.Errorf("after an INCR, pushed %q, want %q", got, want)
	}
}

// TestClientTrackingBroadcast tracks prefixes in BCAST mode: every key the
// daemon deletes or sets under a prefix is pushed, read or not, a TRUNCATE's
// pattern included, and nothing outside the prefixes. The test's own SETs
// under the prefixes are pushed too, and drained before each change.
func TestClientTrackingBroadcast(t *testing.T) {
	f := newFixture(t, itemsSchema, markerSchema)
	f.start(f.rules(trackingRules))
	c := newTrackingConn(t, f.redisAddr(), "BCAST", "PREFIX", f.key("item:"), "PREFIX", f.key("version:"))

	f.cache("item:2", "items:cat:2")
	c.drain(f.key("item:2"))
	f.exec("UPDATE items SET v = v + 1 WHERE id = 2")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 4") // item:4 is not cached: nothing to push
	f.sync()
	want := []string{f.key("item:2"), f.key("version:items")}
	if got := c.invalidatedKeys(want...); !slices.Equal(got, want) {
		t.Errorf("after two updates, pushed %q, want %q", got, want)
	}

	f.cache("item:1", "item:7", "item:1999", "items:cat:3")
	c.drain(f.key("item:1"), f.key("item:7"), f.key("item:1999"))
	f.exec("TRUNCATE items")
	f.sync()
	want = []string{f.key("item:1"), f.key("item:1999"), f.key("item:7"), f.key("version:items")}
	if got := c.invalidatedKeys(want...); !slices.Equal(got, want) {
		t.Errorf("after TRUNCATE, pushed %q, want %q", got, want)
	}
	if keys := c.invalidated(300 * time.Millisecond); keys != nil {
		t.Errorf("an invalidation more: %q", keys)
	}
}

// TestGoRedisClientSideCache runs go-redis's own client-side cache (RESP3,
// CLIENT TRACKING on its pooled connections) as an application would: a
// value it serves from process memory is dropped once the daemon deletes
// its key, and a cached version key gives way to the new LSN. Its
// staleness backstop is off, so only Redis's push can do it.
func TestGoRedisClientSideCache(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, itemsSchema, markerSchema)
	f.start(f.rules(trackingRules))
	f.exec("UPDATE items SET v = v + 1 WHERE id = 5") // creates the version key
	f.sync()

	app := redis.NewClient(&redis.Options{Addr: f.redisAddr(), Protocol: 3, DisableIdentity: true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		ClientSideCacheConfig:    &redis.ClientSideCacheConfig{MaxEntries: 1000}})
	t.Cleanup(func() { app.Close() })

	f.cache("item:1")
	version := f.get("version:items")
	for range 3 {
		if got := app.Get(ctx, f.key("item:1")).Val(); got != "cached" {
			t.Fatalf("app GET item:1 = %q, want cached", got)
		}
		if got := app.Get(ctx, f.key("version:items")).Val(); got != version {
			t.Fatalf("app GET version:items = %q, want %q", got, version)
		}
	}
	if st := app.CSCStats(); st.Hits < 4 || st.Entries != 2 {
		t.Fatalf("CSCStats() = %+v, want at least 4 hits on 2 entries: the values come from process memory", st)
	}

	f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
	f.sync()
	waitFor(t, 5*time.Second, func() bool {
		_, err := app.Get(ctx, f.key("item:1")).Result()
		return err == redis.Nil
	}, func() string {
		return "the application still serves item:1 from its memory after the daemon deleted it"
	})
	waitFor(t, 5*time.Second, func() bool {
		return app.Get(ctx, f.key("version:items")).Val() == f.get("version:items")
	}, func() string {
		return fmt.Sprintf("the application serves version:items = %q from its memory, Redis holds %q",
			app.Get(ctx, f.key("version:items")).Val(), f.get("version:items"))
	})
	if app.Get(ctx, f.key("version:items")).Val() == version {
		t.Errorf("version:items did not move: %q", version)
	}
}
