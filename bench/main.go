// Command bench measures pg-invalidator against the physical limit on this
// machine: how fast PostgreSQL itself decodes the same WAL, how fast
// pg_recvlogical streams it, and how fast the loop a user would write from
// pglogrepl's example plus go-redis handles it.
//
// It starts its own PostgreSQL and Redis (internal/localsvc) and needs
// nothing else:
//
//	go run ./bench                     # full size (see -help); about 7 minutes on 2 cores
//	go run ./bench -small-txs 20000 -large-rows 100000 -samples 200   # a quick run
//	go run ./bench -scenarios small -skip baseline -perf /tmp/perf   # profile each contender
//	go run ./bench chart bench/results/latest.json docs/benchmarks.svg   # redraw the chart
//	go run ./bench race                # the race scenarios (make race): about 2 minutes; see race.go
//	go run ./bench chaos -time 2m      # faults under load, then the invariants (make chaos); see chaos.go
//
// Every contender of a catch-up scenario starts from its own copy of one
// replication slot (pg_copy_logical_replication_slot), made after the
// backlog was written, so they all read the same WAL from the same point:
//
//   - decode: SELECT count(*) FROM pg_logical_slot_peek_binary_changes(...),
//     the server's own decoding and nothing else;
//   - pg_recvlogical: the same stream over the wire into /dev/null;
//   - baseline: bench/baseline.go, one DEL per key and an acknowledgement
//     after each commit, run as a child process (bench baseline ...);
//   - daemon: bin/pg-invalidator run, built from ./cmd/pg-invalidator and run
//     as a child process, timed until its slot's confirmed_flush_lsn reached
//     the backlog's last commit and that commit's key was gone from Redis;
//   - daemon (cluster): the same binary against a private Redis Cluster of 3
//     masters and 3 replicas ([redis] mode = "cluster"), started once, when a
//     catch-up scenario first runs; -cluster=false leaves it out.
//
// The stale window scenario runs the daemon and the baseline side by side,
// each on its own slot and its own Redis, and measures how long a key stays
// in each Redis after the UPDATE that invalidates it has committed.
//
// It prints a table and writes the results as JSON and an SVG chart. Only a
// full run (every flag that changes what is measured at its default) or a
// run with -publish replaces what the docs show: bench/results/latest.json
// (the run it replaces moves to bench/results/<its date>.json, so that each
// run is kept exactly once) and docs/benchmarks.svg. Any other run writes
// bench/results/local/<date>.json and <date>.svg, which git ignores.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options are the command-line flags. The defaults are the full run.
type options struct {
	smallTxs   int           // single-row UPDATE transactions in the small-transactions backlog
	largeRows  int           // rows in items, all updated by the one large transaction
	samples    int           // stale window samples per condition
	loadTPS    int           // background load during the loaded stale window samples
	clients    int           // pgbench clients building the small-transactions backlog
	scenarios  string        // which scenarios to run
	outDir     string        // where the JSON goes; empty: bench/results, or bench/results/local for a run that does not publish
	chart      string        // where the SVG goes; empty: docs/benchmarks.svg, or next to the JSON for a run that does not publish; "-": none
	cluster    bool          // also run the daemon against a Redis Cluster in the catch-up scenarios
	skip       string        // catch-up contenders left out, comma-separated
	runs       int           // runs of each catch-up contender but the baseline; the median is reported
	perfDir    string        // where perf record writes a profile of each streaming contender; empty: no profiling
	tpSeconds  time.Duration // how long pgbench runs at each rate of the throughput scenario
	small      bool          // quick sizes for every scenario
	transports string        // the transports the catch-up contenders use to read the WAL: tcp, unix
	altDaemon  string        // another pg-invalidator binary, run interleaved with this one; empty: none
	visibility string        // the daemon's [postgres] visibility; empty: its default
	bulkRows   []int         // table sizes of the bulk scenario
	workMem    string        // the daemon's logical_decoding_work_mem in the bulk scenario; empty: its default
	publish    bool          // replace the published results even when the run is not a full one
	verbose    bool

	// notFull lists the flags, as -name=value, whose values make this run
	// differ from the full run. Empty: a full run, which publishes.
	notFull []string
}

// unmeasured are the flags that change where the results go or what is
// printed, not what is measured: setting them keeps a full run full.
var unmeasured = map[string]bool{"out": true, "chart": true, "publish": true, "v": true}

// publishes reports whether the run replaces the published results.
func (o options) publishes() bool { return o.publish || len(o.notFull) == 0 }

