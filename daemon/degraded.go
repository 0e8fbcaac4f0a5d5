package daemon

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// redisDegradedDesc is 1 for each Redis master running with fewer replicas
// than wait_replicas asks for (see invalidator.Invalidator.Degraded).
var redisDegradedDesc = prometheus.NewDesc("pg_invalidator_redis_degraded",
	"1 for each Redis master with fewer replicas online than wait_replicas, by target and master address: WAIT there asks only for the replicas it has, so invalidation goes on with less redundancy; absent otherwise.",
	[]string{"target", "addr"}, nil)

// collectDegraded sends pg_invalidator_redis_degraded for every degraded
// master of every target.
func collectDegraded(ch chan<- prometheus.Metric, targets fanout) {
	for _, t := range targets {
		for _, d := range t.inv.Degraded() {
			ch <- prometheus.MustNewConstMetric(redisDegradedDesc, prometheus.GaugeValue, 1, t.name, d.Addr)
		}
	}
}

// degradedNotes returns a line for /readyz per degraded master: the daemon
// is ready, since invalidation goes on, but with less redundancy than
// wait_replicas asks for.
func degradedNotes(targets fanout) []string {
	var notes []string
	for _, t := range targets {
		who := "redis"
		if len(targets) > 1 || t.name != DefaultTarget {
			who = "redis target " + t.name
		}
		for _, d := range t.inv.Degraded() {
			notes = append(notes, fmt.Sprintf("degraded: %s master %s has %d replicas online, fewer than wait_replicas; WAIT asks for those it has",
				who, d.Addr, d.Replicas))
		}
	}
	return notes
}
