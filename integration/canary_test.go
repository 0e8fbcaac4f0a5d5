package integration

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
	"github.com/pg-invalidator/pg-invalidator/internal/tcpproxy"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
)

// keyEvents subscribes to the keyspace notifications of key on the Redis at
// addr, and returns the events as they come ("set", "del", ...).
func keyEvents(t *testing.T, addr, key string) <-chan string {
	t.Helper()
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
	t.Cleanup(func() { c.Close() })
	if err := c.ConfigSet(ctx, "notify-keyspace-events", "KA").Err(); err != nil {
		t.Fatal(err)
	}
	sub := c.Subscribe(ctx, "__keyspace@0__:"+key)
	if _, err := sub.Receive(ctx); err != nil { // the subscription's confirmation
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Close() })
	out := make(chan string, 1024)
	go func() {
		for msg := range sub.Channel() {
			select {
			case out <- msg.Payload:
			default:
			}
		}
	}()
	return out
}

// waitEvents waits until events has delivered want, in that order, among
// others, and returns what came.
func waitEvents(t *testing.T, events <-chan string, timeout time.Duration, want ...string) []string {
	t.Helper()
	var got []string
	deadline := time.After(timeout)
	for i := 0; i < len(want); {
		select {
		case e := <-events:
			got = append(got, e)
			if e == want[i] {
				i++
			}
		case <-deadline:
			t.Fatalf("after %s: keyspace events %v, want %v in that order", timeout, got, want)
		}
	}
	return got
}

// canarySeconds returns pg_invalidator_canary_seconds of the default
// target, and whether it is there.
func canarySeconds(t *testing.T, addr string) (float64, bool) {
	t.Helper()
	v, ok := scrape(t, addr)[`pg_invalidator_canary_seconds{target="default"}`]
	return v, ok
}

// TestCanaryRoundTrip runs the daemon with two Redis targets and a 1s
// heartbeat: every heartbeat sets the canary's key on both and the
// pipeline deletes it on both once the message is back through PostgreSQL
// and the stream; pg_invalidator_canary_seconds shows the round trip, and
// nothing is left in flight.
func TestCanaryRoundTrip(t *testing.T) {
	ctx := context.Background()
	var targets []daemon.Target
	var addrs []string
	for _, name := range []string{daemon.DefaultTarget, "b"} {
		rd, err := localsvc.StartRedis(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rd.Close() })
		targets = append(targets, daemon.Target{Name: name, Redis: invalidator.Options{URL: rd.URL()}})
		addrs = append(addrs, rd.Addr())
	}
	f := newFixtureOn(t, env.PostgresURL, targets[0].Redis.URL, itemsSchema, markerSchema)
	cfg := f.config(f.rules(itemsRules))
	cfg.Targets = targets
	cfg.CanaryKey = f.key("canary:<slot>")
	cfg.Heartbeat = time.Second
	cfg.MetricsAddr = metricsAddr(t)
	key := f.key("canary:pg_invalidator")
	var events []<-chan string
	for _, a := range addrs {
		events = append(events, keyEvents(t, a, key))
	}
	f.startConfig(cfg)

	for i, ev := range events {
		got := waitEvents(t, ev, 30*time.Second, "set", "del", "set", "del")
		t.Logf("target %s: keyspace events of %s: %v", targets[i].Name, key, got)
	}
	var samples []float64
	waitFor(t, 30*time.Second, func() bool {
		if v, ok := canarySeconds(t, cfg.MetricsAddr); ok && (len(samples) == 0 || v != samples[len(samples)-1]) {
			samples = append(samples, v)
		}
		return len(samples) >= 5
	}, func() string {
		return fmt.Sprintf("pg_invalidator_canary_seconds took %v, want 5 round trips", samples)
	})
	sort.Float64s(samples)
	t.Logf("canary round trips (s) of the default target, sorted: %v", samples)
	if v, ok := scrape(t, cfg.MetricsAddr)[`pg_invalidator_canary_seconds{target="b"}`]; !ok || v <= 0 {
		t.Errorf(`pg_invalidator_canary_seconds{target="b"} = %v (present: %v), want a round trip`, v, ok)
	}
	if s := scrape(t, cfg.MetricsAddr); s["pg_invalidator_canary_pending_seconds"] > 10 {
		t.Errorf("pg_invalidator_canary_pending_seconds = %v, want a canary in flight for moments only", s["pg_invalidator_canary_pending_seconds"])
	}
	waitStatus(t, cfg.MetricsAddr, "/readyz", http.StatusOK, 30*time.Second)

	// Row changes still go the usual way, in between.
	f.cache("item:3")
	f.exec("DELETE FROM items WHERE id = 3")
	f.waitGone("item:3")
}

