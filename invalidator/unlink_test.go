package invalidator

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
)

// TestUnlinkOpsInCluster checks the UNLINKs unlinkOps makes of 200,000
// keys for a cluster, without a server: each key in one UNLINK, at most
// unlinkBatch keys each, all of one slot, and the UNLINKs of any pipeline
// (1,000 in a row) spread over the slots, so that each third of the slots,
// a master's share in a cluster of three, gets a fair part of them.
func TestUnlinkOpsInCluster(t *testing.T) {
	inv := newTopologyInvalidator(t, Options{Mode: ModeCluster, Addrs: []string{"127.0.0.1:1"}}) // never dialled
	keys := numberedKeys("item:", 200_000)
	c := &call{inv: inv}
	ops := c.unlinkOps(nil, keys, op{action: pginvalidator.Del})
	seen := make(map[string]bool, len(keys))
	for i, o := range ops {
		if len(o.keys) == 0 || len(o.keys) > unlinkBatch || o.key != o.keys[0] || o.action != pginvalidator.Del {
			t.Fatalf("op %d: %d keys, key %q, action %v; want 1 to %d keys, the first as key, Del", i, len(o.keys), o.key, o.action, unlinkBatch)
		}
		for _, k := range o.keys {
			if keySlot(k) != keySlot(o.key) {
				t.Fatalf("op %d: %s in slot %d and %s in slot %d", i, k, keySlot(k), o.key, keySlot(o.key))
			}
			if seen[k] {
				t.Fatalf("op %d: %s a second time", i, k)
			}
			seen[k] = true
		}
	}
	if len(seen) != len(keys) {
		t.Errorf("%d keys in the ops, want %d", len(seen), len(keys))
	}
	for at := 0; at+1000 <= len(ops); at += 1000 {
		var thirds [3]int
		for _, o := range ops[at : at+1000] {
			thirds[keySlot(o.key)*3/clusterSlots]++
		}
		if min(thirds[0], thirds[1], thirds[2]) < 250 {
			t.Errorf("ops %d to %d: %v in each third of the slots, want at least 250 in each", at, at+999, thirds)
		}
	}
}

// TestUnlinkBatches counts with INFO commandstats the UNLINKs Redis
// received for 1,000 Del keys and for a DelPattern's pages: at most one per
// unlinkBatch keys (one per key before). The stats count keys, exactly:
// every Del key, the DelPattern keys removed, and for re-deletes every key
// and those that were there.
func TestUnlinkBatches(t *testing.T) {
	ctx := context.Background()
	srv := startRedis(t)
	inv, rdb := newInvalidator(t, srv.URL(), Options{ScanCount: 1000})
	const n = 1000
	keys := numberedKeys("u:", n)
	set(t, rdb, numbered("u:", 600)...) // u:600 to u:999 are not cached
	set(t, rdb, numbered("p:", 2500)...)
	mustDo(t, rdb, "CONFIG", "RESETSTAT")

	b := NewBatch()
	for _, k := range keys {
		b.Add(pginvalidator.Command{Action: pginvalidator.Del, Key: k})
	}
	b.Add(pginvalidator.Command{Action: pginvalidator.DelPattern, Key: "p:*"})
	b.EndTx(0)
	if err := inv.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	stats := commandStats(t, rdb)
	pages := commandCalls(stats, "scan")
	if got, most := commandCalls(stats, "unlink"), (n+unlinkBatch-1)/unlinkBatch+(2500+unlinkBatch-1)/unlinkBatch+pages; got > most {
		t.Errorf("cmdstat_unlink calls = %d for %d Del keys and 2,500 keys in %d SCAN pages, want at most %d", got, n, pages, most)
	}
	if left := rdb.DBSize(ctx).Val(); left != 0 {
		t.Errorf("%d keys left, want none", left)
	}
	if st := inv.Stats(); st.Del != n || st.DelPatternKeys != 2500 || st.Errors != 0 {
		t.Errorf("Stats() = %+v, want Del %d, DelPatternKeys 2500, no errors", st, n)
	}

	// Re-deletes, of keys of which some were cached again.
	set(t, rdb, numbered("u:", 250)...)
	set(t, rdb, numbered("p:", 70)...)
	b = batchOf(append(delCommands(keys), pginvalidator.Command{Action: pginvalidator.DelPattern, Key: "p:*"})...)
	b.Redelete = true
	if err := inv.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	if st := inv.Stats(); st.Redeletes != n+70 || st.RedeletesFound != 250+70 || st.Del != n || st.DelPatternKeys != 2500 {
		t.Errorf("Stats() = %+v, want Redeletes %d, RedeletesFound 320, and Del and DelPatternKeys as before", st, n+70)
	}
}

