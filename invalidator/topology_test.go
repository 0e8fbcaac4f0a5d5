package invalidator

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
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

// TestClusterPatternNeedsEverySlot seeds the invalidator with a node that
// has not joined the cluster: its CLUSTER SLOTS is empty, so the slot map
// names no master. A TRUNCATE pattern must not pass for done on it: Apply
// retries until the node has joined, then scans every master.
func TestClusterPatternNeedsEverySlot(t *testing.T) {
	ctx := context.Background()
	cl := startCluster(t)
	rdb := clusterClient(t, cl)
	clusterSet(t, rdb, 0, numbered("lone:", 1000)...)
	lone, err := cl.StartLoneNode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var logs testenv.SyncBuffer
	inv := newTopologyInvalidator(t, Options{Mode: ModeCluster, Addrs: []string{lone.Addr()},
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&logs, nil))})

	b := NewBatch()
	b.Add(pginvalidator.Command{Action: pginvalidator.DelPattern, Key: "lone:*"})
	b.EndTx(0)
	done := make(chan error, 1)
	go func() { done <- inv.Apply(ctx, b) }()
	select {
	case err := <-done:
		t.Fatalf("Apply returned %v on a slot map without masters; %d keys left", err, len(clusterKeys(t, rdb, "lone:*")))
	case <-time.After(time.Second):
	}
	if want := "the cluster's masters own 0 of 16384 slots"; !strings.Contains(logs.String(), want) {
		t.Errorf("logs do not say %q:\n%s", want, logs.String())
	}

	member := nodeClient(t, cl.Nodes[0].Addr())
	bus, err := member.ConfigGet(ctx, "cluster-port").Result()
	if err != nil {
		t.Fatal(err)
	}
	mustDo(t, nodeClient(t, lone.Addr()), "CLUSTER", "MEET", "127.0.0.1", cl.Nodes[0].Port, bus["cluster-port"])
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Apply still running 30s after the node joined the cluster")
	}
	if left := clusterKeys(t, rdb, "lone:*"); len(left) > 0 {
		t.Errorf("%d keys left after the pattern, such as %v", len(left), left[:min(5, len(left))])
	}
	if st := inv.Stats(); st.DelPatternKeys != 1000 || st.Retries == 0 {
		t.Errorf("Stats() = %+v, want DelPatternKeys 1000 and retries", st)
	}
}

