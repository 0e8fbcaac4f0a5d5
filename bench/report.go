package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// Results is everything one run measured; it is what the JSON holds.
type Results struct {
	Date         string       `json:"date"`
	TotalSeconds float64      `json:"total_seconds"`
	Machine      Machine      `json:"machine"`
	Params       Params       `json:"params"`
	CatchUp      []CatchUp    `json:"catch_up"`
	Stale        []Stale      `json:"stale_window"`
	Throughput   []Throughput `json:"throughput,omitempty"`
	Split        []Split      `json:"split,omitempty"`
	Bulk         []Bulk       `json:"bulk,omitempty"`
	Targets      []Target     `json:"targets"`
}

// Params are the sizes and settings of the run.
type Params struct {
	SmallTxs          int      `json:"small_txs"`
	LargeRows         int      `json:"large_rows"`
	Samples           int      `json:"samples"`
	LoadTPS           int      `json:"load_tps"`
	PgbenchClients    int      `json:"pgbench_clients"`
	Runs              int      `json:"runs_per_contender"`
	PostgresSettings  []string `json:"postgres_settings"`
	Templates         []string `json:"templates"`
	ThroughputSeconds float64  `json:"throughput_seconds,omitempty"`
	Transports        string   `json:"transports,omitempty"`
}

// Target is one goal from the issue, checked against the numbers. Targets
// are reported, not asserted.
type Target struct {
	Name  string  `json:"name"`
	Limit float64 `json:"limit"`
	Got   float64 `json:"got"`
	Unit  string  `json:"unit"`
	Met   bool    `json:"met"`
}

func (r *Results) run(scenario, contender string) (Run, bool) {
	for _, sc := range r.CatchUp {
		if sc.Scenario == scenario {
			for _, x := range sc.Runs {
				if x.Contender == contender {
					return x, true
				}
			}
		}
	}
	return Run{}, false
}

func (r *Results) delay(condition, contender string) (Delay, bool) {
	for _, st := range r.Stale {
		if st.Condition == condition {
			for _, d := range st.Stats {
				if d.Contender == contender {
					return d, true
				}
			}
		}
	}
	return Delay{}, false
}

// evaluate checks the targets against whatever scenarios ran.
func evaluate(r *Results) []Target {
	var ts []Target
	if d, ok := r.run("small", cDaemon); ok {
		ts = append(ts, Target{Name: "small, TCP: daemon / decode", Limit: 3.0, Got: d.Ratio, Unit: "×"})
		if len(d.AllSeconds) > 1 {
			ts = append(ts, Target{Name: "small, TCP: daemon's slowest run / its median", Limit: 1.5, Got: slices.Max(d.AllSeconds) / d.Seconds, Unit: "×"})
		}
	}
	if d, ok := r.run("small", cDaemonUnix); ok {
		if p, ok := r.run("small", cRecvlogicalUnix); ok && p.Seconds > 0 {
			ts = append(ts, Target{Name: "small, Unix: daemon / pg_recvlogical", Limit: 1.0, Got: d.Seconds / p.Seconds, Unit: "×"})
		}
	}
	if d, ok := r.run("large", cDaemon); ok {
		ts = append(ts, Target{Name: "large transaction: daemon peak RSS (VmHWM)", Limit: 32, Got: float64(d.PeakRSSKB) / 1024, Unit: "MB"})
	}
	for _, cond := range []string{"idle", "load", "idle (unix)", "load (unix)"} {
		d, ok1 := r.delay(cond, cDaemon)
		b, ok2 := r.delay(cond, cBaseline)
		if ok1 && ok2 && b.P50 > 0 && b.P99 > 0 {
			ts = append(ts, Target{Name: "stale window " + cond + ": daemon p50 / baseline p50", Limit: 1.0, Got: d.P50 / b.P50, Unit: "×"},
				Target{Name: "stale window " + cond + ": daemon p99 / baseline p99", Limit: 1.0, Got: d.P99 / b.P99, Unit: "×"})
		}
	}
	for _, t := range r.Throughput {
		if t.TargetTPS != 0 {
			continue
		}
		ts = append(ts, Target{Name: "throughput, unthrottled: stale window p99", Limit: 50, Got: t.Stale.P99, Unit: " ms"})
		// Bounded: the last quarter's mean lag no more than 1.5× the
		// first's, or than 1 MB when the first is smaller.
		ts = append(ts, Target{Name: "throughput, unthrottled: lag last ¼ / max(first ¼, 1 MB)", Limit: 1.5,
			Got: t.LagBytesLast / max(t.LagBytesFirst, 1e6), Unit: "×"})
	}
	ts = append(ts, bulkTargets(r.Bulk)...)
	for i := range ts {
		ts[i].Met = ts[i].Got <= ts[i].Limit
	}
	return ts
}

