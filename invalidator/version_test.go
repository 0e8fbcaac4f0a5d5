package invalidator

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

func version(k string) pginvalidator.Command {
	return pginvalidator.Command{Action: pginvalidator.Version, Key: k}
}

func versionPattern(k string) pginvalidator.Command {
	return pginvalidator.Command{Action: pginvalidator.VersionPattern, Key: k}
}

// lsnValue is the version value of lsn.
func lsnValue(lsn uint64) string { return pginvalidator.LSN(lsn).VersionValue() }

func TestBatchVersions(t *testing.T) {
	type endTx struct{ lsn pginvalidator.LSN }
	tests := []struct {
		name         string
		steps        []any // a Command to Add, or an endTx
		wantLen      int
		wantVersions map[string]pginvalidator.LSN
		wantPatterns map[string]pginvalidator.LSN
	}{
		{"one transaction sets its keys once, to its end LSN",
			[]any{version("a"), version("a"), version("b"), version("a"), endTx{0x100}},
			2, map[string]pginvalidator.LSN{"a": 0x100, "b": 0x100}, map[string]pginvalidator.LSN{}},
		{"across transactions the last, highest LSN wins",
			[]any{version("a"), endTx{0x100}, version("a"), version("b"), endTx{0x200}, version("b"), endTx{0x300}},
			2, map[string]pginvalidator.LSN{"a": 0x200, "b": 0x300}, map[string]pginvalidator.LSN{}},
		{"the open transaction waits for its end",
			[]any{version("a"), endTx{0x100}, version("a"), version("c"), versionPattern("p:*")},
			1, map[string]pginvalidator.LSN{"a": 0x100}, map[string]pginvalidator.LSN{}},
		{"patterns keep the highest LSN, apart from keys",
			[]any{versionPattern("p:*"), version("p:*"), endTx{0x100}, versionPattern("p:*"), versionPattern("q:*"), endTx{0x180}},
			3, map[string]pginvalidator.LSN{"p:*": 0x100}, map[string]pginvalidator.LSN{"p:*": 0x180, "q:*": 0x180}},
	}
	b := NewBatch()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b.Reset()
			for _, s := range tt.steps {
				switch s := s.(type) {
				case pginvalidator.Command:
					b.Add(s)
				case endTx:
					b.EndTx(s.lsn)
				}
			}
			if got := b.Len(); got != tt.wantLen {
				t.Errorf("Len() = %d, want %d", got, tt.wantLen)
			}
			if fmt.Sprint(b.versions) != fmt.Sprint(tt.wantVersions) {
				t.Errorf("versions = %v, want %v", b.versions, tt.wantVersions)
			}
			if fmt.Sprint(b.versionPatterns) != fmt.Sprint(tt.wantPatterns) {
				t.Errorf("versionPatterns = %v, want %v", b.versionPatterns, tt.wantPatterns)
			}
		})
	}
}

// TestBatchSpillsVersions checks that a transaction holding more than
// MaxOpenVersions version keys spills them with the LSN just past the start
// of its commit record, and that EndTx moves the keys touched after the
// spill on to its end LSN.
func TestBatchSpillsVersions(t *testing.T) {
	const commit, end = pginvalidator.LSN(0x5000), pginvalidator.LSN(0x5040)
	b := NewBatch()
	b.BeginTx(commit)
	for i := range MaxOpenVersions {
		b.Add(version("k:" + strconv.Itoa(i)))
	}
	if b.Len() != 0 {
		t.Fatalf("Len() = %d with %d open version keys, want 0", b.Len(), MaxOpenVersions)
	}
	b.Add(version("k:last"))
	if b.Len() != MaxOpenVersions+1 || b.versions["k:0"] != commit+1 || b.versions["k:last"] != commit+1 {
		t.Fatalf("after the spill: Len() = %d, k:0 at %v, k:last at %v; want %d keys at %v",
			b.Len(), b.versions["k:0"], b.versions["k:last"], MaxOpenVersions+1, commit+1)
	}
	b.Add(version("k:0")) // touched again after the spill
	b.Add(version("k:new"))
	b.EndTx(end)
	if b.versions["k:0"] != end || b.versions["k:new"] != end || b.versions["k:1"] != commit+1 {
		t.Errorf("after EndTx: k:0 at %v, k:new at %v, k:1 at %v; want %v, %v, %v",
			b.versions["k:0"], b.versions["k:new"], b.versions["k:1"], end, end, commit+1)
	}

	// Without BeginTx nothing is spilled: there is no LSN to spill with.
	b.Reset()
	for i := range MaxOpenVersions + 10 {
		b.Add(version("k:" + strconv.Itoa(i)))
	}
	if b.Len() != 0 {
		t.Errorf("Len() = %d without BeginTx, want 0: nothing spilled", b.Len())
	}
}