// TestClusterFailoverWaitReplicas kills a master with SIGKILL while batches
// are applied with wait_replicas = 1, and does not restart it: its replica
// takes over with no replica of its own. Every key of every batch Apply
// reported applied must be gone, and batches must be applied again within
// 10s of the promotion, the promoted master reported degraded meanwhile.
func TestClusterFailoverWaitReplicas(t *testing.T) {
	ctx := context.Background()
	cl := startCluster(t)
	rdb := clusterClient(t, cl)
	var logs testenv.SyncBuffer
	inv := newTopologyInvalidator(t, Options{Mode: ModeCluster, Addrs: cl.Addrs(), WaitReplicas: 1,
		WaitTimeout: 200 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	victim, err := cl.Master(ctx, "f:0")
	if err != nil {
		t.Fatal(err)
	}
	replica := replicaOf(t, cl.Nodes, victim)
	failoverUnderLoad(t, "f:", func(kv ...string) { clusterSet(t, rdb, 1, kv...) }, inv,
		victim.Kill, func() bool { return isMaster(t, replica) },
		func(pattern string) []string { return clusterKeys(t, clusterClient(t, cl), pattern) })
	checkDegraded(t, inv, &logs, replica.Addr())
}

// TestSentinelFailoverWaitReplicas kills the master of a sentinel group
// (one master, one replica) with SIGKILL while batches are applied with
// wait_replicas = 1, and does not restart it.
func TestSentinelFailoverWaitReplicas(t *testing.T) {
	ctx := context.Background()
	sg, err := localsvc.StartRedisSentinel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sg.Close() })
	var logs testenv.SyncBuffer
	inv := newTopologyInvalidator(t, Options{Mode: ModeSentinel, Addrs: sg.SentinelAddrs(), MasterName: localsvc.SentinelMaster,
		WaitReplicas: 1, WaitTimeout: 200 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
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
	failoverUnderLoad(t, "s:", set, inv,
		sg.Master.Kill, func() bool { return isMaster(t, sg.Replica) },
		func(pattern string) []string { return keys(t, rdb, pattern) })
	if a, err := sg.MasterAddr(ctx); a != sg.Replica.Addr() {
		t.Errorf("the sentinels name %s (%v) as the master, want the replica %s", a, err, sg.Replica.Addr())
	}
	checkDegraded(t, inv, &logs, sg.Replica.Addr())
}

// TestFrozenReplica freezes (SIGSTOP) the only replica of a master applied
// with wait_replicas = 1: the master keeps it "online" until its
// repl-timeout (60s), but it acknowledges nothing. Apply must go on within
// seconds, the master reported degraded, and once the replica thaws, WAIT
// waits for it again.
func TestFrozenReplica(t *testing.T) {
	ctx := context.Background()
	sg, err := localsvc.StartRedisSentinel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sg.Close() })
	var logs testenv.SyncBuffer
	inv := newTopologyInvalidator(t, Options{Mode: ModeSentinel, Addrs: sg.SentinelAddrs(), MasterName: localsvc.SentinelMaster,
		WaitReplicas: 1, WaitTimeout: 200 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	master := nodeClient(t, sg.Master.Addr())
	// The replica may still be in its first sync when the sentinels answer;
	// the test starts from a master whose replica is online.
	waitFor(t, 30*time.Second, func() bool {
		return strings.Contains(master.Info(ctx, "replication").Val(), "state=online")
	}, "the master's replica not online 30s after start")
	apply := func(key string) time.Duration {
		t.Helper()
		set(t, master, key, "cached")
		b := NewBatch()
		b.Add(pginvalidator.Command{Action: pginvalidator.Del, Key: key})
		b.EndTx(0)
		start := time.Now()
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := inv.Apply(actx, b); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	apply("frozen:0")
	if got := inv.Degraded(); len(got) != 0 {
		t.Fatalf("Degraded() = %+v with the replica in sync, want none", got)
	}

	if err := sg.Replica.Pause(); err != nil {
		t.Fatal(err)
	}
	took := apply("frozen:1")
	t.Logf("with the replica frozen, Apply took %s", took.Round(time.Millisecond))
	if took > 10*time.Second {
		t.Errorf("Apply took %s with the replica frozen, want under 10s", took)
	}
	if got := inv.Degraded(); len(got) != 1 || got[0].Addr != sg.Master.Addr() || got[0].Replicas != 0 {
		t.Errorf("Degraded() = %+v, want %s with 0 replicas", got, sg.Master.Addr())
	}

	if err := sg.Replica.Resume(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool { return inv.Ping(ctx) == nil && len(inv.Degraded()) == 0 },
		"the master still degraded 10s after its replica thawed")
	apply("frozen:2")
	replica := nodeClient(t, sg.Replica.Addr())
	if n := replica.Exists(ctx, "frozen:0", "frozen:1", "frozen:2").Val(); n != 0 {
		t.Errorf("%d of the deleted keys still on the replica", n)
	}
	for _, msg := range []string{"redis master has fewer replicas than wait_replicas", "redis master has its replicas again"} {
		if n := strings.Count(logs.String(), msg); n != 1 {
			t.Errorf("%q logged %d times, want once:\n%s", msg, n, logs.String())
		}
	}
}

// failoverUnderLoad caches keys prefix0..N with set (which must wait for a
// replica), then deletes them in batches, and once a few batches are in,
// calls kill, which must not bring the master back, and waits until
// promoted reports that a replica took over (polled every 20ms; the
// promoted replica itself knows first). Batches must be applied again
// within 10s of the promotion, and every key of every batch Apply reported
// applied must be gone: remaining lists the keys matching a pattern.
func failoverUnderLoad(t *testing.T, prefix string, set func(kv ...string), inv *Invalidator, kill func(), promoted func() bool, remaining func(pattern string) []string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const keys, per = 20000, 50
	var kv []string
	for i := range keys {
		kv = append(kv, prefix+strconv.Itoa(i), "cached")
	}
	set(kv...)

	var applied atomic.Int64     // batches Apply returned nil for, in order
	var lastApplied atomic.Int64 // when the last of them returned, Unix ns
	done := make(chan error, 1)
	go func() {
		for i := 0; i < keys/per; i++ {
			b := NewBatch()
			for j := i * per; j < (i+1)*per; j++ {
				b.Add(pginvalidator.Command{Action: pginvalidator.Del, Key: prefix + strconv.Itoa(j)})
			}
			b.Add(pginvalidator.Command{Action: pginvalidator.Incr, Key: prefix + "version"})
			b.EndTx(0)
			if err := inv.Apply(ctx, b); err != nil {
				done <- fmt.Errorf("batch %d: %w", i, err)
				return
			}
			lastApplied.Store(time.Now().UnixNano())
			applied.Add(1)
		}
		done <- nil
	}()
	waitFor(t, 30*time.Second, func() bool { return applied.Load() >= 20 }, "20 batches not applied")
	start := time.Now()
	kill()
	waitFor(t, 30*time.Second, promoted, "no replica took over from the killed master")
	at, before := time.Now(), applied.Load()
	t.Logf("promotion seen %s after the kill, %d batches applied by then", at.Sub(start).Round(time.Millisecond), before)
	resumed := func() bool {
		return applied.Load() == keys/per || applied.Load() > before && time.Unix(0, lastApplied.Load()).After(at)
	}
	for !resumed() {
		if time.Since(at) > 10*time.Second {
			t.Fatalf("no batch applied within 10s of the promotion (%d batches applied in all); Stats() = %+v",
				applied.Load(), inv.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("invalidation resumed %s after the promotion was seen", time.Since(at).Round(time.Millisecond))
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("batches still running 60s after the promotion: %d of %d applied", applied.Load(), keys/per)
	}
	var left []string
	for _, k := range remaining(prefix + "*") {
		if k != prefix+"version" {
			left = append(left, k)
		}
	}
	slices.Sort(left)
	if len(left) > 0 {
		t.Errorf("%d keys Apply reported deleted are back after the failover, such as %v", len(left), left[:min(5, len(left))])
	}
	if st := inv.Stats(); st.Retries == 0 {
		t.Errorf("Stats() = %+v: no retry, so the failover went unnoticed", st)
	}
}

// checkDegraded checks that inv reports master, which has no replica, as
// degraded, and logged it once.
func checkDegraded(t *testing.T, inv *Invalidator, logs *testenv.SyncBuffer, master string) {
	t.Helper()
	if got := inv.Degraded(); len(got) != 1 || got[0].Addr != master || got[0].Replicas != 0 {
		t.Errorf("Degraded() = %+v, want %s with 0 replicas", got, master)
	}
	if n := strings.Count(logs.String(), "redis master has fewer replicas than wait_replicas"); n != 1 {
		t.Errorf("degraded logged %d times, want once:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "addr="+master) {
		t.Errorf("no log line names %s:\n%s", master, logs.String())
	}
}

// TestSentinelAuth runs batches through sentinels that require a password
// (requirepass) or an ACL user, in front of a master and replica with a
// password of their own, and checks that a wrong or missing sentinel
// password fails with Redis's error, and never prints a password.
func TestSentinelAuth(t *testing.T) {
	ctx := context.Background()
	const dataPW, sentinelPW = "data-Pw-1", "sentinel-Pw-2"
	for _, user := range []string{"", "watcher"} {
		t.Run("user "+cmp.Or(user, "none"), func(t *testing.T) {
			sg, err := localsvc.StartRedisSentinelWith(ctx, localsvc.SentinelOptions{Password: dataPW,
				SentinelUsername: user, SentinelPassword: sentinelPW})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { sg.Close() })
			var logs testenv.SyncBuffer
			SetLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
			t.Cleanup(func() { SetLogger(slog.Default()) })
			base := Options{Mode: ModeSentinel, Addrs: sg.SentinelAddrs(), MasterName: localsvc.SentinelMaster,
				Password: dataPW, SentinelUsername: user, SentinelPassword: sentinelPW, WaitReplicas: 1,
				MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&logs, nil))}

			inv, err := New(base)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { inv.Close() })
			master := redis.NewClient(&redis.Options{Addr: sg.Master.Addr(), Password: dataPW, DisableIdentity: true})
			t.Cleanup(func() { master.Close() })
			set(t, master, "auth:k", "x")
			b := NewBatch()
			b.Add(pginvalidator.Command{Action: pginvalidator.Del, Key: "auth:k"})
			b.EndTx(0)
			if err := inv.Apply(ctx, b); err != nil {
				t.Fatal(err)
			}
			if n := master.Exists(ctx, "auth:k").Val(); n != 0 {
				t.Errorf("auth:k still exists")
			}

			for _, tt := range []struct {
				name string
				opts func(o *Options)
				want string
			}{
				{"wrong sentinel password", func(o *Options) { o.SentinelPassword = "not-" + sentinelPW }, "WRONGPASS"},
				{"no sentinel password", func(o *Options) { o.SentinelUsername, o.SentinelPassword = "", "" }, "NOAUTH"},
				{"sentinel password as the data password", func(o *Options) { o.SentinelPassword = dataPW }, "WRONGPASS"},
			} {
				t.Run(tt.name, func(t *testing.T) {
					o := base
					tt.opts(&o)
					inv, err := New(o)
					if err != nil {
						t.Fatal(err)
					}
					defer inv.Close()
					err = inv.Ping(ctx)
					if err == nil || !strings.Contains(err.Error(), tt.want) {
						t.Fatalf("Ping: %v, want an error with %q", err, tt.want)
					}
					t.Logf("Ping: %v", err)
					for _, pw := range []string{dataPW, sentinelPW} {
						if strings.Contains(err.Error(), pw) {
							t.Errorf("Ping's error holds a password: %v", err)
						}
					}
				})
			}
			for _, pw := range []string{dataPW, sentinelPW} {
				if strings.Contains(logs.String(), pw) {
					t.Errorf("a password is in the logs:\n%s", logs.String())
				}
			}
		})
	}
}

// TestSentinelACL runs batches, across a failover, as the users
// ACLRules and SentinelACLRules describe: one on the master and replica,
// one on the sentinels (beside the user the sentinels use among
// themselves). ACL LOG must stay empty everywhere.
func TestSentinelACL(t *testing.T) {
	ctx := context.Background()
	const pw = "acl-Pw-3"
	sg, err := localsvc.StartRedisSentinelWith(ctx, localsvc.SentinelOptions{
		SentinelUsername: "peer", SentinelPassword: "peer-Pw",
		SentinelUsers: []string{"user pginv on >" + pw + " " + SentinelACLRules()},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sg.Close() })
	opts := Options{Mode: ModeSentinel, Addrs: sg.SentinelAddrs(), MasterName: localsvc.SentinelMaster,
		Username: "pginv", Password: pw, SentinelUsername: "pginv", SentinelPassword: pw, WaitReplicas: 1,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)}
	rules, err := ACLRules(opts, ACLNeeds{KeyPatterns: []string{"sa:*"}, Del: true, Incr: true, DelPattern: true})
	if err != nil {
		t.Fatal(err)
	}
	nodes := []*redis.Client{nodeClient(t, sg.Master.Addr()), nodeClient(t, sg.Replica.Addr())}
	for _, c := range nodes {
		args := []any{"ACL", "SETUSER", "pginv", "on", ">" + pw}
		for _, r := range strings.Fields(rules) {
			args = append(args, r)
		}
		mustDo(t, c, args...)
		mustDo(t, c, "ACL", "LOG", "RESET")
	}
	inv := newTopologyInvalidator(t, opts)
	apply := func(i int) {
		t.Helper()
		k := "sa:" + strconv.Itoa(i)
		b := NewBatch()
		b.Add(pginvalidator.Command{Action: pginvalidator.Del, Key: k})
		b.Add(pginvalidator.Command{Action: pginvalidator.Incr, Key: "sa:n"})
		b.Add(pginvalidator.Command{Action: pginvalidator.DelPattern, Key: "sa:p:*"})
		b.EndTx(0)
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := inv.Apply(actx, b); err != nil {
			t.Fatal(err)
		}
	}
	apply(1)
	// Without wait_replicas the INCR may not have reached the replica when
	// the master dies; this test is about the users' rights, not that window.
	waitFor(t, 30*time.Second, func() bool { return nodes[1].Get(ctx, "sa:n").Val() == "1" }, "sa:n never reached the replica")
	sg.Master.Kill()
	waitFor(t, 30*time.Second, func() bool { return isMaster(t, sg.Replica) }, "no failover")
	apply(2)
	if got := nodes[1].Get(ctx, "sa:n").Val(); got != "2" {
		t.Errorf("sa:n on the new master = %q, want 2", got)
	}
	for i, n := range sg.Sentinels {
		c := redis.NewClient(&redis.Options{Addr: n.Addr(), Username: "peer", Password: "peer-Pw", DisableIdentity: true})
		defer c.Close()
		if log := c.Do(ctx, "ACL", "LOG").Val(); fmt.Sprint(log) != "[]" {
			t.Errorf("ACL LOG on sentinel %d = %v, want it empty", i, log)
		}
	}
	if log := nodes[1].Do(ctx, "ACL", "LOG").Val(); fmt.Sprint(log) != "[]" {
		t.Errorf("ACL LOG on the new master = %v, want it empty", log)
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

// numbered returns the key, value pairs of n keys, prefix and 0 to n-1,
// each holding "x".
func numbered(prefix string, n int) []string {
	kv := make([]string, 0, 2*n)
	for i := range n {
		kv = append(kv, prefix+strconv.Itoa(i), "x")
	}
	return kv
}

// clusterKeys returns the keys matching pattern on every master.
func clusterKeys(t *testing.T, rdb *redis.ClusterClient, pattern string) []string {
	t.Helper()
	var mu sync.Mutex // protects all
	var all []string
	err := rdb.ForEachMaster(context.Background(), func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			mu.Lock()
			all = append(all, iter.Val())
			mu.Unlock()
		}
		return iter.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	return all
}

// replicaOf returns the node that replicates master.
func replicaOf(t *testing.T, nodes []*localsvc.RedisNode, master *localsvc.RedisNode) *localsvc.RedisNode {
	t.Helper()
	for _, n := range nodes {
		info := nodeClient(t, n.Addr()).Info(context.Background(), "replication").Val()
		if strings.Contains(info, "role:slave") && strings.Contains(info, "master_port:"+strconv.Itoa(master.Port)+"\r\n") {
			return n
		}
	}
	t.Fatalf("no node replicates %s", master.Addr())
	return nil
}

// isMaster reports whether n says it is a master now.
func isMaster(t *testing.T, n *localsvc.RedisNode) bool {
	c := redis.NewClient(&redis.Options{Addr: n.Addr(), DisableIdentity: true, MaxRetries: -1})
	defer c.Close()
	return strings.Contains(c.Info(context.Background(), "replication").Val(), "role:master")
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