// bulkTargets are the bulk scenario's targets, at 1,000,000 rows: the
// stale window after the COMMIT, the daemon's memory, nothing spilled by
// the walsender (without streaming, it spills the transaction), and the
// apply within 1.5x of Redis's own delete.
func bulkTargets(bs []Bulk) []Target {
	var ts []Target
	var floor float64
	for _, b := range bs {
		if b.Rows == 1_000_000 && b.Template == "" {
			floor = b.Median.StaleSeconds
		}
	}
	for _, b := range bs {
		if b.Rows != 1_000_000 || !b.Streaming || b.Template != bulkTemplates[0] {
			continue
		}
		m := b.Median
		ts = append(ts,
			Target{Name: "bulk 1M rows: COMMIT → last key gone", Limit: 2.0, Got: m.StaleSeconds, Unit: " s"},
			Target{Name: "bulk 1M rows: daemon peak RSS (VmHWM)", Limit: 64, Got: float64(m.PeakRSSKB) / 1024, Unit: "MB"},
			Target{Name: "bulk 1M rows: slot spill_bytes", Limit: 0, Got: float64(m.SpillBytes) / 1e6, Unit: " MB"})
		if floor > 0 && m.ApplySeconds > 0 {
			// The daemon's own account of its apply, from the stream commit
			// to Redis having applied every key: the stale window adds the
			// walsender's last blocks, which no client can shorten.
			ts = append(ts, Target{Name: "bulk 1M rows: applying the commit / Redis's own delete", Limit: 1.5, Got: m.ApplySeconds / floor, Unit: "×"})
		}
	}
	return ts
}

func printMachine(w io.Writer, m Machine) {
	fmt.Fprintf(w, "machine: %d CPUs, %s, %d MB, Linux %s\n", m.Nproc, m.CPU, m.MemoryMB, m.Kernel)
	fmt.Fprintf(w, "         %s\n         Redis %s, %s\n\n", m.Postgres, m.Redis, m.Go)
}