// commandCalls returns the calls of cmd in what commandStats returned; 0
// when Redis never ran it.
func commandCalls(stats map[string]string, cmd string) int {
	var n int
	fmt.Sscanf(stats[cmd], "calls=%d", &n)
	return n
}

// delCommands returns a Del command for each key.
func delCommands(keys []string) []pginvalidator.Command {
	cmds := make([]pginvalidator.Command, len(keys))
	for i, k := range keys {
		cmds[i] = pginvalidator.Command{Action: pginvalidator.Del, Key: k}
	}
	return cmds
}

// TestClusterUnlinkAcrossSlots deletes keys spread over every slot of a
// cluster, and keys that share a few hash tags: every key goes, with no
// CROSSSLOT nor any other error, each master receives one UNLINK per
// unlinkBatch keys of a slot (per its CLUSTER KEYSLOT), and the stats are
// exact. keySlot agrees with CLUSTER KEYSLOT on every key.
func TestClusterUnlinkAcrossSlots(t *testing.T) {
	ctx := context.Background()
	cl := startCluster(t)
	rdb := clusterClient(t, cl)
	inv := newTopologyInvalidator(t, Options{Mode: ModeCluster, Addrs: cl.Addrs()})
	keys := numberedKeys("item:", 40_000)
	for i := range 5000 { // 50 tags of 100 keys
		keys = append(keys, fmt.Sprintf("tagged:{%d}:%d", i%50, i))
	}
	var kv []string
	for _, k := range keys[:30_000] { // item:30000 and up are not cached
		kv = append(kv, k, "x")
	}
	for _, k := range keys[40_000:] {
		kv = append(kv, k, "x")
	}
	clusterSet(t, rdb, 0, kv...)

	node := nodeClient(t, cl.Nodes[0].Addr())
	pipe := node.Pipeline()
	slots := make([]*redis.IntCmd, len(keys))
	for i, k := range keys {
		slots[i] = pipe.ClusterKeySlot(ctx, k)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	perSlot := make(map[int64]int)
	for i, k := range keys {
		if got, want := keySlot(k), slots[i].Val(); int64(got) != want {
			t.Errorf("keySlot(%q) = %d, CLUSTER KEYSLOT says %d", k, got, want)
		}
		perSlot[slots[i].Val()]++
	}
	want := 0 // UNLINKs, on all masters
	for _, n := range perSlot {
		want += (n + unlinkBatch - 1) / unlinkBatch
	}
	masters := masterClients(t, cl)
	for _, m := range masters {
		mustDo(t, m, "CONFIG", "RESETSTAT")
	}

	b := batchOf(delCommands(keys)...)
	if err := inv.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	got := 0
	for _, m := range masters {
		got += commandCalls(commandStats(t, m), "unlink")
	}
	if got != want {
		t.Errorf("cmdstat_unlink calls = %d on all masters for %d keys in %d slots, want %d", got, len(keys), len(perSlot), want)
	}
	if left := len(clusterKeys(t, rdb, "*")); left != 0 {
		t.Errorf("%d keys left, want none", left)
	}
	if st := inv.Stats(); st.Del != uint64(len(keys)) || st.Errors != 0 || st.Retries != 0 {
		t.Errorf("Stats() = %+v, want Del %d, no errors nor retries", st, len(keys))
	}

	// Re-deletes, of keys of which some were cached again.
	clusterSet(t, rdb, 0, kv[:2*1000]...)
	clusterSet(t, rdb, 0, kv[len(kv)-2*300:]...)
	b.Redelete = true
	if err := inv.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	if st := inv.Stats(); st.Redeletes != uint64(len(keys)) || st.RedeletesFound != 1300 || st.Errors != 0 {
		t.Errorf("Stats() = %+v, want Redeletes %d, RedeletesFound 1300, no errors", st, len(keys))
	}
}

// TestClusterUnlinkDuringMigration deletes keys of a slot half migrated:
// some already on the importing master, some still on the old one. A
// multi-key UNLINK there is answered TRYAGAIN (some of its keys here, some
// not) or ASK (none here), and then ASKING plus the same UNLINK would be
// TRYAGAIN on the importing master, until the migration ends: each key must
// go alone where it is, at once.
func TestClusterUnlinkDuringMigration(t *testing.T) {
	ctx := context.Background()
	cl := startCluster(t)
	inv := newTopologyInvalidator(t, Options{Mode: ModeCluster, Addrs: cl.Addrs(), MinBackoff: time.Hour}) // a backoff would hang the test
	if err := inv.Ping(ctx); err != nil {                                                                  // loads the slot map
		t.Fatal(err)
	}
	key := func(i int) string { return "{mig}:" + strconv.Itoa(i) }
	src, err := cl.Master(ctx, key(0))
	if err != nil {
		t.Fatal(err)
	}
	srcC := nodeClient(t, src.Addr())
	for i := range 6 {
		set(t, srcC, key(i), "x")
	}
	var dst *localsvc.RedisNode
	for _, n := range cl.Nodes {
		if n != src && isMaster(t, n) {
			dst = n
			break
		}
	}
	dstC := nodeClient(t, dst.Addr())
	slot := keySlot(key(0))
	mustDo(t, dstC, "CLUSTER", "SETSLOT", slot, "IMPORTING", srcC.ClusterMyID(ctx).Val())
	mustDo(t, srcC, "CLUSTER", "SETSLOT", slot, "MIGRATING", dstC.ClusterMyID(ctx).Val())
	mustDo(t, srcC, "MIGRATE", "127.0.0.1", dst.Port, "", 0, 5000, "KEYS", key(0), key(1))

	apply := func(redelete bool, keys ...string) {
		t.Helper()
		b := batchOf(delCommands(keys)...)
		b.Redelete = redelete
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := inv.Apply(actx, b); err != nil {
			t.Fatal(err)
		}
	}
	apply(false, key(0), key(1), key(8), key(9))        // none on src: ASK
	apply(true, key(2), key(3), key(6), key(7), key(0)) // some on src: TRYAGAIN
	// One key a command: a multi-key EXISTS would be TRYAGAIN too.
	exists := func(c *redis.Client, i int) string {
		pipe := c.Pipeline()
		pipe.Do(ctx, "ASKING") // the importing master answers only after it
		n := pipe.Exists(ctx, key(i))
		_, _ = pipe.Exec(ctx)
		if _, ask := redirect(n.Err()); ask != "" { // the old master: not here
			return "0"
		} else if n.Err() != nil {
			return n.Err().Error()
		}
		return strconv.FormatInt(n.Val(), 10)
	}
	var left []string
	for i := range 10 {
		left = append(left, exists(srcC, i)+exists(dstC, i))
	}
	if got, want := strings.Join(left, " "), "00 00 00 00 10 10 00 00 00 00"; got != want {
		t.Errorf("EXISTS on the old and the importing master, for %s to %s: %s, want %s", key(0), key(9), got, want)
	}
	if st := inv.Stats(); st.Del != 4 || st.Redeletes != 5 || st.RedeletesFound != 2 {
		t.Errorf("Stats() = %+v, want Del 4, Redeletes 5, RedeletesFound 2", st)
	}
	for _, m := range masterClients(t, cl) { // the slot moves for good, as a resharding ends
		mustDo(t, m, "CLUSTER", "SETSLOT", slot, "NODE", dstC.ClusterMyID(ctx).Val())
	}
}

// bulkKeys is the number of keys of BenchmarkApplyDel1M: one UPDATE of a
// million rows, each cached under item:<id>.
const bulkKeys = 1_000_000

// BenchmarkApplyDel1M deletes a million existing keys on a private
// redis-server, one op per million keys: with Apply, one key per UNLINK
// (as before unlinkBatch) and unlinkBatch keys per UNLINK, and, for the
// same keys on the same server, with redis-cli --pipe sending one key per
// UNLINK and 100 keys per UNLINK, which is as fast as a client can go, and
// 100 keys per UNLINK in a random order, which Redis takes slower (see
// Batch.addDel). The keys are set again, in id order, untimed, before each
// op.
func BenchmarkApplyDel1M(b *testing.B) {
	srv := startRedis(b)
	dir := b.TempDir()
	keys := numberedKeys("item:", bulkKeys)
	fill := respFile(b, filepath.Join(dir, "mset"), "MSET", keys, 1000, "x")
	refill := func(b *testing.B) {
		b.Helper()
		b.StopTimer()
		redisPipe(b, srv, fill, len(keys)/1000)
		b.StartTimer()
	}

	for _, per := range []int{1, unlinkBatch} {
		b.Run("apply-"+strconv.Itoa(per), func(b *testing.B) {
			inv, err := New(Options{URL: srv.URL()})
			if err != nil {
				b.Fatal(err)
			}
			defer inv.Close()
			inv.unlinkKeys = per
			batch := batchOf(delCommands(keys)...)
			for b.Loop() {
				refill(b)
				if err := inv.Apply(context.Background(), batch); err != nil {
					b.Fatal(err)
				}
			}
			if st := inv.Stats(); st.Del != uint64(b.N*len(keys)) {
				b.Errorf("Stats().Del = %d, want %d", st.Del, b.N*len(keys))
			}
		})
	}
	shuffled := slices.Clone(keys)
	rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	for _, tt := range []struct {
		name string
		keys []string
		per  int
	}{
		{"redis-cli-1", keys, 1},
		{"redis-cli-100", keys, 100},
		{"redis-cli-100-shuffled", shuffled, 100}, // the order Apply had before Batch kept the keys' order
	} {
		file := respFile(b, filepath.Join(dir, tt.name), "UNLINK", tt.keys, tt.per, "")
		b.Run(tt.name, func(b *testing.B) {
			for b.Loop() {
				refill(b)
				redisPipe(b, srv, file, len(keys)/tt.per)
			}
		})
	}
}

// numberedKeys returns the n keys prefix0 to prefix<n-1>.
func numberedKeys(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = prefix + strconv.Itoa(i)
	}
	return keys
}

