package integration

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder keeps the daemon's log records, for tests that read the fields
// of a line, and passes them on to the test log.
type recorder struct {
	t    *testing.T
	mu   sync.Mutex
	recs []slog.Record
	next slog.Handler
}

func newRecorder(t *testing.T) (*recorder, *slog.Logger) {
	r := &recorder{t: t, next: slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})}
	return r, slog.New(r)
}

func (r *recorder) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }
func (r *recorder) WithAttrs(as []slog.Attr) slog.Handler        { return &withAttrs{r, as} }
func (r *recorder) WithGroup(string) slog.Handler                { return r }
func (r *recorder) Handle(ctx context.Context, rec slog.Record) error {
	r.mu.Lock()
	r.recs = append(r.recs, rec.Clone())
	r.mu.Unlock()
	return r.next.Handle(ctx, rec)
}

type withAttrs struct {
	r  *recorder
	as []slog.Attr
}

func (w *withAttrs) Enabled(ctx context.Context, l slog.Level) bool { return w.r.Enabled(ctx, l) }
func (w *withAttrs) WithAttrs(as []slog.Attr) slog.Handler {
	return &withAttrs{w.r, append(append([]slog.Attr{}, w.as...), as...)}
}
func (w *withAttrs) WithGroup(string) slog.Handler { return w }
func (w *withAttrs) Handle(ctx context.Context, rec slog.Record) error {
	rec = rec.Clone()
	rec.AddAttrs(w.as...)
	return w.r.Handle(ctx, rec)
}

// lines returns the fields of every record logged with msg, in order.
func (r *recorder) lines(msg string) []map[string]slog.Value {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []map[string]slog.Value
	for _, rec := range r.recs {
		if rec.Message != msg {
			continue
		}
		fields := map[string]slog.Value{}
		rec.Attrs(func(a slog.Attr) bool { fields[a.Key] = a.Value.Resolve(); return true })
		out = append(out, fields)
	}
	return out
}

// num reads a numeric field; ok is false when it is absent.
func num(fields map[string]slog.Value, key string) (float64, bool) {
	v, ok := fields[key]
	if !ok {
		return 0, false
	}
	switch v.Kind() {
	case slog.KindInt64:
		return float64(v.Int64()), true
	case slog.KindUint64:
		return float64(v.Uint64()), true
	case slog.KindFloat64:
		return v.Float64(), true
	}
	return 0, false
}

// TestLagIsLoggedWhileBehind restarts the daemon after a backlog of small
// transactions and two large ones, and reads what it said while it caught
// up: the lag in bytes and seconds, the rates and the time left, then one
// line once caught up.
func TestLagIsLoggedWhileBehind(t *testing.T) {
	f := newFixture(t, `
CREATE TABLE items (id bigint PRIMARY KEY, cat int, v int NOT NULL DEFAULT 0);
ALTER TABLE items REPLICA IDENTITY FULL;
INSERT INTO items (id, cat) SELECT g, g % 10 FROM generate_series(1, 50000) g;
`, markerSchema)
	rules := f.rules(itemsRules)
	first := f.start(rules) // creates the slot
	if err := first.stop(); err != nil {
		t.Fatal(err)
	}

	f.exec(`DO $$ BEGIN FOR i IN 1..5000 LOOP UPDATE items SET v = v + 1 WHERE id = 1 + i % 50000; COMMIT; END LOOP; END $$`)
	f.exec("UPDATE items SET v = v + 1")
	f.exec("UPDATE items SET v = v + 1")
	f.exec(`DO $$ BEGIN FOR i IN 1..5000 LOOP UPDATE items SET v = v + 1 WHERE id = 1 + i % 50000; COMMIT; END LOOP; END $$`)

	rec, log := newRecorder(t)
	cfg := f.config(rules)
	cfg.Logger = log
	cfg.ProgressInterval = 50 * time.Millisecond
	cfg.BehindBytes = 256 << 10
	cfg.BehindTime = time.Hour // behind by bytes only, so the test does not depend on how fast the backlog was written
	f.startConfig(cfg)
	f.sync()
	waitFor(t, 30*time.Second, func() bool { return len(rec.lines("caught up")) > 0 },
		func() string {
			return fmt.Sprintf("no \"caught up\" line; %d \"behind the server\" lines", len(rec.lines("behind the server")))
		})

	behind := rec.lines("behind the server")
	if len(behind) == 0 {
		t.Fatal("no \"behind the server\" line while catching up")
	}
	sawRate := false
	for i, l := range behind {
		b, ok := num(l, "behind_bytes")
		if !ok || b < float64(cfg.BehindBytes) || b > 1<<30 {
			t.Errorf("line %d: behind_bytes = %v, want between %d and 1 GB", i, l["behind_bytes"], cfg.BehindBytes)
		}
		if s, ok := num(l, "behind_seconds"); ok && (s < 0 || s > 600) {
			t.Errorf("line %d: behind_seconds = %v, want 0-600", i, s)
		}
		if _, ok := l["eta"]; !ok {
			t.Errorf("line %d has no eta: %v", i, l)
		}
		if applied, ok := num(l, "applied_bytes_per_second"); ok && applied > 0 {
			sawRate = true
			if _, ok := num(l, "catch_up_bytes_per_second"); !ok {
				t.Errorf("line %d has a rate but no catch_up_bytes_per_second: %v", i, l)
			}
			if _, ok := num(l, "wal_bytes_per_second"); !ok {
				t.Errorf("line %d has a rate but no wal_bytes_per_second: %v", i, l)
			}
		}
	}
	if !sawRate {
		t.Errorf("no line with applied_bytes_per_second > 0 among %d: %v", len(behind), behind)
	}
	caught := rec.lines("caught up")
	if len(caught) != 1 {
		t.Errorf("%d \"caught up\" lines, want 1", len(caught))
	}
	if b, _ := num(caught[0], "behind_bytes"); b >= float64(cfg.BehindBytes) {
		t.Errorf("caught up with behind_bytes = %v", b)
	}
	if d, ok := caught[0]["behind_for"]; !ok || !strings.HasSuffix(d.String(), "s") {
		t.Errorf("caught up line has behind_for = %v", d)
	}
}