// freezeProxy forwards TCP connections to a server, and can go silent on
// every established connection, in both directions, without closing any:
// what a vanished host, a dropped NAT entry or a moved virtual IP look like.
type freezeProxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex // protects the fields below
	thawed chan struct{}
	conns  []net.Conn
}

func startFreezeProxy(t *testing.T, target string) *freezeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezeProxy{ln: ln, target: target, thawed: make(chan struct{})}
	close(p.thawed)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		p.thaw()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			wg.Go(func() { p.pipe(out, in) })
			wg.Go(func() { p.pipe(in, out) })
		}
	})
	return p
}

// pipe copies src to dst, holding what it read while the proxy is frozen.
func (p *freezeProxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			thawed := p.thawed
			p.mu.Unlock()
			<-thawed
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// freeze stops forwarding on every connection until thaw.
func (p *freezeProxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.thawed:
		p.thawed = make(chan struct{})
	default:
	}
}

func (p *freezeProxy) thaw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.thawed:
	default:
		close(p.thawed)
	}
}

// url returns rawURL with its host and port replaced by the proxy's.
func (p *freezeProxy) url(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = p.ln.Addr().String()
	return u.String()
}

// TestCanaryStalledPath breaks the path from PostgreSQL to Redis in the
// middle, in two ways, and checks that /readyz says 503 with the canary's
// reason within the window and turns 200 again once the path works:
//
//   - every connection to PostgreSQL goes silent, without closing (the
//     stream and the heartbeat both wait): nothing fails, the session still
//     counts as streaming, and Redis is fine, so the canary is the only
//     one to tell;
//   - the pipeline blocked on Redis (CLIENT PAUSE ... WRITE): the canary's
//     deletion waits behind it.
func TestCanaryStalledPath(t *testing.T) {
	const window = 3 * time.Second
	t.Run("silent postgresql", func(t *testing.T) {
		f := newFixture(t, itemsSchema, markerSchema)
		u, err := url.Parse(f.dbURL)
		if err != nil {
			t.Fatal(err)
		}
		proxy := startFreezeProxy(t, u.Host)
		cfg := f.config(f.rules(itemsRules))
		cfg.PostgresURL = proxy.url(t, f.dbURL)
		cfg.CanaryKey = f.key("canary:<slot>")
		cfg.Heartbeat = time.Second
		cfg.MetricsAddr = metricsAddr(t)
		cfg.ReadyRedisWithin = window
		f.startConfig(cfg)
		waitFor(t, 30*time.Second, func() bool { _, ok := canarySeconds(t, cfg.MetricsAddr); return ok },
			func() string { return "no canary came back" })
		waitStatus(t, cfg.MetricsAddr, "/readyz", http.StatusOK, 30*time.Second)

		proxy.freeze()
		frozen := time.Now()
		body := waitReason(t, cfg.MetricsAddr, 60*time.Second, "canary has not come back for ")
		t.Logf("/readyz 503 %s after PostgreSQL went silent: %q", time.Since(frozen).Round(time.Millisecond), body)
		if strings.Contains(body, "redis") || strings.Contains(body, "not streaming") {
			t.Errorf("/readyz = %q, want the canary as the only reason: Redis is fine, and the session does not know", body)
		}
		f.cache("item:4")
		f.exec("DELETE FROM items WHERE id = 4") // directly, not through the proxy

		proxy.thaw()
		thawed := time.Now()
		f.waitGone("item:4")
		waitStatus(t, cfg.MetricsAddr, "/readyz", http.StatusOK, 60*time.Second)
		t.Logf("/readyz 200 %s after PostgreSQL spoke again", time.Since(thawed).Round(time.Millisecond))
	})

	t.Run("pipeline blocked on redis", func(t *testing.T) {
		r := startRefusingRedisWith(t, itemsRules, window, func(cfg *daemon.Config) {
			cfg.Heartbeat = time.Second
		})
		waitFor(t, 30*time.Second, func() bool { _, ok := canarySeconds(t, r.addr); return ok },
			func() string { return "no canary came back" })
		r.do("CLIENT", "PAUSE", 600000, "WRITE")
		paused := time.Now()
		body := waitReason(t, r.addr, 60*time.Second, "canary has not come back for ")
		t.Logf("/readyz 503 %s after CLIENT PAUSE WRITE: %q", time.Since(paused).Round(time.Millisecond), body)
		r.do("CLIENT", "UNPAUSE")
		unpaused := time.Now()
		waitStatus(t, r.addr, "/readyz", http.StatusOK, 60*time.Second)
		t.Logf("/readyz 200 %s after CLIENT UNPAUSE", time.Since(unpaused).Round(time.Millisecond))
	})
}