// respFile writes to path, in the Redis protocol, the commands cmd that
// take keys per keys each, each key followed by value unless value is
// empty, and returns path.
func respFile(tb testing.TB, path, cmd string, keys []string, per int, value string) string {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	bulk := func(s string) {
		w.WriteString("$" + strconv.Itoa(len(s)) + "\r\n" + s + "\r\n")
	}
	for len(keys) > 0 {
		n := min(per, len(keys))
		args := 1 + n
		if value != "" {
			args += n
		}
		w.WriteString("*" + strconv.Itoa(args) + "\r\n")
		bulk(cmd)
		for _, k := range keys[:n] {
			bulk(k)
			if value != "" {
				bulk(value)
			}
		}
		keys = keys[n:]
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
	return path
}

// redisPipe sends the commands of file to srv with redis-cli --pipe, over
// TCP, and checks that Redis answered each of the n without an error.
func redisPipe(tb testing.TB, srv *localsvc.Redis, file string, n int) {
	tb.Helper()
	in, err := os.Open(file)
	if err != nil {
		tb.Fatal(err)
	}
	defer in.Close()
	cmd := exec.Command("redis-cli", "-h", "127.0.0.1", "-p", strconv.Itoa(srv.Port), "--pipe")
	cmd.Stdin = in
	out, err := cmd.CombinedOutput()
	if want := "errors: 0, replies: " + strconv.Itoa(n); err != nil || !strings.Contains(string(out), want) {
		tb.Fatalf("redis-cli --pipe < %s: %v, want %q in:\n%s", file, err, want, out)
	}
}
