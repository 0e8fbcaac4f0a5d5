package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The published results are what docs/benchmarks.md shows: latestName in the
// results directory and the chart docs/benchmarks.svg. Earlier published runs
// keep their own file, named for their date, so that each run is stored once.
const latestName = "latest.json"

// output is where one run writes its results.
type output struct {
	publish bool     // replace the published results
	dir     string   // the JSON's directory
	chart   string   // the SVG's path; "-": none; empty: <dir>/<date>.svg
	notFull []string // the flags that keep the run from being a full one
}

// destinations decides where the run of o writes, in the module at root. A
// full run, or one with -publish, replaces the published results; any other
// run writes under bench/results/local, which git ignores, so that a quick
// run never changes what the docs show.
func destinations(o options, root string) output {
	out := output{publish: o.publishes(), dir: o.outDir, chart: o.chart, notFull: o.notFull}
	if out.dir == "" {
		out.dir = filepath.Join(root, "bench", "results")
		if !out.publish {
			out.dir = filepath.Join(out.dir, "local")
		}
	}
	if out.chart == "" && out.publish {
		out.chart = filepath.Join(root, "docs", "benchmarks.svg")
	}
	return out
}

// fileStamp is the file name, without extension, of the run started at t.
func fileStamp(t time.Time) string { return t.UTC().Format("2006-01-02T15-04-05Z") }

// save writes r, the run started at start, and says on w where it went.
func (out output) save(w io.Writer, r *Results, start time.Time) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if err := os.MkdirAll(out.dir, 0o755); err != nil {
		return fmt.Errorf("make results directory: %w", err)
	}
	stamp := fileStamp(start)
	if out.publish {
		archived, err := publishJSON(out.dir, b)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "results: %s\n", filepath.Join(out.dir, latestName))
		if archived != "" {
			fmt.Fprintf(w, "         the run it replaced is now %s\n", archived)
		}
	} else {
		path := filepath.Join(out.dir, stamp+".json")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			return fmt.Errorf("write results: %w", err)
		}
		fmt.Fprintf(w, "results: %s\n", path)
	}

	chart := out.chart
	if chart == "" {
		chart = filepath.Join(out.dir, stamp+".svg")
	}
	if chart != "-" {
		if err := os.MkdirAll(filepath.Dir(chart), 0o755); err != nil {
			return fmt.Errorf("make chart directory: %w", err)
		}
		if err := os.WriteFile(chart, []byte(chartSVG(r)), 0o644); err != nil {
			return fmt.Errorf("write chart: %w", err)
		}
		fmt.Fprintf(w, "chart:   %s\n", chart)
	}
	if !out.publish {
		fmt.Fprintf(w, "Not a full run (%s), so the published results (bench/results/%s, docs/benchmarks.svg) are unchanged; -publish replaces them.\n",
			strings.Join(out.notFull, " "), latestName)
	}
	return nil
}

// publishJSON makes b the latest published run in dir. The run it replaces
// moves to <its date>.json, whose name it returns; "" when there was none.
func publishJSON(dir string, b []byte) (archived string, err error) {
	archived, err = archiveName(dir)
	if err != nil {
		return "", err
	}
	latest := filepath.Join(dir, latestName)
	tmp := latest + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return "", fmt.Errorf("write results: %w", err)
	}
	if archived != "" {
		if err := os.Rename(latest, archived); err != nil {
			os.Remove(tmp)
			return "", fmt.Errorf("keep the previous run: %w", err)
		}
	}
	if err := os.Rename(tmp, latest); err != nil {
		return "", fmt.Errorf("write results (they are in %s): %w", tmp, err)
	}
	return archived, nil
}

// archiveName returns where dir's latest published run moves when a new
// one replaces it: <dir>/<its date>.json. It is "" when there is no latest
// run, and an error when the move would lose a run: latest.json has no
// date, or a different file already holds that name.
func archiveName(dir string) (string, error) {
	latest := filepath.Join(dir, latestName)
	b, err := os.ReadFile(latest)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read the published run: %w", err)
	}
	var r struct {
		Date string `json:"date"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return "", fmt.Errorf("%s: %w; move it aside to publish a new run", latest, err)
	}
	date, err := time.Parse(time.RFC3339, r.Date)
	if err != nil {
		return "", fmt.Errorf("%s: date %q is not an RFC 3339 time; move the file aside to publish a new run", latest, r.Date)
	}
	name := filepath.Join(dir, fileStamp(date)+".json")
	if old, err := os.ReadFile(name); err == nil && !bytes.Equal(old, b) {
		return "", fmt.Errorf("%s would move to %s, which holds a different run; move one of them aside to publish a new run", latest, name)
	}
	return name, nil
}
