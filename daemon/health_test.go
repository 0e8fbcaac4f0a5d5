package daemon

import (
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestReadiness(t *testing.T) {
	now := time.Unix(1000, 0)
	ago := func(d time.Duration) int64 { return now.Add(-d).UnixNano() }
	one := func(at int64) []answered { return []answered{{DefaultTarget, at}} }
	two := func(eu, us int64) []answered { return []answered{{"eu", eu}, {"us", us}} }
	tests := []struct {
		name      string
		streaming bool
		targets   []answered
		wantOK    bool
		wantWhy   string
	}{
		{"not streaming", false, one(ago(time.Second)), false, "not streaming from postgresql"},
		{"redis never answered", true, one(0), false, "redis has not answered yet"},
		{"redis silent too long", true, one(ago(31 * time.Second)), false, "redis has not answered for 31s"},
		{"redis answered just now", true, one(ago(time.Second)), true, ""},
		{"redis answered at the limit", true, one(ago(30 * time.Second)), true, ""},
		{"one named target", true, []answered{{"eu", 0}}, false, "redis target eu has not answered yet"},
		{"both targets answered", true, two(ago(time.Second), ago(2*time.Second)), true, ""},
		{"one target silent", true, two(ago(time.Second), ago(12*time.Second+30*time.Second)), false, "redis target us has not answered for 42s"},
		{"one target never answered", true, two(0, ago(time.Second)), false, "redis target eu has not answered yet"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, why := readiness(now, tt.streaming, tt.targets, 30*time.Second)
			if ok != tt.wantOK || why != tt.wantWhy {
				t.Errorf("readiness = %v, %q; want %v, %q", ok, why, tt.wantOK, tt.wantWhy)
			}
		})
	}
}

func TestHandler(t *testing.T) {
	m, _ := newTestMetrics(t)
	srv := httptest.NewServer(m.handler(30 * time.Second))
	defer srv.Close()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}

	if code, body := get("/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q, want 200 \"ok\\n\"", code, body)
	}
	if code, body := get("/readyz"); code != 503 || body != "not streaming from postgresql\n" {
		t.Errorf("/readyz before streaming = %d %q, want 503", code, body)
	}
	m.streaming.Store(true)
	m.targets[0].record(true)
	if code, body := get("/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz while streaming = %d %q, want 200 \"ready\\n\"", code, body)
	}
	code, body := get("/metrics")
	if code != 200 {
		t.Fatalf("/metrics = %d", code)
	}
	names := make(map[string]bool)
	for line := range strings.Lines(body) {
		if name, ok := strings.CutPrefix(line, "# TYPE "); ok {
			names[strings.Fields(name)[0]] = true
		}
	}
	for _, want := range []string{"pg_invalidator_streaming", "pg_invalidator_commands_total", "process_cpu_seconds_total"} {
		if !names[want] {
			t.Errorf("/metrics has no %s; it has %v", want, slices.Sorted(maps.Keys(names)))
		}
	}
}
