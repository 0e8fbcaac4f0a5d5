package daemon

import (
	"maps"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
	"github.com/pg-invalidator/pg-invalidator/mapping"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

func TestLag(t *testing.T) {
	now := time.Unix(1000, 0)
	if got := lagSeconds(now, 0); got != 0 {
		t.Errorf("lagSeconds with nothing pending = %v, want 0", got)
	}
	if got := lagSeconds(now, now.Add(-1500*time.Millisecond).UnixNano()); got != 1.5 {
		t.Errorf("lagSeconds 1.5s after the commit = %v, want 1.5", got)
	}
	if got := lagSeconds(now, now.Add(time.Second).UnixNano()); got != 0 {
		t.Errorf("lagSeconds for a commit in the future (clock skew) = %v, want 0", got)
	}
	if got := lagBytes(100, 40); got != 60 {
		t.Errorf("lagBytes(100, 40) = %v, want 60", got)
	}
	if got := lagBytes(40, 100); got != 0 {
		t.Errorf("lagBytes(40, 100) = %v, want 0", got)
	}
}

func TestBatchBuckets(t *testing.T) {
	var st invalidator.Stats
	st.BatchSizes[0] = 2                                // <= 1
	st.BatchSizes[1] = 3                                // <= 4
	st.BatchSizes[3] = 1                                // <= 64
	st.BatchSizes[len(invalidator.BatchSizeBounds)] = 4 // > the largest bound: only in the count
	got := batchBuckets(st)
	want := map[float64]uint64{1: 2, 4: 5, 16: 5, 64: 6, 256: 6, 1024: 6, 4096: 6, 16384: 6, 65536: 6, 262144: 6, 1048576: 6}
	if !maps.Equal(got, want) {
		t.Errorf("batchBuckets = %v, want %v", got, want)
	}
}

// newTestMetrics builds metrics over a real mapper and an invalidator that
// never connects.
func newTestMetrics(t *testing.T) (*metrics, *mapping.Mapper) {
	t.Helper()
	rules, err := mapping.Parse("rules.toml", []byte(`
[[rule]]
table = "items"
del = ["item:<id>", "items:cat:<cat>"]
incr = ["v:items"]
`))
	if err != nil {
		t.Fatal(err)
	}
	inv, err := invalidator.New(invalidator.Options{URL: "redis://127.0.0.1:1/0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	mapper := mapping.NewMapper(rules)
	return newMetrics(rules, mapper, fanout{{name: DefaultTarget, inv: inv}}), mapper
}

// gather returns every sample by series, written as name{label="value",...}
// with the labels sorted, and histograms as their _count.
func gather(t *testing.T, m *metrics) map[string]float64 {
	t.Helper()
	families, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]float64)
	for _, f := range families {
		for _, s := range f.GetMetric() {
			var labels []string
			for _, l := range s.GetLabel() {
				labels = append(labels, l.GetName()+`="`+l.GetValue()+`"`)
			}
			name := f.GetName()
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[name] = s.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[name] = s.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[name+"_count"] = float64(s.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

func TestMetricsCountRowsAndReadStats(t *testing.T) {
	m, mapper := newTestMetrics(t)
	rel := &pginvalidator.Relation{ID: 7, Schema: "public", Name: "items", Columns: []pginvalidator.Column{{Name: "id"}, {Name: "cat"}}}
	row := func(id, cat string) pginvalidator.Row {
		r := make(pginvalidator.Row, 2)
		r[0] = pginvalidator.Value{Kind: pginvalidator.ValueText, Data: []byte(id)}
		if cat != "" {
			r[1] = pginvalidator.Value{Kind: pginvalidator.ValueText, Data: []byte(cat)}
		}
		return r
	}
	changes := []pginvalidator.Change{
		{Rel: rel, Op: pginvalidator.OpInsert, New: row("1", "3")},
		{Rel: rel, Op: pginvalidator.OpUpdate, Old: row("1", "3"), New: row("1", "4")},
		{Rel: rel, Op: pginvalidator.OpInsert, New: row("2", "")}, // cat is NULL
	}
	for i := range changes {
		m.rowChange(&changes[i])
		mapper.Commands(nil, &changes[i])
	}
	// The stream announces the relation again: a new pointer, the same series.
	rel2 := *rel
	m.rowChange(&pginvalidator.Change{Rel: &rel2, Op: pginvalidator.OpDelete, Old: row("1", "4")})

	commit := time.Now().Add(-time.Second)
	m.committed(100, commit)
	m.ack(100)
	m.see(160)

	got := gather(t, m)
	want := map[string]float64{
		`pg_invalidator_row_changes_total{op="insert",table="public.items"}`:   2,
		`pg_invalidator_row_changes_total{op="update",table="public.items"}`:   1,
		`pg_invalidator_row_changes_total{op="delete",table="public.items"}`:   1,
		`pg_invalidator_row_changes_total{op="truncate",table="public.items"}`: 0,
		`pg_invalidator_transactions_total`:                                    1,
		`pg_invalidator_keys_rendered_total{action="del"}`:                     6, // item:1 cat:3; item:1 cat:4 cat:3; item:2
		`pg_invalidator_keys_rendered_total{action="incr"}`:                    3,
		`pg_invalidator_keys_skipped_total{reason="null"}`:                     1,
		`pg_invalidator_keys_skipped_total{reason="unavailable"}`:              0,
		`pg_invalidator_commands_total{action="del",target="default"}`:         0,
		`pg_invalidator_redis_errors_total{target="default"}`:                  0,
		`pg_invalidator_target_up{target="default"}`:                           0,
		`pg_invalidator_batch_commands_count`:                                  0,
		`pg_invalidator_acknowledged_lsn`:                                      100,
		`pg_invalidator_replication_lag_bytes`:                                 60,
		`pg_invalidator_streaming`:                                             0,
		`pg_invalidator_commit_to_applied_seconds_count`:                       0,
	}
	for series, w := range want {
		if g, ok := got[series]; !ok || g != w {
			t.Errorf("%s = %v (present: %v), want %v", series, g, ok, w)
		}
	}
	if lag := got["pg_invalidator_replication_lag_seconds"]; lag < 1 {
		t.Errorf("replication_lag_seconds with a transaction pending for 1s = %v, want >= 1", lag)
	}
	if _, ok := got["go_goroutines"]; !ok {
		t.Error("no go_goroutines: the Go collector is missing")
	}
	if _, ok := got[`pg_invalidator_slot_wal_status{status="reserved"}`]; ok {
		t.Error("slot_wal_status present before the slot was ever read")
	}

	m.applied(time.Now())
	got = gather(t, m)
	if g := got["pg_invalidator_commit_to_applied_seconds_count"]; g != 1 {
		t.Errorf("commit_to_applied_seconds_count after applying = %v, want 1", g)
	}
	if g := got["pg_invalidator_replication_lag_seconds"]; g != 0 {
		t.Errorf("replication_lag_seconds when caught up = %v, want 0", g)
	}

	safe := int64(1 << 20)
	m.slot = replication.SlotInfo{Name: "pg_invalidator", Exists: true, WALStatus: "extended", SafeWALSize: safe}
	got = gather(t, m)
	for _, s := range walStatuses {
		series := `pg_invalidator_slot_wal_status{status="` + s + `"}`
		if w := boolValue(s == "extended"); got[series] != w {
			t.Errorf("%s = %v, want %v", series, got[series], w)
		}
	}
	if g := got["pg_invalidator_slot_safe_wal_size_bytes"]; g != float64(safe) {
		t.Errorf("slot_safe_wal_size_bytes = %v, want %v", g, safe)
	}
}

// TestDocumentedMetricsExist keeps the docs and the Grafana dashboard in
// step with the metrics: every pg_invalidator_ name they use exists, and
// docs/metrics.md lists every one.
func TestDocumentedMetricsExist(t *testing.T) {
	m, _ := newTestMetrics(t)
	safe := int64(1)
	m.slot = replication.SlotInfo{Name: "pg_invalidator", Exists: true, WALStatus: "reserved", SafeWALSize: safe}
	m.replicaTimeouts.WithLabelValues("standby1") // present only with replicas named
	m.replicaLagging.WithLabelValues("standby1")
	families, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	registered := make(map[string]bool)
	for _, f := range families {
		if strings.HasPrefix(f.GetName(), "pg_invalidator_") {
			registered[f.GetName()] = true
		}
	}
	descs := make(chan *prometheus.Desc, 64) // and those present only in some states
	scrapeCollector{m}.Describe(descs)
	close(descs)
	for d := range descs {
		if fq := regexp.MustCompile(`fqName: "(pg_invalidator_[a-z_]+)"`).FindStringSubmatch(d.String()); fq != nil {
			registered[fq[1]] = true
		}
	}
	name := regexp.MustCompile(`pg_invalidator_[a-z_]*[a-z]`)
	for _, file := range []string{"../docs/metrics.md", "../README.md", "../docs/guarantees.md", "../docs/high-availability.md",
		"../docs/operations.md", "../docs/postgresql.md", "../docs/redis.md", "../docs/rules.md", "../deploy/grafana/pg-invalidator.json"} {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		used := make(map[string]bool)
		for _, n := range name.FindAllString(string(data), -1) {
			if !registered[n] {
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if base, ok := strings.CutSuffix(n, suffix); ok && registered[base] {
						n = base
					}
				}
			}
			if !registered[n] {
				t.Errorf("%s names %s, which the daemon does not export", file, n)
			}
			used[n] = true
		}
		if file == "../docs/metrics.md" {
			for n := range registered {
				if !used[n] {
					t.Errorf("%s does not document %s", file, n)
				}
			}
		}
	}
}
