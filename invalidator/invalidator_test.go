package invalidator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

func TestBatch(t *testing.T) {
	del := func(k string) pginvalidator.Command { return pginvalidator.Command{Action: pginvalidator.Del, Key: k} }
	incr := func(k string) pginvalidator.Command { return pginvalidator.Command{Action: pginvalidator.Incr, Key: k} }
	delP := func(k string) pginvalidator.Command {
		return pginvalidator.Command{Action: pginvalidator.DelPattern, Key: k}
	}
	incrP := func(k string) pginvalidator.Command {
		return pginvalidator.Command{Action: pginvalidator.IncrPattern, Key: k}
	}
	endTx := pginvalidator.Command{} // stands for EndTx in the table

	tests := []struct {
		name      string
		cmds      []pginvalidator.Command
		wantLen   int
		wantIncrs map[string]int64
		wantDels  []string // in the order Apply sends them
	}{
		{"del dedupes across transactions", []pginvalidator.Command{del("a"), del("a"), endTx, del("a"), del("b")}, 2, map[string]int64{}, []string{"a", "b"}},
		{"del keeps the order keys came in", []pginvalidator.Command{del("c"), del("a"), del("c"), endTx, del("b"), del("a")}, 3, map[string]int64{}, []string{"c", "a", "b"}},
		{"incr once per transaction", []pginvalidator.Command{incr("k"), incr("k"), endTx, incr("k"), incr("k"), endTx, incr("k"), incr("k"), endTx}, 1, map[string]int64{"k": 3}, nil},
		{"incr five times in one transaction", []pginvalidator.Command{incr("k"), incr("k"), incr("k"), incr("k"), incr("k"), endTx}, 1, map[string]int64{"k": 1}, nil},
		{"open transaction waits for its end", []pginvalidator.Command{incr("k"), endTx, incr("k"), incr("j")}, 1, map[string]int64{"k": 1}, nil},
		{"patterns dedupe across transactions", []pginvalidator.Command{delP("p*"), incrP("v*"), endTx, delP("p*"), incrP("v*"), incrP("w*")}, 3, map[string]int64{}, nil},
	}
	b := NewBatch()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b.Reset()
			for _, c := range tt.cmds {
				if c == endTx {
					b.EndTx(0)
				} else {
					b.Add(c)
				}
			}
			if got := b.Len(); got != tt.wantLen {
				t.Errorf("Len() = %d, want %d", got, tt.wantLen)
			}
			if fmt.Sprint(b.incrs) != fmt.Sprint(tt.wantIncrs) {
				t.Errorf("incrs = %v, want %v", b.incrs, tt.wantIncrs)
			}
			if fmt.Sprint(b.delOrder) != fmt.Sprint(tt.wantDels) || len(b.delOrder) != len(b.dels) {
				t.Errorf("Del keys in order %v (of %d), want %v", b.delOrder, len(b.dels), tt.wantDels)
			}
			if c := b.Copy(); fmt.Sprint(c.delOrder) != fmt.Sprint(tt.wantDels) {
				t.Errorf("Copy's Del keys in order %v, want %v", c.delOrder, tt.wantDels)
			}
		})
	}
}