// applyVersions applies one transaction ending at lsn that sets cmds.
func applyVersions(t *testing.T, inv *Invalidator, lsn uint64, cmds ...pginvalidator.Command) {
	t.Helper()
	b := NewBatch()
	for _, c := range cmds {
		b.Add(c)
	}
	b.EndTx(pginvalidator.LSN(lsn))
	if err := inv.Apply(context.Background(), b); err != nil {
		t.Fatal(err)
	}
}

// TestApplyVersion checks the version script on a real Redis: it creates
// a missing key, moves a key only forward, leaves it alone on a replay, and
// replaces a value that is not an LSN.
func TestApplyVersion(t *testing.T) {
	ctx := context.Background()
	inv, rdb := newInvalidator(t, env.RedisURL, Options{})
	p := testenv.UniqueName() + ":"
	k := p + "cache:version:products"

	steps := []struct {
		name string
		lsn  uint64
		want string
	}{
		{"a missing key is created", 0x16B374D848, "00000016B374D848"},
		{"a replay of the same transaction changes nothing", 0x16B374D848, "00000016B374D848"},
		{"a lower LSN never overwrites", 0x16B374D000, "00000016B374D848"},
		{"a lower LSN whose low half is higher", 0x15FFFFFFFF, "00000016B374D848"},
		{"a higher LSN in the low half", 0x16B374D849, "00000016B374D849"},
		{"a higher LSN in the high half", 0x17_0000_0000, "0000001700000000"},
	}
	for _, s := range steps {
		applyVersions(t, inv, s.lsn, version(k))
		if got := rdb.Get(ctx, k).Val(); got != s.want {
			t.Errorf("%s: LSN %s left %q, want %q", s.name, pginvalidator.LSN(s.lsn), got, s.want)
		}
	}
	if st := inv.Stats(); st.Version != 3 || st.VersionKept != 3 || st.Errors != 0 || st.Skipped != 0 {
		t.Errorf("Stats() = %+v, want Version 3, VersionKept 3, no errors", st)
	}

	// The largest LSN and its neighbours: no precision lost in Lua.
	big := p + "big"
	applyVersions(t, inv, 0xFFFF_FFFF_FFFF_FFFE, version(big))
	applyVersions(t, inv, 0xFFFF_FFFF_FFFF_FFFD, version(big))
	if got := rdb.Get(ctx, big).Val(); got != "FFFFFFFFFFFFFFFE" {
		t.Errorf("big = %q, want FFFFFFFFFFFFFFFE", got)
	}
	applyVersions(t, inv, 0xFFFF_FFFF_FFFF_FFFF, version(big))
	if got := rdb.Get(ctx, big).Val(); got != "FFFFFFFFFFFFFFFF" {
		t.Errorf("big = %q, want FFFFFFFFFFFFFFFF", got)
	}

	// Values that are not an LSN are replaced, even by a small LSN: a
	// counter left by incr, lower-case hex, or a seed an application wrote.
	for _, old := range []string{"17", "ffffffffffffffff", "FFFFFFFFFFFFFFFFF", "seed-9f3a", ""} {
		key := p + "replace:" + old
		set(t, rdb, key, old)
		applyVersions(t, inv, 0x42, version(key))
		if got := rdb.Get(ctx, key).Val(); got != "0000000000000042" {
			t.Errorf("a key holding %q became %q, want 0000000000000042", old, got)
		}
	}

	// The TTL stays, as INCR keeps it.
	ttl := p + "ttl"
	if err := rdb.Set(ctx, ttl, lsnValue(1), time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	applyVersions(t, inv, 2, version(ttl))
	if got := rdb.TTL(ctx, ttl).Val(); got < 59*time.Minute {
		t.Errorf("TTL after a version update = %s, want about 1h", got)
	}

	// Another type can never hold an LSN: skipped, like INCR on a hash.
	hash := p + "hash"
	if err := rdb.HSet(ctx, hash, "f", "v").Err(); err != nil {
		t.Fatal(err)
	}
	before := inv.Stats()
	applyVersions(t, inv, 3, version(hash), version(p+"after-hash"))
	after := inv.Stats()
	if after.Skipped != before.Skipped+1 || after.Version != before.Version+1 {
		t.Errorf("a version key holding a hash: Skipped %d -> %d, Version %d -> %d; want one skipped, one set",
			before.Skipped, after.Skipped, before.Version, after.Version)
	}
}

// TestApplyVersionPattern checks a TRUNCATE's pattern: every existing
// matching key moves forward, no key is created, and a lower LSN moves none.
func TestApplyVersionPattern(t *testing.T) {
	ctx := context.Background()
	inv, rdb := newInvalidator(t, env.RedisURL, Options{ScanCount: 10, PipelineSize: 7})
	p := testenv.UniqueName() + ":"
	var kv []string
	for i := range 40 {
		kv = append(kv, p+"v:"+strconv.Itoa(i), lsnValue(0x1000+uint64(i)*0x10))
	}
	set(t, rdb, kv...)
	set(t, rdb, p+"w:1", lsnValue(1))

	applyVersions(t, inv, 0x1100, versionPattern(p+"v:*"), versionPattern(p+"none:*"))
	for i := range 40 {
		want := lsnValue(0x1100)
		if 0x1000+i*0x10 > 0x1100 {
			want = lsnValue(0x1000 + uint64(i)*0x10)
		}
		if got := rdb.Get(ctx, p+"v:"+strconv.Itoa(i)).Val(); got != want {
			t.Errorf("v:%d = %q, want %q", i, got, want)
		}
	}
	if got := keys(t, rdb, p+"*"); len(got) != 41 {
		t.Errorf("VersionPattern created keys: have %d keys, want 41", len(got))
	}
	if got := rdb.Get(ctx, p+"w:1").Val(); got != lsnValue(1) {
		t.Errorf("w:1 = %q, want it untouched", got)
	}
	if st := inv.Stats(); st.VersionPatternKeys != 16 { // v:0 to v:15 were below 0x1100; v:16 held it already
		t.Errorf("Stats().VersionPatternKeys = %d, want 16", st.VersionPatternKeys)
	}
}

// TestApplyVersionResync checks EndResync: the flush of a resync sets
// version keys to its LSN even when they hold a later one, as they do after
// a failover to a standby whose WAL was behind.
func TestApplyVersionResync(t *testing.T) {
	ctx := context.Background()
	inv, rdb := newInvalidator(t, env.RedisURL, Options{})
	p := testenv.UniqueName() + ":"
	set(t, rdb, p+"v", lsnValue(0x9000), p+"pv:1", lsnValue(0x9000), p+"pv:2", "7")

	b := NewBatch()
	b.Add(version(p + "v"))
	b.Add(version(p + "missing"))
	b.Add(versionPattern(p + "pv:*"))
	b.EndResync(0x8000)
	if err := inv.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{p + "v": lsnValue(0x8000), p + "missing": lsnValue(0x8000),
		p + "pv:1": lsnValue(0x8000), p + "pv:2": lsnValue(0x8000)}
	if got := values(t, rdb, want); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after a resync flush got %v, want %v", got, want)
	}
	b.Clear()

	// The next transaction is an ordinary one again.
	applyVersions(t, inv, 0x7000, version(p+"v"))
	if got := rdb.Get(ctx, p+"v").Val(); got != lsnValue(0x8000) {
		t.Errorf("after Clear a lower LSN set v to %q, want %q", got, lsnValue(0x8000))
	}
}

