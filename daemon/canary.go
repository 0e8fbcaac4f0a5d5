package daemon

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultCanaryKey is the canary's key when the configuration names none;
// <slot> stands for the replication slot's name, so that daemons on
// different slots never share one, and the two daemons of a standby pair
// do.
const DefaultCanaryKey = "pg-invalidator:canary:<slot>"

// CanaryKey returns the canary's Redis key that template describes for
// slot: template with every "<slot>" replaced by slot; DefaultCanaryKey
// when template is empty.
func CanaryKey(template, slot string) string {
	if template == "" {
		template = DefaultCanaryKey
	}
	return strings.ReplaceAll(template, "<slot>", slot)
}

// canary proves the whole path, PostgreSQL -> stream -> Redis, on every
// heartbeat. The heartbeat sets its key in every target and writes a
// canary message through the WAL (replication.EmitCanary); when the message
// comes back through the stream, the pipeline deletes the key in the batch
// of its transaction, like a row change's key, and reports the canary here
// once the batch is applied on every target, before the transaction is
// acknowledged. The round trip of each target is from the SET to the moment
// that target had applied the batch.
//
// A canary counts only while a session streams with messages (PostgreSQL
// 14 and later): a standby, which never streams, sends plain heartbeats,
// sets no key and has nothing in flight.
type canary struct {
	key      string        // the Redis key, in every target
	instance string        // tells this process's canaries from those of another daemon on the slot
	kick     chan struct{} // asks the heartbeat for a canary now (a session started streaming)

	mu      sync.Mutex               // protects the fields below
	enabled bool                     // a session streams and passes messages; false: heartbeats carry no canary
	seq     uint64                   // the last token's number
	sent    map[string]time.Time     // this process's canaries in flight, by token: when each one's SET began
	rtt     map[string]time.Duration // the last round trip, by target; none before the first
	// unproven is, between two sessions, since when the path has not been
	// proven: when the oldest canary still out when the last session ended
	// was sent, or when it ended if none was. The next session counts it as
	// a canary out until one of its own comes back, which happens once
	// everything committed before, the backlog of the outage, is applied.
	// Zero: no session ended yet.
	unproven time.Time
}

// backlogToken stands, among the canaries in flight, for the outage before a
// session: no message carries it, so only a later canary coming back ends
// it.
const backlogToken = ""

func newCanary(key string) *canary {
	return &canary{key: key, instance: strconv.FormatUint(rand.Uint64(), 36), kick: make(chan struct{}, 1),
		sent: make(map[string]time.Time), rtt: make(map[string]time.Duration)}
}

// start notes that a session streams, with messages or not. The canaries
// sent before are forgotten, since one may never come back (a standby's,
// which another daemon received); but the time since the path was last
// proven is not: it stays out as one canary until the first of this
// session, asked for at once, comes back. Before, a session that started
// after an outage was ready at once, with the outage's backlog not applied
// (TestReadyzAfterAReconnect).
func (c *canary) start(messages bool) {
	c.mu.Lock()
	c.enabled = messages
	clear(c.sent)
	if messages && !c.unproven.IsZero() {
		c.sent[backlogToken] = c.unproven
	}
	c.unproven = time.Time{}
	c.mu.Unlock()
	if messages {
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
}

// stop notes that the session stopped streaming, at now, and since when
// the path has not been proven.
func (c *canary) stop(now time.Time) {
	c.mu.Lock()
	if c.enabled {
		c.unproven = now
		for _, at := range c.sent {
			if at.Before(c.unproven) {
				c.unproven = at
			}
		}
	}
	c.enabled = false
	clear(c.sent)
	c.mu.Unlock()
}

// next returns a new canary's token and notes it in flight since now;
// false when canaries are off (no session streams with messages).
func (c *canary) next(now time.Time) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.enabled {
		return "", false
	}
	c.seq++
	token := c.instance + "." + strconv.FormatUint(c.seq, 10)
	c.sent[token] = now
	return token, true
}

// forget drops a canary that never left: its message could not be written.
func (c *canary) forget(token string) {
	c.mu.Lock()
	delete(c.sent, token)
	c.mu.Unlock()
}

// back notes that the canaries of tokens came back and their keys were
// deleted on every target, each target at its time in applied. Messages
// come back in the order they were written, so this process's canaries
// sent before the last of them are not in flight any more either. Tokens
// of another process are ignored.
func (c *canary) back(tokens []string, applied []targetTime) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, token := range tokens {
		at, ok := c.sent[token]
		if !ok || token == backlogToken {
			continue
		}
		for _, t := range applied {
			c.rtt[t.name] = max(t.at.Sub(at), time.Nanosecond)
		}
		for t, sent := range c.sent {
			if !sent.After(at) {
				delete(c.sent, t)
			}
		}
	}
}

// state returns the last round trip of each target (none before the first)
// and how long the oldest canary in flight has been (0: none).
func (c *canary) state(now time.Time) (rtt map[string]time.Duration, pending time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, at := range c.sent {
		pending = max(pending, now.Sub(at))
	}
	return maps.Clone(c.rtt), pending
}

// notReady is the canary's reason for /readyz: a canary has been in flight
// for longer than within.
func (c *canary) notReady(now time.Time, within time.Duration) []string {
	if _, pending := c.state(now); pending > within {
		return []string{fmt.Sprintf("canary has not come back for %s", pending.Round(100*time.Millisecond))}
	}
	return nil
}

var (
	canarySecondsDesc = prometheus.NewDesc("pg_invalidator_canary_seconds",
		"The last canary's round trip, by target: from setting its key in every Redis target, through a message written to the WAL, the replication stream and the pipeline, to the target having applied the batch that deletes its key; absent before the first.",
		[]string{"target"}, nil)
	canaryPendingDesc = prometheus.NewDesc("pg_invalidator_canary_pending_seconds",
		"How long the oldest canary in flight has been; 0 when none is. Absent when the canary is off.",
		nil, nil)
)

// collectCanary sends the canary's metrics; nothing when c is nil (off).
func collectCanary(ch chan<- prometheus.Metric, c *canary, now time.Time) {
	if c == nil {
		return
	}
	rtt, pending := c.state(now)
	for target, d := range rtt {
		ch <- prometheus.MustNewConstMetric(canarySecondsDesc, prometheus.GaugeValue, d.Seconds(), target)
	}
	ch <- prometheus.MustNewConstMetric(canaryPendingDesc, prometheus.GaugeValue, pending.Seconds())
}
