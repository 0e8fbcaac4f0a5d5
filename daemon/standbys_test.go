package daemon

import (
	"io"
	"log/slog"
	"reflect"
	"testing"
	"time"

	"github.com/pg-invalidator/pg-invalidator/mapping"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// TestStandbyGateWaiting checks which standbys a batch waits for: those
// behind it, not those given up on; and that one given up on is waited for
// again once it has replayed a batch.
func TestStandbyGateWaiting(t *testing.T) {
	rules, err := mapping.Parse("r.toml", []byte("[[rule]]\ntable = \"t\"\ndel = [\"k\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Replicas: []string{"a", "b", "c"}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	cfg.setDefaults()
	g := newStandbyGate(cfg, newMetrics(rules, mapping.NewMapper(rules), nil))
	pos := map[string]replication.Standby{
		"a": {Connected: true, Replay: 100},
		"b": {Connected: true, Replay: 50},
		"c": {Connected: true}, // replay_lsn NULL
	}
	if got, want := g.waiting(pos, true, 100), []string{"b", "c"}; !reflect.DeepEqual(got, want) {
		t.Errorf("waiting = %v, want %v", got, want)
	}
	if got := g.waiting(pos, false, 100); len(got) != 3 {
		t.Errorf("waiting with positions unknown = %v, want all three", got)
	}
	g.giveUp("b", "behind")
	g.giveUp("b", "behind") // once per streak
	if got, want := g.waiting(pos, true, 100), []string{"c"}; !reflect.DeepEqual(got, want) {
		t.Errorf("waiting with b given up on = %v, want %v", got, want)
	}
	if got, want := g.notes(), []string{"degraded: standby b is not waited for: behind"}; !reflect.DeepEqual(got, want) {
		t.Errorf("notes = %q, want %q", got, want)
	}
	pos["b"] = replication.Standby{Connected: true, Replay: 120}
	if got, want := g.waiting(pos, true, 100), []string{"c"}; !reflect.DeepEqual(got, want) {
		t.Errorf("waiting = %v, want %v", got, want)
	}
	if got := g.notes(); len(got) != 0 {
		t.Errorf("notes after b caught up = %q, want none", got)
	}
}

func TestGateQueryTimeout(t *testing.T) {
	for _, tt := range []struct{ gate, silent, want time.Duration }{
		{time.Second, 30 * time.Second, replicaQueryTimeout}, // a short gate timeout still gets a whole poll
		{20 * time.Second, 30 * time.Second, 20 * time.Second},
		{20 * time.Second, 5 * time.Second, 5 * time.Second}, // no longer than the primary may stay silent
		{20 * time.Second, 2 * time.Second, 2 * time.Second},
		{20 * time.Second, 0, 20 * time.Second}, // no bound given
	} {
		if got := gateQueryTimeout(tt.gate, tt.silent); got != tt.want {
			t.Errorf("gateQueryTimeout(%s, %s) = %s, want %s", tt.gate, tt.silent, got, tt.want)
		}
	}
}