func main() {
	if len(os.Args) > 1 && os.Args[1] == "baseline" {
		os.Exit(baselineMain(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "chart" {
		os.Exit(chartMain(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "race" {
		os.Exit(raceMain(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "chaos" {
		os.Exit(chaosMain(os.Args[2:]))
	}

	o, err := parseOptions(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// parseOptions parses the command line. It has printed why when it returns
// an error.
func parseOptions(args []string, output io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.IntVar(&o.smallTxs, "small-txs", 200_000, "single-row UPDATE transactions in the small-transactions backlog")
	fs.IntVar(&o.largeRows, "large-rows", 1_000_000, "rows in the table, all updated by the one large transaction")
	fs.IntVar(&o.samples, "samples", 1000, "stale window samples per condition (idle, loaded)")
	fs.IntVar(&o.loadTPS, "load-tps", 1000, "background single-row transactions per second during the loaded stale window")
	fs.IntVar(&o.clients, "clients", 4, "pgbench clients that write the small-transactions backlog")
	fs.StringVar(&o.scenarios, "scenarios", "small,large,stale,throughput,bulk", "comma-separated scenarios to run: small, large, stale, throughput, bulk, and split (not by default: one daemon against two on two slots)")
	fs.DurationVar(&o.tpSeconds, "throughput-time", 30*time.Second, "how long pgbench writes at each rate of the throughput scenario")
	fs.BoolVar(&o.small, "small", false, "a quick run of every scenario: -small-txs 20000 -large-rows 100000 -samples 200 -runs 1 -throughput-time 5s, unless set")
	fs.StringVar(&o.outDir, "out", "", "directory for the JSON results (default: bench/results in the module for a run that publishes, else bench/results/local)")
	fs.StringVar(&o.chart, "chart", "", "SVG chart to write (default: docs/benchmarks.svg in the module for a run that publishes, else <date>.svg beside the JSON; \"-\" for none)")
	fs.BoolVar(&o.cluster, "cluster", true, "in the catch-up scenarios, also run the daemon against a 3-master Redis Cluster (\"daemon (cluster)\")")
	fs.IntVar(&o.runs, "runs", 3, "runs of each catch-up contender (the baseline runs once); the table shows the median run")
	fs.StringVar(&o.skip, "skip", "", "catch-up contenders to leave out, comma-separated: pg_recvlogical, baseline, daemon (decode always runs: it is the yardstick)")
	fs.StringVar(&o.transports, "transports", "tcp,unix", "how the catch-up contenders read the WAL, comma-separated: tcp (127.0.0.1), unix (the server's Unix socket)")
	fs.StringVar(&o.visibility, "visibility", "", "the daemon's [postgres] visibility (on, auto, off); empty: its default")
	bulkRows := fs.String("bulk-rows", "100000,1000000", "comma-separated table sizes of the bulk scenario: one UPDATE of every row, every key cached, the daemon live")
	fs.StringVar(&o.workMem, "work-mem", "", "the daemon's logical_decoding_work_mem in the bulk scenario (\"16MB\"); empty: its default")
	fs.StringVar(&o.altDaemon, "alt-daemon", "", "another pg-invalidator binary to run interleaved with this one, as \"daemon (alt)\" (to compare two builds)")
	fs.StringVar(&o.perfDir, "perf", "", "record a machine-wide perf profile (perf record -a -g) of each catch-up contender into this directory")
	fs.BoolVar(&o.publish, "publish", false, "replace bench/results/latest.json and docs/benchmarks.svg even though flags make this run differ from the full run")
	fs.BoolVar(&o.verbose, "v", false, "print each step with its time")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: go run ./bench [flags]

Starts a private PostgreSQL and Redis, builds pg-invalidator, and measures it
against PostgreSQL's own decode time, pg_recvlogical and a hand-written
pglogrepl + go-redis loop. Prints a table; writes JSON and an SVG chart.

A full run (no flag that changes what is measured) publishes: it replaces
bench/results/latest.json, moving the run it replaces to
bench/results/<its date>.json, and docs/benchmarks.svg. Any other run writes
bench/results/local/<date>.json and .svg, which git ignores, unless -publish.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(output, "bench: unexpected argument %q\n", fs.Arg(0))
		return o, errors.New("usage")
	}
	if o.small {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, v := range map[string]string{"small-txs": "20000", "large-rows": "100000", "samples": "200", "runs": "1", "throughput-time": "5s"} {
			if !set[name] {
				fs.Set(name, v)
			}
		}
	}
	for s := range strings.SplitSeq(*bulkRows, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fmt.Fprintf(output, "bench: -bulk-rows: %q is not a number of rows\n", s)
			return o, errors.New("usage")
		}
		o.bulkRows = append(o.bulkRows, n)
	}
	if o.tpSeconds < time.Second {
		fmt.Fprintln(output, "bench: -throughput-time must be at least 1s")
		return o, errors.New("usage")
	}
	if o.smallTxs < 1 || o.largeRows < 1 || o.samples < 1 || o.clients < 1 || o.loadTPS < 1 || o.runs < 1 {
		fmt.Fprintln(output, "bench: -small-txs, -large-rows, -samples, -clients, -load-tps and -runs must be at least 1")
		return o, errors.New("usage")
	}
	fs.Visit(func(f *flag.Flag) {
		if !unmeasured[f.Name] && f.Value.String() != f.DefValue {
			o.notFull = append(o.notFull, "-"+f.Name+"="+f.Value.String())
		}
	})
	return o, nil
}

func run(ctx context.Context, o options) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	out := destinations(o, root)
	if out.publish {
		// Fail now, not after a run of minutes, if the run it replaces
		// cannot be kept.
		if _, err := archiveName(out.dir); err != nil {
			return err
		}
	}
	want := map[string]bool{}
	for s := range strings.SplitSeq(o.scenarios, ",") {
		switch s = strings.TrimSpace(s); s {
		case "small", "large", "stale", "throughput", "bulk", "split":
			want[s] = true
		case "":
		default:
			return fmt.Errorf("-scenarios: unknown scenario %q (want small, large, stale, throughput, bulk or split)", s)
		}
	}

	for t := range strings.SplitSeq(o.transports, ",") {
		switch t = strings.TrimSpace(t); t {
		case "tcp", "unix", "":
		default:
			return fmt.Errorf("-transports: unknown transport %q (want tcp or unix)", t)
		}
	}
	for c := range strings.SplitSeq(o.skip, ",") {
		switch c = strings.TrimSpace(c); c {
		case cRecvlogical, cBaseline, cDaemon, "":
		default:
			return fmt.Errorf("-skip: unknown contender %q (want pg_recvlogical, baseline or daemon)", c)
		}
	}

	start := time.Now()
	e, err := setup(ctx, root, o)
	if err != nil {
		return err
	}
	defer e.close()

	res := &Results{
		Date:    start.UTC().Format(time.RFC3339),
		Machine: e.machine,
		Params: Params{
			SmallTxs: o.smallTxs, LargeRows: o.largeRows, Samples: o.samples, LoadTPS: o.loadTPS,
			PgbenchClients: o.clients, Runs: o.runs, PostgresSettings: postgresSettings,
			ThroughputSeconds: o.tpSeconds.Seconds(), Transports: o.transports,
			Templates: []string{"item:<id>", "items:cat:<cat>", "other:<id>"},
		},
	}
	printMachine(os.Stdout, res.Machine)

	if want["small"] {
		sc, err := e.catchup(ctx, "small", fmt.Sprintf("%d single-row UPDATE transactions", o.smallTxs), e.buildSmall)
		if err != nil {
			return fmt.Errorf("small transactions: %w", err)
		}
		res.CatchUp = append(res.CatchUp, *sc)
	}
	if want["large"] {
		sc, err := e.catchup(ctx, "large", fmt.Sprintf("one UPDATE of %d rows", o.largeRows), e.buildLarge)
		if err != nil {
			return fmt.Errorf("large transaction: %w", err)
		}
		res.CatchUp = append(res.CatchUp, *sc)
	}
	if want["stale"] {
		st, err := e.staleWindow(ctx)
		if err != nil {
			return fmt.Errorf("stale window: %w", err)
		}
		res.Stale = st
	}
	if want["throughput"] {
		tp, err := e.throughput(ctx)
		if err != nil {
			return fmt.Errorf("throughput: %w", err)
		}
		res.Throughput = tp
	}
	if want["bulk"] {
		b, err := e.bulk(ctx)
		if err != nil {
			return err
		}
		res.Bulk = b
	}
	if want["split"] {
		sp, err := e.split(ctx)
		if err != nil {
			return fmt.Errorf("split: %w", err)
		}
		res.Split = sp
	}
	res.Targets = evaluate(res)
	res.TotalSeconds = time.Since(start).Seconds()

	printResults(os.Stdout, res)
	return out.save(os.Stdout, res, start)
}

// chartMain is "bench chart results.json out.svg": it redraws the chart of
// an earlier run.
func chartMain(args []string) int {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go run ./bench chart bench/results/latest.json docs/benchmarks.svg")
		return 2
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	var r Results
	if err := json.Unmarshal(b, &r); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %s: %v\n", args[0], err)
		return 1
	}
	if err := os.WriteFile(args[1], []byte(chartSVG(&r)), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	return 0
}

// moduleRoot finds the directory holding go.mod, from the working directory up.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod above %s: run the bench from inside the module", dir)
		}
	}
}
