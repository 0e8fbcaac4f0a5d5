package main

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Only a full run, or -publish, replaces what the docs show.
func TestWhichRunsPublish(t *testing.T) {
	tests := []struct {
		args []string
		want bool
	}{
		{nil, true},
		{[]string{"-v"}, true},
		{[]string{"-small-txs", "200000", "-runs", "3"}, true}, // the defaults, spelled out
		{[]string{"-out", "/tmp/x", "-chart", "-"}, true},
		{[]string{"-small-txs", "20000", "-large-rows", "100000", "-samples", "200"}, false}, // the README's quick run
		{[]string{"-small-txs", "20000", "-large-rows", "100000", "-samples", "200", "-publish"}, true},
		{[]string{"-scenarios", "stale"}, false},
		{[]string{"-cluster=false"}, false},
		{[]string{"-skip", "baseline"}, false},
		{[]string{"-runs", "5"}, false},
		{[]string{"-perf", "/tmp/perf"}, false},
		{[]string{"-load-tps", "500"}, false},
		{[]string{"-clients", "2"}, false},
	}
	for _, tt := range tests {
		o, err := parseOptions(tt.args, io.Discard)
		if err != nil {
			t.Fatalf("%v: %v", tt.args, err)
		}
		if got := o.publishes(); got != tt.want {
			t.Errorf("%v: publishes() = %v, want %v (not full because of %v)", tt.args, got, tt.want, o.notFull)
		}
	}
}

// fakeModule makes a module root holding published results (the
// repository's own latest.json) and chart, as a checkout has them.
func fakeModule(t *testing.T) (root string, latest, chart []byte) {
	t.Helper()
	root = t.TempDir()
	latest, err := os.ReadFile("results/latest.json")
	if err != nil {
		t.Fatal(err)
	}
	chart = []byte("<svg>the published chart</svg>\n")
	for path, b := range map[string][]byte{"bench/results/latest.json": latest, "docs/benchmarks.svg": chart} {
		path = filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root, latest, chart
}

func readResults(t *testing.T, path string) *Results {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r Results
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return &r
}

func saveRun(t *testing.T, root string, args []string, r *Results, start time.Time) string {
	t.Helper()
	o, err := parseOptions(args, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := destinations(o, root).save(&out, r, start); err != nil {
		t.Fatalf("save %v: %v", args, err)
	}
	return out.String()
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The README's quick run writes under bench/results/local, says where, and
// leaves the published results as they were.
func TestQuickRunLeavesPublishedResults(t *testing.T) {
	root, latest, chart := fakeModule(t)
	r := readResults(t, filepath.Join(root, "bench/results/latest.json"))
	start := time.Date(2026, 12, 1, 9, 30, 0, 0, time.UTC)
	r.Date = start.Format(time.RFC3339)

	said := saveRun(t, root, []string{"-small-txs", "20000", "-large-rows", "100000", "-samples", "200"}, r, start)

	if got := mustRead(t, filepath.Join(root, "bench/results/latest.json")); !bytes.Equal(got, latest) {
		t.Error("the quick run changed bench/results/latest.json")
	}
	if got := mustRead(t, filepath.Join(root, "docs/benchmarks.svg")); !bytes.Equal(got, chart) {
		t.Error("the quick run changed docs/benchmarks.svg")
	}
	for _, name := range []string{"2026-12-01T09-30-00Z.json", "2026-12-01T09-30-00Z.svg"} {
		path := filepath.Join(root, "bench/results/local", name)
		if _, err := os.Stat(path); err != nil {
			t.Errorf("the quick run did not write %s: %v", path, err)
		}
		if !strings.Contains(said, path) {
			t.Errorf("the quick run did not say it wrote %s; it said:\n%s", path, said)
		}
	}
	if got := readResults(t, filepath.Join(root, "bench/results/local/2026-12-01T09-30-00Z.json")).Date; got != r.Date {
		t.Errorf("local results hold date %q, want %q", got, r.Date)
	}
	for _, want := range []string{"-small-txs=20000", "-publish"} {
		if !strings.Contains(said, want) {
			t.Errorf("the quick run's message lacks %q:\n%s", want, said)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(root, "bench/results"))
	if len(entries) != 2 { // latest.json and local/
		t.Errorf("bench/results holds %d entries, want latest.json and local/ only", len(entries))
	}
}

// A full run replaces the published results, and the run it replaces moves
// to a file named for its date: every run is kept, and only once.
func TestFullRunPublishes(t *testing.T) {
	root, latest, chart := fakeModule(t)
	oldDate := readResults(t, filepath.Join(root, "bench/results/latest.json")).Date
	archived := filepath.Join(root, "bench/results", fileStamp(mustParse(t, oldDate))+".json")

	r := readResults(t, filepath.Join(root, "bench/results/latest.json"))
	start := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	r.Date = start.Format(time.RFC3339)
	said := saveRun(t, root, nil, r, start)

	if got := readResults(t, filepath.Join(root, "bench/results/latest.json")).Date; got != r.Date {
		t.Errorf("latest.json holds the run of %s, want the new one of %s", got, r.Date)
	}
	if got := mustRead(t, archived); !bytes.Equal(got, latest) {
		t.Errorf("%s does not hold the replaced run byte for byte", archived)
	}
	if got := mustRead(t, filepath.Join(root, "docs/benchmarks.svg")); bytes.Equal(got, chart) || !bytes.HasPrefix(got, []byte("<svg")) {
		t.Error("the full run did not redraw docs/benchmarks.svg")
	}
	if !strings.Contains(said, archived) {
		t.Errorf("the full run did not say where the replaced run went:\n%s", said)
	}
	if _, err := os.Stat(filepath.Join(root, "bench/results/local")); err == nil {
		t.Error("the full run wrote into bench/results/local")
	}

	// A second one archives the first; no two files hold the same run.
	second := readResults(t, filepath.Join(root, "bench/results/latest.json"))
	start2 := start.Add(time.Hour)
	second.Date = start2.Format(time.RFC3339)
	saveRun(t, root, []string{"-runs", "5", "-publish"}, second, start2)
	entries, err := os.ReadDir(filepath.Join(root, "bench/results"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
		b := string(mustRead(t, filepath.Join(root, "bench/results", e.Name())))
		if other, ok := seen[b]; ok {
			t.Errorf("%s and %s are the same run", other, e.Name())
		}
		seen[b] = e.Name()
	}
	want := []string{fileStamp(mustParse(t, oldDate)) + ".json", "2026-12-01T10-00-00Z.json"}
	slices.Sort(want) // the published run's date may come after the test's own
	want = append(want, "latest.json")
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("bench/results holds %v, want %v", names, want)
	}
}

// A run is not published over a latest.json whose run cannot be kept.
func TestPublishRefusesToLoseARun(t *testing.T) {
	root, latest, _ := fakeModule(t)
	date := readResults(t, filepath.Join(root, "bench/results/latest.json")).Date
	clash := filepath.Join(root, "bench/results", fileStamp(mustParse(t, date))+".json")
	if err := os.WriteFile(clash, []byte("{\"date\": \"another run\"}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := archiveName(filepath.Join(root, "bench/results"))
	if err == nil || !strings.Contains(err.Error(), "holds a different run") {
		t.Fatalf("archiveName = %v, want an error saying the archive name holds a different run", err)
	}
	if got := mustRead(t, filepath.Join(root, "bench/results/latest.json")); !bytes.Equal(got, latest) {
		t.Error("latest.json changed")
	}
}

func mustParse(t *testing.T, date string) time.Time {
	t.Helper()
	d, err := time.Parse(time.RFC3339, date)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
