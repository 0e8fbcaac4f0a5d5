package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Results is everything one run measured; it is what the JSON holds.
type Results struct {
	Date         string    `json:"date"`
	TotalSeconds float64   `json:"total_seconds"`
	Machine      Machine   `json:"machine"`
	Params       Params    `json:"params"`
	CatchUp      []CatchUp `json:"catch_up"`
	Stale        []Stale   `json:"stale_window"`
	Targets      []Target  `json:"targets"`
}

// Params are the sizes and settings of the run.
type Params struct {
	SmallTxs         int      `json:"small_txs"`
	LargeRows        int      `json:"large_rows"`
	Samples          int      `json:"samples"`
	LoadTPS          int      `json:"load_tps"`
	PgbenchClients   int      `json:"pgbench_clients"`
	Runs             int      `json:"runs_per_contender"`
	PostgresSettings []string `json:"postgres_settings"`
	Templates        []string `json:"templates"`
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
		ts = append(ts, Target{Name: "small transactions: daemon / decode", Limit: 2.0, Got: d.Ratio, Unit: "×"})
	}
	if d, ok := r.run("large", cDaemon); ok {
		ts = append(ts, Target{Name: "large transaction: daemon peak RSS (VmHWM)", Limit: 32, Got: float64(d.PeakRSSKB) / 1024, Unit: "MB"})
	}
	for _, cond := range []string{"idle", "load"} {
		d, ok1 := r.delay(cond, cDaemon)
		b, ok2 := r.delay(cond, cBaseline)
		if ok1 && ok2 && b.P99 > 0 {
			ts = append(ts, Target{Name: "stale window " + cond + ": daemon p99 / baseline p99", Limit: 1.5, Got: d.P99 / b.P99, Unit: "×"})
		}
	}
	for i := range ts {
		ts[i].Met = ts[i].Got <= ts[i].Limit
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
		fmt.Fprintln(tw, "scenario\tcontender\tseconds\tratio to decode\tclient CPU s\tserver CPU s\tRedis CPU s\tpeak RSS MB\tevery run s\t")
		for _, sc := range r.CatchUp {
			for _, x := range sc.Runs {
				var all []string
				for _, s := range x.AllSeconds {
					all = append(all, fmt.Sprintf("%.2f", s))
				}
				fmt.Fprintf(tw, "%s\t%s\t%.2f\t%.2f×\t%s\t%.2f\t%s\t%s\t%s\t\n", sc.Scenario, x.Contender, x.Seconds, x.Ratio,
					blankZero(x.ClientCPU, "%.2f"), x.ServerCPU, blankZero(x.RedisCPU, "%.2f"), blankZero(float64(x.PeakRSSKB)/1024, "%.1f"),
					strings.Join(all, " "))
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