// TestApplyVersionNoScript flushes Redis's script cache: the EVALSHA that
// finds no script is sent again as EVAL, at once, and counts as no error.
func TestApplyVersionNoScript(t *testing.T) {
	srv := startRedis(t)
	inv, rdb := newInvalidator(t, srv.URL(), Options{MinBackoff: time.Hour}) // a backoff would hang the test
	set(t, rdb, "pv:1", lsnValue(1), "iv:1", "1")
	for round := range 2 {
		mustDo(t, rdb, "script", "flush")
		mustDo(t, rdb, "config", "resetstat")
		applyVersions(t, inv, 0x10+uint64(round), version("v"), version("w"),
			versionPattern("pv:*"), pginvalidator.Command{Action: pginvalidator.IncrPattern, Key: "iv:*"})
		stats := commandStats(t, rdb)
		// v and w fail in one pipeline and go again as EVAL, which caches
		// setVersion; pv:1 finds it then, and iv:1 needs incrIfExists.
		if got := stats["evalsha"]; !strings.HasPrefix(got, "calls=") {
			t.Errorf("round %d: evalsha %q, want it called", round, got)
		}
		if got, want := stats["eval"], "calls=3 rejected="; !strings.HasPrefix(got, want) {
			t.Errorf("round %d: eval %q, want %q...: one EVAL per command refused with NOSCRIPT", round, got, want)
		}
	}
	mustDo(t, rdb, "config", "resetstat")
	applyVersions(t, inv, 0x20, version("v"), versionPattern("pv:*"))
	if got := commandStats(t, rdb)["eval"]; got != "" {
		t.Errorf("with the script cached, eval was called: %q", got)
	}
	want := map[string]string{"v": lsnValue(0x20), "w": lsnValue(0x11), "pv:1": lsnValue(0x20), "iv:1": "3"}
	if got := values(t, rdb, want); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if st := inv.Stats(); st.Errors != 0 || st.Skipped != 0 || st.Retries != 0 {
		t.Errorf("Stats() = %+v, want no errors nor retries: NOSCRIPT is expected after a restart", st)
	}
}

