package invalidator

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

// TestClusterSpread applies keys and patterns whose matches live on every
// master of a cluster.
func TestClusterSpread(t *testing.T) {
	ctx := context.Background()
	cl := startCluster(t)
	inv := newTopologyInvalidator(t, Options{Mode: ModeCluster, Addrs: cl.Addrs()[:2], ScanCount: 50, PipelineSize: 200})
	rdb := clusterClient(t, cl)

	var kv []string
	for i := range 1000 {
		kv = append(kv, "a:"+strconv.Itoa(i), "x", "b:"+strconv.Itoa(i), "x", "v:"+strconv.Itoa(i), "7")
	}
	clusterSet(t, rdb, 0, kv...)
	perMaster := testenv.KeysPerMaster(t, rdb, "b:*")
	if len(perMaster) != 3 {
		t.Fatalf("b:* keys on %d masters, want 3: %v", len(perMaster), perMaster)
	}

	b := NewBatch()
	for i := range 500 {
		b.Add(pginvalidator.Command{Action: pginvalidator.Del, Key: "a:" + strconv.Itoa(i)})
		b.Add(pginvalidator.Command{Action: pginvalidator.Incr, Key: "n:" + strconv.Itoa(i)})
	}
	b.Add(pginvalidator.Command{Action: pginvalidator.DelPattern, Key: "b:*"})
	b.Add(pginvalidator.Command{Action: pginvalidator.IncrPattern, Key: "v:*"})
	b.EndTx(0)
	if err := inv.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	if got := testenv.KeysPerMaster(t, rdb, "a:*"); sum(got) != 500 {
		t.Errorf("a:* keys left = %v, want 500 in all", got)
	}
	if got := testenv.KeysPerMaster(t, rdb, "b:*"); sum(got) != 0 {
		t.Errorf("b:* keys left = %v, want none", got)
	}
	for _, k := range []string{"n:0", "n:499", "v:0", "v:999", "a:500"} {
		want := map[string]string{"n:0": "1", "n:499": "1", "v:0": "8", "v:999": "8", "a:500": "x"}[k]
		if got := rdb.Get(ctx, k).Val(); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if st := inv.Stats(); st.Del != 500 || st.Incr != 500 || st.DelPatternKeys != 1000 || st.IncrPatternKeys != 1000 || st.Retries != 0 {
		t.Errorf("Stats() = %+v, want Del 500, Incr 500, DelPatternKeys 1000, IncrPatternKeys 1000, no retries", st)
	}
}

// TestClusterRedirects moves a slot under the invalidator's feet: first
// half-way (the old master answers ASK), then for good (MOVED). Each
// command is applied once, where Redis said.
func TestClusterRedirects(t *testing.T) {
	ctx := context.Background()
	cl := startCluster(t)
	inv := newTopologyInvalidator(t, Options{Mode: ModeCluster, Addrs: cl.Addrs()})
	if err := inv.Ping(ctx); err != nil { // loads the slot map
		t.Fatal(err)
	}
	const key = "moving"
	src, err := cl.Master(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	srcC := nodeClient(t, src.Addr())
	s, err := srcC.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	var dst *localsvc.RedisNode
	var masters []*redis.Client
	for _, n := range cl.Nodes {
		c := nodeClient(t, n.Addr())
		if info := c.Info(ctx, "replication").Val(); strings.Contains(info, "role:master") {
			masters = append(masters, c)
			if n != src && dst == nil {
				dst = n
			}
		}
	}
	dstC := nodeClient(t, dst.Addr())
	srcID, dstID := srcC.ClusterMyID(ctx).Val(), dstC.ClusterMyID(ctx).Val()
	mustDo(t, dstC, "CLUSTER", "SETSLOT", s, "IMPORTING", srcID)
	mustDo(t, srcC, "CLUSTER", "SETSLOT", s, "MIGRATING", dstID)

	apply := func() {
		t.Helper()
		b := NewBatch()
		b.Add(pginvalidator.Command{Action: pginvalidator.Incr, Key: key})
		b.EndTx(0)
		if err := inv.Apply(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	apply() // the key is not on src: ASK, then ASKING + INCR on dst
	pipe := dstC.Pipeline()
	pipe.Do(ctx, "ASKING")
	get := pipe.Get(ctx, key)
	if _, err := pipe.Exec(ctx); err != nil || get.Val() != "1" {
		t.Fatalf("after ASK, %s on the importing master = %q, %v; want 1", key, get.Val(), err)
	}

	for _, c := range masters { // the slot now belongs to dst
		mustDo(t, c, "CLUSTER", "SETSLOT", s, "NODE", dstID)
	}
	apply() // the invalidator still maps the slot to src: MOVED, then INCR on dst
	if got := dstC.Get(ctx, key).Val(); got != "2" {
		t.Errorf("after MOVED, %s = %q, want 2", key, got)
	}
	// At least one ASK and one MOVED; a node that has not yet seen the
	// SETSLOT may redirect once more. The value above shows each INCR ran once.
	if st := inv.Stats(); st.Incr != 2 || st.Errors < 2 || st.Skipped != 0 {
		t.Errorf("Stats() = %+v, want Incr 2, Errors >= 2 (an ASK and a MOVED), Skipped 0", st)
	}
}

// TestClusterFailoverWaitReplicas kills a master while batches are applied
// with wait_replicas = 1: every key of every batch Apply reported applied
// must be gone from the master that replaced it.
func TestClusterFailoverWaitReplicas(t *testing.T) {
	ctx := context.Background()
	cl := startCluster(t)
	rdb := clusterClient(t, cl)
	inv := newTopologyInvalidator(t, Options{Mode: ModeCluster, Addrs: cl.Addrs(), WaitReplicas: 1,
		WaitTimeout: 200 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	victim, err := cl.Master(ctx, "f:0")
	if err != nil {
		t.Fatal(err)
	}
	failoverUnderLoad(t, "f:", func(kv ...string) { clusterSet(t, rdb, 1, kv...) }, inv,
		func() {
			victim.Kill()
			waitFor(t, 30*time.Second, func() bool {
				n, err := cl.Master(ctx, "f:0")
				return err == nil && n != victim
			}, "no replica took over from the killed master")
			if err := victim.Start(ctx); err != nil { // it comes back as a replica: WAIT 1 can succeed again
				t.Fatal(err)
			}
		},
		func(key string) bool { return rdb.Exists(ctx, key).Val() == 1 })
}

// TestSentinelFailoverWaitReplicas kills the master of a sentinel group
// while batches are applied with wait_replicas = 1.
func TestSentinelFailoverWaitReplicas(t *testing.T) {
	ctx := context.Background()
	sg, err := localsvc.StartRedisSentinel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sg.Close() })
	inv := newTopologyInvalidator(t, Options{Mode: ModeSentinel, Addrs: sg.SentinelAddrs(), MasterName: localsvc.SentinelMaster,
		WaitReplicas: 1, WaitTimeout: 200 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	rdb := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: localsvc.SentinelMaster, SentinelAddrs: sg.SentinelAddrs(), DisableIdentity: true})
	t.Cleanup(func() { rdb.Close() })
	set := func(kv ...string) {
		pipe := rdb.Pipeline()
		pipe.MSet(ctx, kv)
		wait := pipe.Do(ctx, "WAIT", 1, 5000)
		if _, err := pipe.Exec(ctx); err != nil || wait.Val() != int64(1) {
			t.Fatalf("MSET + WAIT 1: %v, %v", wait.Val(), err)
		}
	}
	old := sg.Master.Addr()
	failoverUnderLoad(t, "s:", set, inv,
		func() {
			sg.Master.Kill()
			waitFor(t, 30*time.Second, func() bool {
				a, err := sg.MasterAddr(ctx)
				return err == nil && a != old
			}, "the sentinels did not promote the replica")
			if err := sg.Master.Start(ctx); err != nil {
				t.Fatal(err)
			}
			// The sentinels would make it a replica too, but only some 15s
			// later. Until then WAIT 1 fails: the new master has no replica.
			a, _ := sg.MasterAddr(ctx)
			host, port, _ := strings.Cut(a, ":")
			mustDo(t, nodeClient(t, sg.Master.Addr()), "REPLICAOF", host, port)
		},
		func(key string) bool { return rdb.Exists(ctx, key).Val() == 1 })
	if a, _ := sg.MasterAddr(ctx); a == old {
		t.Errorf("master is still %s: no failover happened", old)
	}
}

// failoverUnderLoad caches keys prefix0..N with set (which must wait for a
// replica), then deletes them in batches while kill runs once a few batches
// are in, and checks with exists that every key of every batch Apply
// reported applied is gone.
func failoverUnderLoad(t *testing.T, prefix string, set func(kv ...string), inv *Invalidator, kill func(), exists func(key string) bool) {
	t.Helper()
	ctx := context.Background()
	const keys, per = 20000, 50
	var kv []string
	for i := range keys {
		kv = append(kv, prefix+strconv.Itoa(i), "cached")
	}
	set(kv...)

	var applied atomic.Int64 // batches Apply returned nil for, in order
	done := make(chan error, 1)
	go func() {
		for i := 0; i < keys/per; i++ {
			b := NewBatch()
			for j := i * per; j < (i+1)*per; j++ {
				b.Add(pginvalidator.Command{Action: pginvalidator.Del, Key: prefix + strconv.Itoa(j)})
			}
			b.Add(pginvalidator.Command{Action: pginvalidator.Incr, Key: prefix + "version"})
			b.EndTx(0)
			actx, cancel := context.WithTimeout(ctx, 60*time.Second)
			err := inv.Apply(actx, b)
			cancel()
			if err != nil {
				done <- fmt.Errorf("batch %d: %w", i, err)
				return
			}
			applied.Add(1)
		}
		done <- nil
	}()
	waitFor(t, 30*time.Second, func() bool { return applied.Load() >= 20 }, "20 batches not applied")
	start := time.Now()
	kill()
	t.Logf("failover took %s, %d batches applied before it ended", time.Since(start).Round(time.Millisecond), applied.Load())
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var left []string
	for i := range keys {
		if k := prefix + strconv.Itoa(i); exists(k) {
			left = append(left, k)
		}
	}
	if len(left) > 0 {
		t.Errorf("%d keys Apply reported deleted are back after the failover, such as %v", len(left), left[:min(5, len(left))])
	}
	if st := inv.Stats(); st.Retries == 0 {
		t.Errorf("Stats() = %+v: no retry, so the failover went unnoticed", st)
	}
}

// TestTLSAndACL runs batches through a TLS-only Redis whose only user is an
// ACL user, and checks that the errors of a wrong setup name what is wrong.
func TestTLSAndACL(t *testing.T) {
	ctx := context.Background()
	const pw = "s3cret-Pw"
	srv, err := localsvc.StartTLSRedis(ctx, "invalidator", pw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	rdb := srv.Client()
	t.Cleanup(func() { rdb.Close() })
	base := Options{URL: "redis://" + srv.Addr() + "/0", Username: "invalidator", Password: pw, TLS: true, TLSCA: srv.Certs.CA,
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)}

	for _, tt := range []struct {
		name string
		opts func(o *Options)
	}{
		{"CA only", func(o *Options) {}},
		{"client certificate", func(o *Options) { o.TLSCert, o.TLSKey = srv.Certs.Client, srv.Certs.ClientKey }},
		{"rediss url and server name", func(o *Options) {
			o.URL, o.TLS, o.TLSServerName = "rediss://"+srv.Addr()+"/0", false, "localhost"
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := base
			tt.opts(&o)
			inv := newTopologyInvalidator(t, o)
			if err := rdb.Set(ctx, "tls:k", "x", 0).Err(); err != nil {
				t.Fatal(err)
			}
			b := NewBatch()
			b.Add(pginvalidator.Command{Action: pginvalidator.Del, Key: "tls:k"})
			b.EndTx(0)
			if err := inv.Apply(ctx, b); err != nil {
				t.Fatal(err)
			}
			if n := rdb.Exists(ctx, "tls:k").Val(); n != 0 {
				t.Errorf("tls:k still exists")
			}
		})
	}

	other, err := localsvc.WriteTestCerts(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		opts    func(o *Options)
		newErr  string // in New's error; empty: New succeeds
		pingErr string // in Ping's error
	}{
		{"wrong CA", func(o *Options) { o.TLSCA = other.CA }, "", "tls: failed to verify certificate: x509: certificate signed by unknown authority"},
		{"wrong server name", func(o *Options) { o.TLSServerName = "redis.example" }, "", "x509: certificate is valid for localhost, not redis.example"},
		{"wrong password", func(o *Options) { o.Password = "not-" + pw }, "", "WRONGPASS"},
		{"no TLS", func(o *Options) { o.TLS, o.TLSCA = false, "" }, "", "ping redis 127.0.0.1"},
		{"missing CA file", func(o *Options) { o.TLSCA = "/nonexistent/ca.pem" }, "redis tls_ca /nonexistent/ca.pem: no such file or directory", ""},
		{"CA not PEM", func(o *Options) { o.TLSCA = srv.Dir + "/redis.log" }, "redis tls_ca " + srv.Dir + "/redis.log: no PEM certificate in the file", ""},
		{"cert without key", func(o *Options) { o.TLSCert = srv.Certs.Client }, "redis tls_cert is set without tls_key; give both, or neither", ""},
		{"key of another cert", func(o *Options) { o.TLSCert, o.TLSKey = srv.Certs.Client, other.ClientKey }, "redis tls_cert " + srv.Certs.Client + " and tls_key " + other.ClientKey + ": tls: private key does not match public key", ""},
		{"tls_ca with TLS off", func(o *Options) { o.TLS = false }, "redis tls_ca is set but TLS is off: set tls = true (or use a rediss:// url)", ""},
		{"bad mode", func(o *Options) { o.Mode = "replicated" }, `redis mode "replicated": want single, cluster or sentinel`, ""},
		{"sentinel without master", func(o *Options) { o.Mode, o.Addrs = ModeSentinel, []string{"127.0.0.1:1"} }, "redis mode sentinel: master is empty", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := base
			tt.opts(&o)
			inv, err := New(o)
			if tt.newErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.newErr) {
					t.Fatalf("New: %v, want an error with %q", err, tt.newErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer inv.Close()
			err = inv.Ping(ctx)
			if err == nil || !strings.Contains(err.Error(), tt.pingErr) || strings.Contains(err.Error(), pw) {
				t.Fatalf("Ping: %v, want an error with %q and without the password", err, tt.pingErr)
			}
		})
	}
	if log := srv.Log(); strings.Contains(log, pw) {
		t.Errorf("the password is in the Redis log")
	}
}

func startCluster(t *testing.T) *localsvc.RedisCluster {
	t.Helper()
	start := time.Now()
	cl, err := localsvc.StartRedisCluster(context.Background(), 3, 1, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	t.Logf("cluster of 3 masters and 3 replicas up in %s", time.Since(start).Round(time.Millisecond))
	return cl
}

func newTopologyInvalidator(t *testing.T, opts Options) *Invalidator {
	t.Helper()
	SetLogger(slog.New(slog.DiscardHandler)) // a line per failed dial while a node is down
	t.Cleanup(func() { SetLogger(slog.Default()) })
	inv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	return inv
}

func clusterClient(t *testing.T, cl *localsvc.RedisCluster) *redis.ClusterClient {
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), DisableIdentity: true})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

func nodeClient(t *testing.T, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
	t.Cleanup(func() { c.Close() })
	return c
}

// clusterSet sets key, value pairs, in one pipeline per master, each
// ending with WAIT replicas when replicas > 0.
func clusterSet(t *testing.T, rdb *redis.ClusterClient, replicas int, kv ...string) {
	t.Helper()
	ctx := context.Background()
	byMaster := make(map[*redis.Client][]string)
	for i := 0; i < len(kv); i += 2 {
		m, err := rdb.MasterForKey(ctx, kv[i])
		if err != nil {
			t.Fatal(err)
		}
		byMaster[m] = append(byMaster[m], kv[i], kv[i+1])
	}
	for m, kv := range byMaster {
		pipe := m.Pipeline()
		for i := 0; i < len(kv); i += 2 {
			pipe.Set(ctx, kv[i], kv[i+1], 0)
		}
		var wait *redis.Cmd
		if replicas > 0 {
			wait = pipe.Do(ctx, "WAIT", replicas, 5000)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
		if wait != nil && wait.Val() != int64(replicas) {
			t.Fatalf("WAIT %d on %s = %v", replicas, m.Options().Addr, wait.Val())
		}
	}
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func waitFor(t *testing.T, within time.Duration, cond func() bool, msg string) {
	t.Helper()
	for deadline := time.Now().Add(within); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", within, msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
