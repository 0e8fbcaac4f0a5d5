package daemon

import (
	"errors"
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
	one := func(at int64) []targetState { return []targetState{{name: DefaultTarget, answered: at}} }
	two := func(eu, us int64) []targetState {
		return []targetState{{name: "eu", answered: eu}, {name: "us", answered: us}}
	}
	waiting := func(ts []targetState, i int, d time.Duration, err error) []targetState {
		ts[i].waitingSince, ts[i].lastErr = now.Add(-d), err
		return ts
	}
	noperm := errors.New("NOPERM User pginv has no permissions to run the 'unlink' command")
	tests := []struct {
		name      string
		streaming bool
		targets   []targetState
		want      []string
	}{
		{"not streaming", false, one(ago(time.Second)), []string{"not streaming from postgresql"}},
		{"redis never answered", true, one(0), []string{"redis has not answered yet"}},
		{"redis silent too long", true, one(ago(31 * time.Second)), []string{"redis has not answered for 31s"}},
		{"redis answered just now", true, one(ago(time.Second)), nil},
		{"redis answered at the limit", true, one(ago(30 * time.Second)), nil},
		{"one named target", true, []targetState{{name: "eu"}}, []string{"redis target eu has not answered yet"}},
		{"both targets answered", true, two(ago(time.Second), ago(2*time.Second)), nil},
		{"one target silent", true, two(ago(time.Second), ago(12*time.Second+30*time.Second)), []string{"redis target us has not answered for 42s"}},
		{"one target never answered", true, two(0, ago(time.Second)), []string{"redis target eu has not answered yet"}},
		{"every reason", false, two(0, ago(time.Minute)), []string{
			"not streaming from postgresql", "redis target eu has not answered yet", "redis target us has not answered for 1m0s"}},
		{"a batch waiting within the window", true, waiting(one(ago(time.Second)), 0, 29*time.Second, noperm), nil},
		{"a batch waiting past the window, ping answered", true, waiting(one(ago(time.Second)), 0, 41*time.Second, noperm),
			[]string{"redis has applied nothing for 41s: NOPERM User pginv has no permissions to run the 'unlink' command"}},
		{"a batch blocked with no error yet", true, waiting(one(ago(time.Second)), 0, 41*time.Second, nil),
			[]string{"redis has applied nothing for 41s"}},
		{"a multi-line error stays on one line", true, waiting(one(ago(time.Second)), 0, time.Minute, errors.New("a\nb")),
			[]string{"redis has applied nothing for 1m0s: a b"}},
		{"one target waiting and silent", true, waiting(two(ago(time.Second), ago(time.Minute)), 1, time.Minute, noperm), []string{
			"redis target us has not answered for 1m0s",
			"redis target us has applied nothing for 1m0s: NOPERM User pginv has no permissions to run the 'unlink' command"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := readiness(now, tt.streaming, tt.targets, 30*time.Second); !slices.Equal(got, tt.want) {
				t.Errorf("readiness = %q; want %q", got, tt.want)
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
	if code, body := get("/readyz"); code != 503 || body != "not streaming from postgresql\nredis has not answered yet\n" {
		t.Errorf("/readyz before streaming = %d %q, want 503 and both reasons, one a line", code, body)
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