// TestVersionACL runs version keys, a version pattern and an incr pattern
// as an ACL user allowed only the commands docs/redis.md lists for them,
// and reads the eviction policy as a user without CONFIG.
func TestVersionACL(t *testing.T) {
	ctx := context.Background()
	srv := startRedis(t)
	_, admin := newInvalidator(t, srv.URL(), Options{})
	const user, pw = "vk", "vk-pw"
	mustDo(t, admin, "acl", "setuser", user, "on", ">"+pw, "~v:*", "~pv:*", "~iv:*",
		"+unlink", "+incr", "+incrby", "+scan", "+info", "+ping", "+evalsha", "+eval", "+get", "+set", "+exists")
	set(t, admin, "pv:1", lsnValue(1), "iv:1", "1")
	mustDo(t, admin, "script", "flush") // so that both EVALSHA and EVAL run
	inv, _ := newInvalidator(t, srv.URL(), Options{Username: user, Password: pw})
	applyVersions(t, inv, 0x10, version("v:1"), versionPattern("pv:*"),
		pginvalidator.Command{Action: pginvalidator.IncrPattern, Key: "iv:*"})
	want := map[string]string{"v:1": lsnValue(0x10), "pv:1": lsnValue(0x10), "iv:1": "2"}
	if got := values(t, admin, want); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if log := admin.Do(ctx, "acl", "log").Val(); fmt.Sprint(log) != "[]" {
		t.Errorf("ACL LOG = %v, want it empty", log)
	}

	ev := inv.Evictions(ctx)
	if len(ev) != 1 || ev[0].Policy != "" || ev[0].Err == nil || !strings.Contains(ev[0].Err.Error(), "NOPERM") ||
		strings.Contains(ev[0].Err.Error(), pw) {
		t.Errorf("Evictions() as a user without CONFIG = %+v, want one NOPERM error", ev)
	}
}

// TestEvictions reads maxmemory-policy from a single server and from every
// master of a cluster.
func TestEvictions(t *testing.T) {
	ctx := context.Background()
	srv := startRedis(t)
	inv, rdb := newInvalidator(t, srv.URL(), Options{})
	for _, policy := range []string{"noeviction", "allkeys-lru", "volatile-lfu", "allkeys-random"} {
		mustDo(t, rdb, "config", "set", "maxmemory-policy", policy)
		ev := inv.Evictions(ctx)
		if len(ev) != 1 || ev[0].Policy != policy || ev[0].Err != nil || ev[0].Addr != srv.Addr() ||
			ev[0].EvictsAnyKey() != strings.HasPrefix(policy, "allkeys-") {
			t.Errorf("%s: Evictions() = %+v", policy, ev)
		}
	}

	down, _ := newInvalidator(t, "redis://127.0.0.1:1/0", Options{})
	if ev := down.Evictions(ctx); len(ev) != 1 || ev[0].Err == nil || ev[0].Policy != "" {
		t.Errorf("Evictions() of a Redis that is down = %+v, want one error", ev)
	}
}