func TestDelay(t *testing.T) {
	inv, err := New(Options{URL: "redis://127.0.0.1:1/0", MinBackoff: 10 * time.Millisecond, MaxBackoff: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer inv.Close()
	for attempt := range 100 {
		ceiling := min(time.Second, 10*time.Millisecond<<min(attempt, 20))
		for range 100 {
			if d := inv.delay(attempt); d < 0 || d >= ceiling {
				t.Fatalf("delay(%d) = %v, want in [0, %v)", attempt, d, ceiling)
			}
		}
	}
}

func TestApplyDelAndIncr(t *testing.T) {
	ctx := context.Background()
	inv, rdb := newInvalidator(t, env.RedisURL, Options{})
	p := testenv.UniqueName() + ":"
	set(t, rdb, p+"a", "1", p+"b", "1", p+"c", "1")

	b := NewBatch()
	for range 3 { // 3 transactions, each incrementing k twice and deleting a
		b.Add(pginvalidator.Command{Action: pginvalidator.Incr, Key: p + "k"})
		b.Add(pginvalidator.Command{Action: pginvalidator.Incr, Key: p + "k"})
		b.Add(pginvalidator.Command{Action: pginvalidator.Del, Key: p + "a"})
		b.EndTx(0)
	}
	for range 5 { // one transaction touching j five times
		b.Add(pginvalidator.Command{Action: pginvalidator.Incr, Key: p + "j"})
	}
	b.Add(pginvalidator.Command{Action: pginvalidator.Del, Key: p + "b"})
	b.EndTx(0)
	if err := inv.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	if b.Len() != 4 {
		t.Errorf("Len() after Apply = %d, want 4: Apply only reads the batch", b.Len())
	}
	b.Clear()
	want := map[string]string{p + "a": "", p + "b": "", p + "c": "1", p + "k": "3", p + "j": "1"}
	if got := values(t, rdb, want); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after Apply got %v, want %v", got, want)
	}
	st := inv.Stats()
	if st.Del != 2 || st.Incr != 2 || st.Batches != 1 || st.BatchCommands != 4 || st.BatchSizes[1] != 1 {
		t.Errorf("Stats() = %+v, want Del 2, Incr 2, Batches 1, BatchCommands 4 in BatchSizes[1]", st)
	}

	// A transaction flushed in two parts increments its key once.
	b.Add(pginvalidator.Command{Action: pginvalidator.Incr, Key: p + "m"})
	if err := inv.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	b.Clear()
	b.Add(pginvalidator.Command{Action: pginvalidator.Incr, Key: p + "m"})
	b.EndTx(0)
	if err := inv.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	b.Clear()
	if got := rdb.Get(ctx, p+"m").Val(); got != "1" {
		t.Errorf("m after a transaction split in two = %q, want 1", got)
	}
}

func TestApplyKeepsBatch(t *testing.T) {
	ctx := context.Background()
	inv1, rdb := newInvalidator(t, env.RedisURL, Options{})
	inv2, _ := newInvalidator(t, env.RedisURL, Options{})
	p := testenv.UniqueName() + ":"
	set(t, rdb, p+"a", "1")

	b := NewBatch()
	b.Add(pginvalidator.Command{Action: pginvalidator.Del, Key: p + "a"})
	b.Add(pginvalidator.Command{Action: pginvalidator.Incr, Key: p + "k"})
	b.EndTx(0)
	b.Add(pginvalidator.Command{Action: pginvalidator.Incr, Key: p + "open"}) // a transaction still open
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, inv := range []*Invalidator{inv1, inv2} {
		wg.Go(func() { errs[i] = inv.Apply(ctx, b) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if b.Len() != 2 {
		t.Errorf("Len() after Apply = %d, want 2: the batch is the caller's to clear", b.Len())
	}
	want := map[string]string{p + "a": "", p + "k": "2", p + "open": ""} // each Invalidator incremented k once
	if got := values(t, rdb, want); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after two Apply got %v, want %v", got, want)
	}
	b.Clear()
	if b.Len() != 0 {
		t.Errorf("Len() after Clear = %d, want 0", b.Len())
	}
	b.EndTx(0) // the open transaction survived Clear
	if b.Len() != 1 {
		t.Errorf("Len() after the open transaction's EndTx = %d, want 1", b.Len())
	}
}

func TestDelPattern(t *testing.T) {
	ctx := context.Background()
	inv, rdb := newInvalidator(t, env.RedisURL, Options{ScanCount: 100, PipelineSize: 300})
	p := testenv.UniqueName() + ":"
	var kv []string
	for i := range 5000 {
		kv = append(kv, p+"user:"+strconv.Itoa(i), "x")
	}
	set(t, rdb, kv...)
	set(t, rdb, p+"other:1", "x", p+"users", "x", p+"a*b:1", "x", p+"axb:1", "x", p+"a[b]:1", "x", p+"ab:1", "x")

	b := NewBatch()
	b.Add(pginvalidator.Command{Action: pginvalidator.DelPattern, Key: p + "user:*"})
	b.Add(pginvalidator.Command{Action: pginvalidator.DelPattern, Key: p + `a\*b:*`})
	b.Add(pginvalidator.Command{Action: pginvalidator.DelPattern, Key: p + `a\[b\]:*`})
	b.EndTx(0)
	if err := inv.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	got := keys(t, rdb, p+"*")
	want := []string{p + "ab:1", p + "axb:1", p + "other:1", p + "users"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("keys left = %v, want %v", got, want)
	}
	if st := inv.Stats(); st.DelPatternKeys != 5002 {
		t.Errorf("Stats().DelPatternKeys = %d, want 5002", st.DelPatternKeys)
	}
}

func TestIncrPattern(t *testing.T) {
	ctx := context.Background()
	inv, rdb := newInvalidator(t, env.RedisURL, Options{ScanCount: 10})
	p := testenv.UniqueName() + ":"
	var kv []string
	for i := range 50 {
		kv = append(kv, p+"v:"+strconv.Itoa(i), strconv.Itoa(i))
	}
	set(t, rdb, kv...)
	set(t, rdb, p+"w:1", "7")

	b := NewBatch()
	b.Add(pginvalidator.Command{Action: pginvalidator.IncrPattern, Key: p + "v:*"})
	b.Add(pginvalidator.Command{Action: pginvalidator.IncrPattern, Key: p + "none:*"})
	b.EndTx(0)
	b.Add(pginvalidator.Command{Action: pginvalidator.IncrPattern, Key: p + "v:*"}) // once per batch
	b.EndTx(0)
	if err := inv.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if got, want := rdb.Get(ctx, p+"v:"+strconv.Itoa(i)).Val(), strconv.Itoa(i+1); got != want {
			t.Errorf("v:%d = %q, want %q", i, got, want)
		}
	}
	if got := keys(t, rdb, p+"*"); len(got) != 51 {
		t.Errorf("IncrPattern created keys: have %d keys, want 51", len(got))
	}
	if got := rdb.Get(ctx, p+"w:1").Val(); got != "7" {
		t.Errorf("w:1 = %q, want 7 (untouched)", got)
	}
	if st := inv.Stats(); st.IncrPatternKeys != 50 {
		t.Errorf("Stats().IncrPatternKeys = %d, want 50", st.IncrPatternKeys)
	}
}

// TestPatternScanAcrossRestart restarts Redis (SHUTDOWN SAVE, then start:
// the keys not yet deleted come back) in the middle of a TRUNCATE pattern
// over 200,000 keys. The restarted server hashes keys with another seed, so
// the old cursor means nothing there: the scan must start over, and leave
// no key behind.
func TestPatternScanAcrossRestart(t *testing.T) {
	ctx := context.Background()
	srv := startRedis(t)
	var logs testenv.SyncBuffer
	inv, rdb := newInvalidator(t, srv.URL(), Options{Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	SetLogger(slog.New(slog.DiscardHandler)) // a line per failed dial while Redis is down
	t.Cleanup(func() { SetLogger(slog.Default()) })
	const n = 200_000
	kv := make([]string, 0, 2*n)
	for i := range n {
		kv = append(kv, "t:"+strconv.Itoa(i), "x")
	}
	set(t, rdb, kv...)
	set(t, rdb, "other:1", "x")

	b := NewBatch()
	b.Add(pginvalidator.Command{Action: pginvalidator.DelPattern, Key: "t:*"})
	b.EndTx(0)
	done := make(chan error, 1)
	go func() { done <- inv.Apply(ctx, b) }()
	waitFor(t, 30*time.Second, func() bool { return inv.Stats().DelPatternKeys >= 20_000 }, "20,000 keys not deleted")
	if err := srv.StopSave(); err != nil {
		t.Fatal(err)
	}
	deleted := inv.Stats().DelPatternKeys
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	back := rdb.DBSize(ctx).Val() - 1
	t.Logf("restarted after %d keys deleted, %d keys back", deleted, back)
	if back == 0 {
		t.Fatal("the scan ended before the restart: nothing to check")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Apply still running 60s after the restart")
	}
	if left := keys(t, rdb, "t:*"); len(left) > 0 {
		t.Errorf("%d keys left after the TRUNCATE pattern, such as %v", len(left), left[:min(5, len(left))])
	}
	if got := rdb.Exists(ctx, "other:1").Val(); got != 1 {
		t.Errorf("other:1 deleted")
	}
	if !strings.Contains(logs.String(), "redis server changed during a pattern scan") {
		t.Errorf("no log line about the restart:\n%s", logs.String())
	}
}

// TestIncrPatternOncePerKey makes SCAN return keys twice, as it does when
// the table shrinks under it: each key of an IncrPattern must be
// incremented once. The duplicates come from a wrapper of the real SCAN
// page (the seam scanPage), which repeats the previous page's keys in the
// next one; a real shrink cannot be timed from a test.
func TestIncrPatternOncePerKey(t *testing.T) {
	ctx := context.Background()
	inv, rdb := newInvalidator(t, env.RedisURL, Options{ScanCount: 10})
	p := testenv.UniqueName() + ":"
	var kv []string
	for i := range 200 {
		kv = append(kv, p+"v:"+strconv.Itoa(i), "1")
	}
	set(t, rdb, kv...)
	var last []string // the previous page's keys
	dups := 0
	real := inv.scanPage
	inv.scanPage = func(ctx context.Context, m *redis.Client, cursor uint64, match string, count int64) ([]string, uint64, string, error) {
		keys, next, runID, err := real(ctx, m, cursor, match, count)
		if err == nil {
			page := append(slices.Clone(keys), last...)
			dups += len(last)
			last = keys
			keys = page
		}
		return keys, next, runID, err
	}

	b := NewBatch()
	b.Add(pginvalidator.Command{Action: pginvalidator.IncrPattern, Key: p + "v:*"})
	b.EndTx(0)
	if err := inv.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	if dups < 100 {
		t.Fatalf("only %d keys returned twice: the test proves nothing", dups)
	}
	var wrong []string
	for i := range 200 {
		if got := rdb.Get(ctx, p+"v:"+strconv.Itoa(i)).Val(); got != "2" {
			wrong = append(wrong, fmt.Sprintf("v:%d=%s", i, got))
		}
	}
	if len(wrong) > 0 {
		t.Errorf("%d of 200 keys not incremented exactly once (%d returned twice), such as %v", len(wrong), dups, wrong[:min(5, len(wrong))])
	}
	if st := inv.Stats(); st.IncrPatternKeys != 200 {
		t.Errorf("Stats().IncrPatternKeys = %d, want 200", st.IncrPatternKeys)
	}
}

func TestKeyWindow(t *testing.T) {
	w := newKeyWindow(3)
	for i, tt := range []struct {
		key  string
		want bool
	}{
		{"a", true}, {"b", true}, {"a", false}, {"c", true}, // a b c: the first generation
		{"d", true}, {"a", false}, {"e", true}, {"f", true}, // d e f: the second; a b c still remembered
		{"g", true}, {"a", true}, {"c", true}, {"e", false}, // g a c: the third; a b c forgotten, d e f remembered
	} {
		if got := w.add(tt.key); got != tt.want {
			t.Errorf("step %d: add(%q) = %v, want %v", i, tt.key, got, tt.want)
		}
	}
	w.reset()
	if !w.add("e") {
		t.Errorf("add after reset reported a key seen before")
	}
	var none *keyWindow
	if !none.add("a") || !none.add("a") {
		t.Errorf("a nil window remembered a key")
	}
}

// TestApplyWaitsForRedis stops Redis while Apply runs: Apply must block and
// then finish once Redis is back, and return ctx's error if ctx ends first.
func TestApplyWaitsForRedis(t *testing.T) {
	ctx := context.Background()
	srv := startRedis(t)
	var logs testenv.SyncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	SetLogger(log) // go-redis's line per failed dial must not show at Info
	t.Cleanup(func() { SetLogger(slog.Default()) })
	inv, rdb := newInvalidator(t, srv.URL(), Options{
		Logger:     log,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	})
	set(t, rdb, "gone", "1", "kept", "1", "v", "41")
	if err := srv.StopSave(); err != nil { // the restart brings the keys back
		t.Fatal(err)
	}

	b := NewBatch()
	b.Add(pginvalidator.Command{Action: pginvalidator.Del, Key: "gone"})
	b.Add(pginvalidator.Command{Action: pginvalidator.Incr, Key: "v"})
	b.Add(pginvalidator.Command{Action: pginvalidator.DelPattern, Key: "gon*"})
	b.EndTx(0)
	done := make(chan error, 1)
	go func() { done <- inv.Apply(ctx, b) }()
	select {
	case err := <-done:
		t.Fatalf("Apply returned %v while Redis was down", err)
	case <-time.After(2 * time.Second):
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Apply after Redis came back: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Apply still blocked 10s after Redis came back")
	}
	want := map[string]string{"gone": "", "kept": "1", "v": "42"}
	if got := values(t, rdb, want); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after Apply got %v, want %v", got, want)
	}
	for _, msg := range []string{"redis unavailable, retrying", "redis available again"} {
		if n := strings.Count(logs.String(), msg); n != 1 {
			t.Errorf("%q logged %d times, want once; logs:\n%s", msg, n, logs.String())
		}
	}

	b.Clear() // applied

	srv.Stop()
	b.Add(pginvalidator.Command{Action: pginvalidator.Incr, Key: "v"})
	b.EndTx(0)
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	err := inv.Apply(cctx, b)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Apply with Redis down and ctx ended = %v, want context.DeadlineExceeded", err)
	}
	if b.Len() != 1 {
		t.Errorf("Len() after a failed Apply = %d, want 1 (the batch is kept)", b.Len())
	}
}

// TestApplyResendsOnlyFailed makes Redis refuse INCR (OOM) but not UNLINK in
// the same pipeline, and checks with INFO commandstats that only the INCR
// was sent again: the UNLINK of a and b, one command, ran once.
func TestApplyResendsOnlyFailed(t *testing.T) {
	ctx := context.Background()
	srv := startRedis(t)
	inv, rdb := newInvalidator(t, srv.URL(), Options{Logger: slog.New(slog.DiscardHandler),
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	set(t, rdb, "a", "1", "b", "1")
	mustDo(t, rdb, "CONFIG", "SET", "maxmemory", "1") // noeviction: refuse writes that may grow memory
	mustDo(t, rdb, "CONFIG", "RESETSTAT")

	b := NewBatch()
	b.Add(pginvalidator.Command{Action: pginvalidator.Del, Key: "a"})
	b.Add(pginvalidator.Command{Action: pginvalidator.Incr, Key: "k"})
	b.Add(pginvalidator.Command{Action: pginvalidator.Del, Key: "b"})
	b.EndTx(0)
	done := make(chan error, 1)
	go func() { done <- inv.Apply(ctx, b) }()
	for deadline := time.Now().Add(10 * time.Second); inv.Stats().Errors < 3; {
		if time.Now().After(deadline) {
			t.Fatalf("INCR did not fail three times: %+v", inv.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	mustDo(t, rdb, "CONFIG", "SET", "maxmemory", "0")
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	st := inv.Stats()
	got := commandStats(t, rdb)
	want := map[string]string{"unlink": "calls=1 rejected=0", "incr": fmt.Sprintf("calls=1 rejected=%d", st.Errors)}
	if got["unlink"] != want["unlink"] || got["incr"] != want["incr"] || st.Retries != st.Errors || st.Del != 2 {
		t.Errorf("commandstats = %v, want %v; and want Retries == Errors and Del 2 in %+v", got, want, st)
	}
	if got := rdb.Get(ctx, "k").Val(); got != "1" {
		t.Errorf("k = %q, want 1", got)
	}
}

// TestApplySkipsPermanentErrors checks that a command Redis can never accept
// is logged once, counted and skipped, and that the others are applied once.
func TestApplySkipsPermanentErrors(t *testing.T) {
	ctx := context.Background()
	var logs testenv.SyncBuffer
	inv, rdb := newInvalidator(t, env.RedisURL, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	p := testenv.UniqueName() + ":"
	set(t, rdb, p+"text", "not a number", p+"max", strconv.Itoa(math.MaxInt64-1), p+"v:text", "abc", p+"v:1", "1", p+"gone", "1")
	mustDo(t, rdb, "HSET", p+"hash", "f", "1")
	mustDo(t, rdb, "HSET", p+"v:hash", "f", "1")

	b := NewBatch()
	for _, k := range []string{"text", "hash", "good"} {
		b.Add(pginvalidator.Command{Action: pginvalidator.Incr, Key: p + k})
	}
	b.Add(pginvalidator.Command{Action: pginvalidator.Del, Key: p + "gone"})
	b.Add(pginvalidator.Command{Action: pginvalidator.IncrPattern, Key: p + "v:*"})
	b.EndTx(0)
	for range 2 { // INCRBY max 2 overflows
		b.Add(pginvalidator.Command{Action: pginvalidator.Incr, Key: p + "max"})
		b.EndTx(0)
	}
	if err := inv.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{p + "text": "not a number", p + "good": "1", p + "gone": "", p + "v:1": "2", p + "v:text": "abc", p + "max": strconv.Itoa(math.MaxInt64 - 1)}
	if got := values(t, rdb, want); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after Apply got %v, want %v", got, want)
	}
	if st := inv.Stats(); st.Skipped != 5 || st.Errors != 5 || st.Retries != 0 || st.Incr != 1 || st.Del != 1 || st.IncrPatternKeys != 1 {
		t.Errorf("Stats() = %+v, want Skipped 5, Errors 5, Retries 0, Incr 1, Del 1, IncrPatternKeys 1", st)
	}
	if n := strings.Count(logs.String(), `level=ERROR msg="redis rejected a command for good, skipping it"`); n != 5 {
		t.Errorf("%d Error lines, want 5; logs:\n%s", n, logs.String())
	}
	for _, k := range []string{"text", "hash", "max", "v:text", "v:hash"} {
		if !strings.Contains(logs.String(), "key="+p+k+" ") {
			t.Errorf("no log line for key %s; logs:\n%s", p+k, logs.String())
		}
	}
}

func TestPasswordRedacted(t *testing.T) {
	const pw = "s3cretPW"
	port, err := localsvc.FreePort() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	var logs testenv.SyncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	SetLogger(log)
	t.Cleanup(func() { SetLogger(slog.Default()) })

	for _, u := range []string{
		"redis://user:" + pw + "@host:notaport/0",
		"redis://user:" + pw + "@host/notadb",
		"redis://user:" + pw + "@host/0?dial_timeout=soon",
		"http://user:" + pw + "@host/0",
	} {
		if _, err := New(Options{URL: u}); err == nil || strings.Contains(err.Error(), pw) {
			t.Errorf("New(%q) = %v, want an error without the password", u, err)
		}
	}

	inv, err := New(Options{URL: fmt.Sprintf("redis://user:%s@127.0.0.1:%d/0", pw, port), Logger: log,
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer inv.Close()
	ctx := context.Background()
	errPing := inv.Ping(ctx)
	b := NewBatch()
	b.Add(pginvalidator.Command{Action: pginvalidator.Incr, Key: "k"})
	b.EndTx(0)
	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	errApply := inv.Apply(cctx, b)
	for _, err := range []error{errPing, errApply} {
		if err == nil || strings.Contains(err.Error(), pw) {
			t.Errorf("error %v: want an error without the password", err)
		}
	}
	redisLogger{log}.Printf(ctx, "dial %s: failed with %s", "redis://user:"+pw+"@host", pw) // as go-redis might
	if !strings.Contains(logs.String(), "redis unavailable") || strings.Contains(logs.String(), pw) {
		t.Errorf("want a redis unavailable line and no password in the logs:\n%s", logs.String())
	}
}

// newInvalidator returns an Invalidator and a plain client for the server
// at url, both closed when the test ends.
func newInvalidator(t *testing.T, url string, opts Options) (*Invalidator, *redis.Client) {
	t.Helper()
	opts.URL = url
	inv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	ro, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	ro.DisableIdentity = true
	rdb := redis.NewClient(ro)
	t.Cleanup(func() { rdb.Close() })
	return inv, rdb
}

// startRedis starts a private Redis that the test may stop and start.
func startRedis(t testing.TB) *localsvc.Redis {
	t.Helper()
	srv, err := localsvc.StartRedis(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// set sets key, value pairs in pipelines.
func set(t *testing.T, rdb *redis.Client, kv ...string) {
	t.Helper()
	ctx := context.Background()
	for len(kv) > 0 {
		n := min(len(kv), 2000)
		if err := rdb.MSet(ctx, kv[:n]).Err(); err != nil {
			t.Fatal(err)
		}
		kv = kv[n:]
	}
}

func mustDo(t *testing.T, rdb *redis.Client, args ...any) {
	t.Helper()
	if err := rdb.Do(context.Background(), args...).Err(); err != nil {
		t.Fatalf("%v: %v", args, err)
	}
}

// values returns the value of each key of want, "" for a missing key.
func values(t *testing.T, rdb *redis.Client, want map[string]string) map[string]string {
	t.Helper()
	got := make(map[string]string)
	for k := range want {
		v, err := rdb.Get(context.Background(), k).Result()
		if err != nil && err != redis.Nil {
			t.Fatal(err)
		}
		got[k] = v
	}
	return got
}

// keys returns the keys matching pattern, sorted.
func keys(t *testing.T, rdb *redis.Client, pattern string) []string {
	t.Helper()
	var all []string
	iter := rdb.Scan(context.Background(), 0, pattern, 1000).Iterator()
	for iter.Next(context.Background()) {
		all = append(all, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(all)
	return all
}

// commandStats returns "calls=N rejected=M" per command, from INFO
// commandstats. A command Redis refuses (OOM) counts as rejected, not called.
func commandStats(t *testing.T, rdb *redis.Client) map[string]string {
	t.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	stats := make(map[string]string)
	for _, line := range strings.Split(info, "\r\n") {
		name, fields, ok := strings.Cut(strings.TrimPrefix(line, "cmdstat_"), ":")
		if !ok || !strings.HasPrefix(line, "cmdstat_") {
			continue
		}
		var calls, rejected string
		for _, f := range strings.Split(fields, ",") {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "calls":
				calls = v
			case "rejected_calls":
				rejected = v
			}
		}
		stats[name] = "calls=" + calls + " rejected=" + rejected
	}
	return stats
}
