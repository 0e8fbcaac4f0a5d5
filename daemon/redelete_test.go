package daemon

import (
	"container/heap"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/redis/go-redis/v9"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
)

// TestRedeleterQueue checks the queue without Redis: time order,
// coalescing at the later time, and the hold at the oldest transaction.
func TestRedeleterQueue(t *testing.T) {
	r := newRedeleter(nil, 3, 100)
	var reported int
	r.onPending = func(n int) { reported = n }
	t0 := time.Unix(1000, 0)
	del := func(k string, after time.Duration) pginvalidator.Command {
		return pginvalidator.Command{Action: pginvalidator.Del, Key: k, Redelete: after}
	}
	if _, ok := r.hold(); ok {
		t.Fatal("hold on an empty queue")
	}

	// Transaction at 100: a and b; a without delay is not re-deleted, nor
	// is an incr.
	r.add(del("a", time.Second), 100)
	r.add(del("b", 4*time.Second), 100)
	r.add(del("c", 0), 100)
	r.add(pginvalidator.Command{Action: pginvalidator.Incr, Key: "n", Redelete: time.Second}, 100)
	if got, ok := r.hold(); ok {
		t.Fatalf("hold = %s before the batch was applied, want none", got)
	}
	r.applied(t0)
	// Transaction at 200 deletes a again, 0.5s later: one re-delete of a,
	// at the later time, still holding at 100.
	r.add(del("a", time.Second), 200)
	r.add(pginvalidator.Command{Action: pginvalidator.DelPattern, Key: "p:*", Redelete: 1500 * time.Millisecond}, 200)
	r.applied(t0.Add(500 * time.Millisecond))

	if got, want := r.pending(), 3; got != want || reported != want {
		t.Fatalf("pending = %d (reported %d), want %d", got, reported, want)
	}
	if !r.full() {
		t.Error("full() = false at the limit")
	}
	if at, _ := r.next(); !at.Equal(t0.Add(1500 * time.Millisecond)) {
		t.Errorf("next = %v, want t0+1.5s (a, moved from 1s to 1.5s)", at.Sub(t0))
	}
	if got, _ := r.hold(); got != 100 {
		t.Errorf("hold = %d, want 100", got)
	}
	var order []string
	for r.queue.Len() > 0 {
		e := heap.Pop(&r.queue).(*redeleteEntry)
		order = append(order, e.cmd.Key+"@"+e.due.Sub(t0).String())
	}
	if got, want := strings.Join(order, " "), "a@1.5s p:*@2s b@4s"; got != want {
		t.Errorf("order: %s, want %s", got, want)
	}
}

// TestRedeleterHotKey deletes one key every 200 ms, with a delay of
// 500 ms: its re-delete cannot be postponed for ever, so the
// acknowledgement is never held more than about three delays back, and
// the key is re-deleted about once per delay.
func TestRedeleterHotKey(t *testing.T) {
	r := newRedeleter(nil, 0, 100)
	t0 := time.Unix(1000, 0)
	key := pginvalidator.Command{Action: pginvalidator.Del, Key: "hot", Redelete: 500 * time.Millisecond}
	holdAt := map[pglogrepl.LSN]time.Time{} // when each transaction was applied
	sends := 0
	for i := range 50 {
		now := t0.Add(time.Duration(i) * 200 * time.Millisecond)
		if err := r.send(context.Background(), now); err != nil {
			t.Fatal(err)
		}
		sends += len(r.sent) // what this send took
		lsn := pglogrepl.LSN(100 * (i + 1))
		holdAt[lsn] = now
		r.add(key, lsn)
		r.applied(now)
		if held, ok := r.hold(); ok && now.Sub(holdAt[held]) > 1500*time.Millisecond {
			t.Fatalf("at %v the acknowledgement is held at the transaction applied at %v", now.Sub(t0), holdAt[held].Sub(t0))
		}
	}
	if r.pending() > 2 {
		t.Errorf("pending = %d for one key, want at most 2 (one queued, one carried)", r.pending())
	}
	if sends < 8 || sends > 20 {
		t.Errorf("%d sends of one key in 10 s with a delay of 500 ms, want about one per delay", sends)
	}
}

// TestRedeleterSend sends re-deletes to a real Redis: only those due,
// counted as re-deletes, with the ones that found their key; the hold moves
// on as transactions have nothing left pending.
func TestRedeleterSend(t *testing.T) {
	ctx := context.Background()
	inv, err := invalidator.New(invalidator.Options{URL: env.RedisURL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	opts, _ := redis.ParseURL(env.RedisURL)
	opts.DisableIdentity = true
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	p := testenv.UniqueName() + ":"

	r := newRedeleter(fanout{{name: DefaultTarget, inv: inv}}, 0, 100)
	t0 := time.Now()
	cmd := func(k string, after time.Duration) pginvalidator.Command {
		return pginvalidator.Command{Action: pginvalidator.Del, Key: p + k, Redelete: after}
	}
	r.add(cmd("x", time.Second), 100)
	r.add(cmd("y", time.Second), 100)
	r.applied(t0)
	r.add(cmd("z", 5*time.Second), 200)
	r.applied(t0)
	r.add(pginvalidator.Command{Action: pginvalidator.DelPattern, Key: p + "pat:*", Redelete: time.Second}, 300)
	r.applied(t0)

	// x was cached again after the first delete; y was not.
	for _, k := range []string{"x", "z", "pat:1", "pat:2"} {
		if err := rdb.Set(ctx, p+k, "stale", time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.send(ctx, t0.Add(500*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if got := r.pending(); got != 4 {
		t.Fatalf("pending = %d after a send before anything was due, want 4", got)
	}
	if err := r.send(ctx, t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := r.pending(); got != 1 {
		t.Fatalf("pending = %d, want 1 (z)", got)
	}
	if got, ok := r.hold(); !ok || got != pglogrepl.LSN(200) {
		t.Errorf("hold = %d, %v; want 200: transaction 100 and 300 are done, 200 is not", got, ok)
	}
	for k, want := range map[string]int64{"x": 0, "z": 1, "pat:1": 0, "pat:2": 0} {
		if n := rdb.Exists(ctx, p+k).Val(); n != want {
			t.Errorf("EXISTS %s = %d, want %d", k, n, want)
		}
	}
	st := inv.Stats()
	if st.Redeletes != 4 || st.RedeletesFound != 3 || st.Del != 0 || st.DelPatternKeys != 0 {
		t.Errorf("stats: redeletes %d, found %d, del %d, del pattern keys %d; want 4 (x, y, pat:1, pat:2), 3, 0, 0",
			st.Redeletes, st.RedeletesFound, st.Del, st.DelPatternKeys)
	}
	if err := r.send(ctx, t0.Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.hold(); ok || r.pending() != 0 || rdb.Exists(ctx, p+"z").Val() != 0 {
		t.Errorf("after the last send: hold %v, pending %d, z exists %d", ok, r.pending(), rdb.Exists(ctx, p+"z").Val())
	}

	// reset drops everything, holds included.
	r.add(cmd("w", time.Second), 400)
	r.applied(t0)
	r.reset()
	if _, ok := r.hold(); ok || r.pending() != 0 {
		t.Errorf("after reset: hold %v, pending %d", ok, r.pending())
	}
}
