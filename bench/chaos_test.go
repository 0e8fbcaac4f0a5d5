package main

import (
	"testing"
	"time"
)

func TestSnapshotSees(t *testing.T) {
	s, err := parseSnapshot("100:110:102,105")
	if err != nil {
		t.Fatal(err)
	}
	for xid, want := range map[uint64]bool{99: true, 100: true, 101: true, 102: false, 105: false, 109: true, 110: false, 200: false} {
		if got := s.sees(xid); got != want {
			t.Errorf("%v sees %d = %v, want %v", s, xid, got, want)
		}
	}
	if s, err := parseSnapshot("726:726:"); err != nil || s.sees(726) || !s.sees(725) {
		t.Errorf("726:726: = %v, %v: want 725 seen, 726 not", s, err)
	}
	for _, bad := range []string{"", "1:2", "a:2:", "1:2:x", "1:2:3:4"} {
		if _, err := parseSnapshot(bad); err == nil {
			t.Errorf("parseSnapshot(%q) succeeded", bad)
		}
	}
}

func TestCachedValue(t *testing.T) {
	payload, snap, ok := cachedValue("3:1042|726:730:727,728")
	if !ok || payload != "3:1042" || snap.xmin != 726 || snap.xmax != 730 || len(snap.xip) != 2 {
		t.Errorf("cachedValue = %q, %+v, %v", payload, snap, ok)
	}
	for _, bad := range []string{"3:1042", "x|y", "canary"} {
		if _, _, ok := cachedValue(bad); ok {
			t.Errorf("cachedValue(%q) ok", bad)
		}
	}
}

func TestIsLSN(t *testing.T) {
	for v, want := range map[string]bool{"00000016B374D848": true, "00000016b374d848": false, "16B374D848": false, "seed-0000000000000001": false, "": false} {
		if _, got := isLSN(v); got != want {
			t.Errorf("isLSN(%q) = %v, want %v", v, got, want)
		}
	}
	if n, _ := isLSN("0000000100000000"); n != 1<<32 {
		t.Errorf("isLSN = %d, want %d", n, uint64(1)<<32)
	}
}

func TestAppliedCount(t *testing.T) {
	m := map[string]float64{
		`pg_invalidator_commands_total{action="del",target="default"}`:     10,
		`pg_invalidator_commands_total{action="version",target="default"}`: 2,
		`pg_invalidator_commands_total{action="del",target="ha"}`:          7,
		`pg_invalidator_version_keys_kept_total{target="default"}`:         1,
		`pg_invalidator_redeletes_total{target="default"}`:                 4,
		`pg_invalidator_redeletes_found_total{target="default"}`:           3,
		`pg_invalidator_transactions_total`:                                99,
	}
	if got := appliedCount(m, "default"); got != 17 {
		t.Errorf("appliedCount(default) = %v, want 17", got)
	}
	if got := appliedCount(m, "ha"); got != 7 {
		t.Errorf("appliedCount(ha) = %v, want 7", got)
	}
}

func TestReplicaBehind(t *testing.T) {
	info := "# Replication\r\nrole:master\r\nconnected_slaves:1\r\nslave0:ip=127.0.0.1,port=6380,state=online,offset=1000,lag=0\r\nmaster_repl_offset:1500\r\n"
	if n, ok := replicaBehind(info); !ok || n != 500 {
		t.Errorf("replicaBehind = %d, %v; want 500", n, ok)
	}
	if _, ok := replicaBehind("role:master\r\nconnected_slaves:0\r\nmaster_repl_offset:1500\r\n"); ok {
		t.Error("replicaBehind without a replica: ok")
	}
	if _, ok := replicaBehind("slave0:ip=127.0.0.1,port=6380,state=wait_bgsave,offset=0,lag=0\r\nmaster_repl_offset:1500\r\n"); ok {
		t.Error("replicaBehind with a replica in its first sync: ok")
	}
}

func TestSwapWindow(t *testing.T) {
	start := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	w := &swapWindow{start: start}
	if w.covers(start.Add(-time.Millisecond)) || !w.covers(start.Add(time.Hour)) {
		t.Error("an open window covers what committed after its start, only")
	}
	w.handled = start.Add(10 * time.Second)
	if !w.covers(start.Add(10*time.Second)) || w.covers(start.Add(11*time.Second)) {
		t.Error("a handled window ends when it was handled")
	}
	if (*swapWindow)(nil).covers(start) {
		t.Error("no window covers nothing")
	}
}

func TestWriterOwnsItsRows(t *testing.T) {
	const of, rows = 3, 10
	seen := map[int]int{}
	for n := range of {
		w := &writer{n: n, of: of, rng: newFaultPlan(uint64(n), 1).rng}
		for range 1000 {
			id := w.own(rows)
			if id < 1 || id > rows || id%of != n {
				t.Fatalf("writer %d of %d picked row %d", n, of, id)
			}
			seen[id]++
		}
	}
	if len(seen) != rows {
		t.Errorf("the writers picked %d rows of %d: %v", len(seen), rows, seen)
	}
}

func TestFaultPlanReplays(t *testing.T) {
	a, b, c := newFaultPlan(42, 10), newFaultPlan(42, 10), newFaultPlan(43, 10)
	same := true
	for range 50 {
		x, y, z := a.next(), b.next(), c.next()
		if x != y {
			t.Fatalf("the same seed drew %+v and %+v", x, y)
		}
		if x.gap < faultGap[0] || x.gap >= faultGap[1] || x.kind < 0 || x.kind >= 10 {
			t.Fatalf("draw %+v out of range", x)
		}
		same = same && x == z
	}
	if same {
		t.Error("seeds 42 and 43 drew the same faults")
	}
}