func printResults(w io.Writer, r *Results) {
	fmt.Fprintf(w, "\nbench run %s, %.0f s in all\n\n", r.Date, r.TotalSeconds)
	if len(r.CatchUp) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "scenario\tcontender\tseconds\tratio to decode\tclient CPU s\tserver CPU s\tRedis CPU s\tpeak RSS MB\tsegments\tevery run: s / walsender CPU s / segments / load\t")
		for _, sc := range r.CatchUp {
			for _, x := range sc.Runs {
				var all []string
				for i, s := range x.AllSeconds {
					all = append(all, fmt.Sprintf("%.2f/%.2f/%d/%.1f", s, x.AllServerCPU[i], x.AllSegments[i], x.AllLoadAvg[i]))
				}
				fmt.Fprintf(tw, "%s\t%s\t%.2f\t%.2f×\t%s\t%.2f\t%s\t%s\t%s\t%s\t\n", sc.Scenario, x.Contender, x.Seconds, x.Ratio,
					blankZero(x.ClientCPU, "%.2f"), x.ServerCPU, blankZero(x.RedisCPU, "%.2f"), blankZero(float64(x.PeakRSSKB)/1024, "%.1f"),
					blankZero(float64(x.Segments), "%.0f"), strings.Join(all, " "))
			}
		}
		tw.Flush()
		for _, sc := range r.CatchUp {
			fmt.Fprintf(w, "  %s: %s; %d transactions, %d row changes, %.0f MB of WAL, written in %.1f s\n",
				sc.Scenario, sc.Backlog, sc.Transactions, sc.Rows, float64(sc.WALBytes)/1e6, sc.BuildSeconds)
		}
		fmt.Fprintln(w)
	}
	if len(r.Stale) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "stale window\tcontender\tp50 ms\tp90 ms\tp99 ms\tmax ms\ttimeouts\t")
		for _, st := range r.Stale {
			cond := st.Condition
			if st.LoadTPS > 0 {
				cond = fmt.Sprintf("%s (%.0f tx/s)", cond, st.LoadTPS)
			}
			for _, d := range st.Stats {
				fmt.Fprintf(tw, "%s\t%s\t%.3f\t%.3f\t%.3f\t%.3f\t%d\t\n", cond, d.Contender, d.P50, d.P90, d.P99, d.Max, d.Timeouts)
			}
		}
		tw.Flush()
		fmt.Fprintln(w)
	}
	if len(r.Throughput) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "throughput\tachieved tx/s\tlag MB p50\tmax\tfirst¼\tlast¼\tlag s p50\tmax\tdrain s\tdaemon cores\twalsender cores\tstale p50 ms\tp99 ms\tpg_recvlogical tx/s\tsent lag MB p50\tmax\tload\t")
		for _, t := range r.Throughput {
			rate := "unthrottled"
			if t.TargetTPS > 0 {
				rate = fmt.Sprintf("%d tx/s", t.TargetTPS)
			}
			fmt.Fprintf(tw, "%s\t%.0f\t%.2f\t%.2f\t%.2f\t%.2f\t%.3f\t%.3f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.0f\t%.2f\t%.2f\t%.1f\t\n", rate, t.AchievedTPS,
				t.LagBytesP50/1e6, t.LagBytesMax/1e6, t.LagBytesFirst/1e6, t.LagBytesLast/1e6, t.LagSecondsP50, t.LagSecondsMax, t.DrainSeconds,
				t.DaemonCPU, t.WalsenderCPU, t.Stale.P50, t.Stale.P99, t.RecvlogicalTPS, t.RecvlogicalSentLagP50/1e6, t.RecvlogicalSentLagMax/1e6, t.LoadAvg)
		}
		tw.Flush()
		fmt.Fprintln(w)
	}
	for _, sp := range r.Split {
		fmt.Fprintf(w, "split: %d transactions, %.0f MB of WAL\n", sp.Transactions, float64(sp.WALBytes)/1e6)
		for _, run := range sp.Runs {
			fmt.Fprintf(w, "  %-30s %6.2f s (load %.1f)", run.Layout, run.Seconds, run.LoadAvg)
			for _, sl := range run.Slots {
				fmt.Fprintf(w, "  [%s: %.2f s, walsender %.2f s CPU, daemon %.2f s CPU]", sl.Tables, sl.Seconds, sl.WalsenderCPU, sl.DaemonCPU)
			}
			fmt.Fprintln(w)
		}
		fmt.Fprintln(w)
	}
	printBulk(w, r.Bulk)
	if len(r.Targets) > 0 {
		fmt.Fprintln(w, "targets (reported, not asserted):")
		for _, t := range r.Targets {
			verdict := "met"
			if !t.Met {
				verdict = "MISSED"
			}
			fmt.Fprintf(w, "  %-52s %7.2f%s  (target ≤ %g%s)  %s\n", t.Name, t.Got, t.Unit, t.Limit, t.Unit, verdict)
		}
		fmt.Fprintln(w)
	}
}

func blankZero(v float64, format string) string {
	if v == 0 {
		return ""
	}
	return fmt.Sprintf(format, v)
}