// TestClusterVersions sets version keys spread over every master of a
// cluster, and a pattern whose keys live on all of them: the script names
// one key, so no command crosses slots.
func TestClusterVersions(t *testing.T) {
	ctx := context.Background()
	cl := startCluster(t)
	inv := newTopologyInvalidator(t, Options{Mode: ModeCluster, Addrs: cl.Addrs()[:2], ScanCount: 50})
	rdb := clusterClient(t, cl)
	var kv []string
	for i := range 300 {
		kv = append(kv, "pv:"+strconv.Itoa(i), lsnValue(0x500))
	}
	clusterSet(t, rdb, 0, kv...)
	if got := testenv.KeysPerMaster(t, rdb, "pv:*"); len(got) != 3 {
		t.Fatalf("pv:* keys on %d masters, want 3", len(got))
	}
	for _, c := range cl.Addrs() { // a master that never saw the script answers NOSCRIPT
		_ = nodeClient(t, c).ScriptFlush(ctx).Err()
	}

	var cmds []pginvalidator.Command
	for i := range 300 {
		cmds = append(cmds, version("v:"+strconv.Itoa(i)))
	}
	applyVersions(t, inv, 0x1000, append(cmds, versionPattern("pv:*"))...)
	applyVersions(t, inv, 0x0800, append(cmds, versionPattern("pv:*"))...) // lower: nothing moves
	for _, k := range []string{"v:0", "v:299", "pv:0", "pv:299"} {
		if got := rdb.Get(ctx, k).Val(); got != lsnValue(0x1000) {
			t.Errorf("%s = %q, want %q", k, got, lsnValue(0x1000))
		}
	}
	st := inv.Stats()
	if st.Version != 300 || st.VersionKept != 300 || st.VersionPatternKeys != 300 || st.Skipped != 0 {
		t.Errorf("Stats() = %+v, want Version 300, VersionKept 300, VersionPatternKeys 300", st)
	}
	ev := inv.Evictions(ctx)
	if len(ev) != 3 {
		t.Fatalf("Evictions() = %+v, want one per master", ev)
	}
	for _, e := range ev {
		if e.Err != nil || e.Policy != "noeviction" {
			t.Errorf("Evictions(): %+v, want noeviction", e)
		}
	}
}

// benchmarkApply applies batches of n distinct keys of one action, one
// transaction each, against the shared Redis; it reports the time per key.
func benchmarkApply(b *testing.B, action pginvalidator.Action, n int) {
	inv, err := New(Options{URL: env.RedisURL})
	if err != nil {
		b.Fatal(err)
	}
	defer inv.Close()
	p := testenv.UniqueName() + ":"
	keys := make([]string, n)
	for i := range keys {
		keys[i] = p + strconv.Itoa(i)
	}
	batch := NewBatch()
	lsn := pginvalidator.LSN(1 << 32)
	for b.Loop() {
		for _, k := range keys {
			batch.Add(pginvalidator.Command{Action: action, Key: k})
		}
		lsn += 0x100
		batch.EndTx(lsn)
		if err := inv.Apply(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
		batch.Clear()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(keys)), "ns/key")
}

func BenchmarkApplyIncr(b *testing.B)    { benchmarkApply(b, pginvalidator.Incr, 1000) }
func BenchmarkApplyVersion(b *testing.B) { benchmarkApply(b, pginvalidator.Version, 1000) }
func BenchmarkApplyDel(b *testing.B)     { benchmarkApply(b, pginvalidator.Del, 1000) }

// BenchmarkApplySmallDel applies batches of one Del, as a stream of small
// transactions does: what an Apply costs beyond its commands.
func BenchmarkApplySmallDel(b *testing.B) { benchmarkApply(b, pginvalidator.Del, 1) }