// TestCanaryOff checks that NoCanary sends plain heartbeats: no key is
// set, and no canary metric is exported.
func TestCanaryOff(t *testing.T) {
	rd, err := localsvc.StartRedis(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Close() })
	f := newFixtureOn(t, env.PostgresURL, rd.URL(), itemsSchema, markerSchema)
	cfg := f.config(f.rules(itemsRules))
	cfg.NoCanary = true
	cfg.Heartbeat = time.Second
	cfg.MetricsAddr = metricsAddr(t)
	events := keyEvents(t, rd.Addr(), "pg-invalidator:canary:pg_invalidator")
	f.startConfig(cfg)
	waitStatus(t, cfg.MetricsAddr, "/readyz", http.StatusOK, 30*time.Second)
	time.Sleep(3 * time.Second) // three heartbeats
	select {
	case e := <-events:
		t.Errorf("keyspace event %q on the canary's key with the canary off", e)
	default:
	}
	for series := range scrape(t, cfg.MetricsAddr) {
		if strings.HasPrefix(series, "pg_invalidator_canary") {
			t.Errorf("%s exported with the canary off", series)
		}
	}
}

// TestReadyzAfterAReconnect: a session that ends while PostgreSQL is silent
// leaves a backlog, the writes made meanwhile. Once the daemon streams
// again, /readyz must not say ready before that backlog is applied. Before,
// a new session forgot the canaries out and answered 200 at once, with
// nothing applied since the silence began (the chaos run saw 200 at a
// reconnection after 9 s of silence, with a 3 s window). Redis refuses the
// daemon's UNLINK across the reconnection (NOPERM, while the SET of its
// notes works), so that the backlog waits.
func TestReadyzAfterAReconnect(t *testing.T) {
	const window, refused = 2 * time.Second, 6 * time.Second
	var proxy *tcpproxy.Proxy
	r := startRefusingRedisWith(t, itemsRules, window, func(cfg *daemon.Config) {
		proxy, cfg.PostgresURL = proxied(t, cfg.PostgresURL)
		cfg.Timeout = 2 * time.Second
		cfg.MaxBackoff = 500 * time.Millisecond
		cfg.Heartbeat = time.Second
	})
	f := r.f
	waitFor(t, 30*time.Second, func() bool { _, ok := canarySeconds(t, r.addr); return ok },
		func() string { return "no canary came back" })
	waitStatus(t, r.addr, "/readyz", http.StatusOK, 30*time.Second)

	proxy.Silence()
	proxy.SwallowNew(true)
	silenced := time.Now()
	f.cache("item:1")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 1") // directly, not through the proxy
	waitReason(t, r.addr, 30*time.Second, "not streaming from postgresql")
	time.Sleep(window) // the outage outlasts the window

	r.do("ACL", "SETUSER", "pginv", "-unlink")
	refusing := time.Now()
	proxy.SwallowNew(false)
	proxy.CloseSilenced()
	var streamedAt time.Duration
	for time.Since(refusing) < refused {
		if streamedAt == 0 && scrape(t, r.addr)["pg_invalidator_streaming"] == 1 {
			streamedAt = time.Since(silenced)
		}
		if code, body := httpGet(t, r.addr, "/readyz"); code == http.StatusOK && f.exists("item:1") {
			t.Fatalf("/readyz = 200 %q %s after the silence began, streaming again since %s after it, with the UPDATE made during the silence not applied",
				body, time.Since(silenced).Round(time.Millisecond), streamedAt.Round(time.Millisecond))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if streamedAt == 0 {
		t.Fatal("the daemon did not stream again while Redis refused UNLINK: the test shows nothing")
	}
	t.Logf("streaming again %s after the silence began; /readyz 503 while the backlog could not be applied", streamedAt.Round(time.Millisecond))
	r.do("ACL", "SETUSER", "pginv", "+unlink")
	f.waitGone("item:1")
	waitStatus(t, r.addr, "/readyz", http.StatusOK, 30*time.Second)
}
