package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// report prints what the run did and found, and saves it beside the logs.
// ack and ready may be nil when the run failed before they started.
func (c *chaos) report(w io.Writer, res *chaosResult, ack *ackChecker, ready *readySampler) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "\nchaos run %s: seed %d, faults for %s, %s in all; load average %s\n", res.start.UTC().Format(time.RFC3339),
		res.seed, c.o.duration, res.duration.Round(time.Second), loadAvgText())
	if c.machine.CPU != "" {
		printMachine(&b, c.machine)
	}
	c.faults.mu.Lock()
	fmt.Fprintf(&b, "faults injected: %d (%s)\n", len(c.faults.order), countsText(c.faults.injected))
	if len(c.faults.skipped) > 0 {
		fmt.Fprintf(&b, "faults skipped (the state did not allow them; see chaos.log): %s\n", countsText(c.faults.skipped))
	}
	c.faults.mu.Unlock()
	l := &c.load
	fmt.Fprintf(&b, "transactions: %d committed by %d writers (%d of them after a failed COMMIT, by pg_xact_status), %d rolled back, %d errors; plants skipped on a target under a fault: %d, taken back as late: %d\n",
		l.committed.Load(), c.o.writers, l.commitsResolved.Load(), l.rolledBack.Load(), l.writeErrors.Load(), l.plantsSkipped.Load(), l.plantsLate.Load())
	fmt.Fprintf(&b, "reads: %d by %d readers: %d hits, %d misses filled, %d of rows gone, %d SETs dropped past the %s budget, %d slow SETs, %d errors\n",
		l.reads.Load(), c.o.readers, l.hits.Load(), l.sets.Load(), l.absent.Load(), l.dropped.Load(), chaosSetBudget, l.slowSets.Load(), l.readErrors.Load())
	for _, u := range c.units {
		u.mu.Lock()
		fmt.Fprintf(&b, "daemon %s: started %d times\n", u.name, u.starts)
		u.mu.Unlock()
	}
	var lost []string
	if ack != nil {
		n, p50, p99, longest := ack.windowStats(false)
		sn, _, _, slongest := ack.windowStats(true)
		ack.mu.Lock()
		fmt.Fprintf(&b, "stale windows (COMMIT to the first check that saw every key applied, checked every %s): %d transactions, median %s, p99 %s, longest %s (xid %d, committed %s, %s)\n",
			ackInterval, n, p50.Round(time.Millisecond), p99.Round(time.Millisecond), longest.Round(time.Millisecond), ack.longest.xid,
			ack.longest.at.UTC().Format("15:04:05.000"), c.faults.before(ack.longest.at))
		if sn > 0 {
			fmt.Fprintf(&b, "  and %d transactions of chaos_items committed between a swap and its flush (not streamed; the catalog watch's flush covers them, up to its %s poll later): longest %s\n",
				sn, chaosCatalogPoll, slongest.Round(time.Millisecond))
		}
		fmt.Fprintf(&b, "acknowledgement check: %d rounds, %d cut short by a server down, %d version keys unverifiable (their target lost its data); lost: %d\n",
			ack.rounds, ack.errors, ack.unverified, len(ack.lost))
		lost = ack.lost
		ack.mu.Unlock()
	}
	if ready != nil {
		fmt.Fprintf(&b, "daemons' own counts (summed over their processes): %s\n", ready.counts())
		ready.mu.Lock()
		fmt.Fprintf(&b, "/readyz: no daemon ready for %s in all (longest stretch %s) over %d samples; 200 while nothing was applied past the %s window (+%s): %d\n",
			ready.notReady.Round(100*time.Millisecond), ready.longestOff.Round(100*time.Millisecond), ready.samples, chaosReadyWindow, readySlack, len(ready.violations))
		ready.mu.Unlock()
	}
	fmt.Fprintf(&b, "final check: %d cached entries checked in %d targets, %d stale\n", res.final.checked, len(c.targets), len(res.final.stale))
	section(&b, "stale entries", res.final.stale)
	section(&b, "transactions acknowledged before Redis applied them", lost)
	section(&b, "/readyz 200 while nothing was applied", res.violations)
	c.anomMu.Lock()
	section(&b, "anomalies", c.anomalies)
	c.anomMu.Unlock()
	if res.harnessErr != nil {
		fmt.Fprintf(&b, "\nchaos: the harness failed: %v\n", res.harnessErr)
	}
	if c.out != "" {
		fmt.Fprintf(&b, "logs: %s\n", c.out)
		os.WriteFile(filepath.Join(c.out, "report.txt"), b.Bytes(), 0o644)
	}
	w.Write(b.Bytes())
}

// section prints up to 20 lines under a title, if there are any.
func section(w io.Writer, title string, lines []string) {
	if len(lines) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%s (%d):\n", title, len(lines))
	for i, l := range lines {
		if i == 20 {
			fmt.Fprintf(w, "  ... and %d more (chaos.log)\n", len(lines)-20)
			break
		}
		fmt.Fprintf(w, "  %s\n", l)
	}
}

// countsText prints counts by name, in name order: "a 2, b 1".
func countsText(m map[string]int) string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s %d", n, m[n])
	}
	return strings.Join(parts, ", ")
}