// TestLongPatternScanLogsProgress truncates a table whose rule deletes a
// pattern matching many keys, and reads the scan's progress lines: keys
// scanned and deleted so far, time spent, and a last line with the total.
func TestLongPatternScanLogsProgress(t *testing.T) {
	f := newFixture(t, "CREATE TABLE items (id bigint PRIMARY KEY, cat int, v int NOT NULL DEFAULT 0)", "ALTER TABLE items REPLICA IDENTITY FULL", markerSchema)
	rules := f.rules(itemsRules)
	const n = 100000
	pipe := f.rdb.Pipeline()
	for i := range n {
		pipe.Set(context.Background(), f.key(fmt.Sprintf("item:%d", i)), "cached", time.Hour)
	}
	if _, err := pipe.Exec(context.Background()); err != nil {
		t.Fatal(err)
	}

	rec, log := newRecorder(t)
	cfg := f.config(rules)
	cfg.Logger = log
	cfg.ProgressInterval = 20 * time.Millisecond
	f.startConfig(cfg)
	f.exec("TRUNCATE items")
	f.sync()

	pattern := f.key("item:*")
	var progress []map[string]slog.Value
	for _, l := range rec.lines("pattern scan in progress") {
		if l["pattern"].String() == pattern {
			progress = append(progress, l)
		}
	}
	if len(progress) == 0 {
		t.Fatalf("no \"pattern scan in progress\" line for %s", pattern)
	}
	prevDeleted := -1.0
	for i, l := range progress {
		scanned, _ := num(l, "keys_scanned")
		deleted, ok := num(l, "keys_deleted")
		if !ok || deleted < prevDeleted || deleted > scanned || scanned <= 0 {
			t.Errorf("line %d: keys_scanned %v, keys_deleted %v (previous %v)", i, l["keys_scanned"], l["keys_deleted"], prevDeleted)
		}
		prevDeleted = deleted
		if _, err := time.ParseDuration(l["elapsed"].String()); err != nil {
			t.Errorf("line %d: elapsed %v: %v", i, l["elapsed"], err)
		}
	}
	var done []map[string]slog.Value
	for _, l := range rec.lines("pattern scan done") {
		if l["pattern"].String() == pattern {
			done = append(done, l)
		}
	}
	if len(done) != 1 {
		t.Fatalf("%d \"pattern scan done\" lines for %s, want 1", len(done), pattern)
	}
	if d, _ := num(done[0], "keys_deleted"); d != n {
		t.Errorf("pattern scan done: keys_deleted = %v, want %d", d, n)
	}
	if s, _ := num(done[0], "keys_scanned"); s < n {
		t.Errorf("pattern scan done: keys_scanned = %v, want at least %d", s, n)
	}
}
