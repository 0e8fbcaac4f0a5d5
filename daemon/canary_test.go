package daemon

import (
	"maps"
	"slices"
	"testing"
	"time"
)

func TestCanaryKey(t *testing.T) {
	for _, tt := range []struct{ template, slot, want string }{
		{"", "pg_invalidator", "pg-invalidator:canary:pg_invalidator"},
		{DefaultCanaryKey, "shop", "pg-invalidator:canary:shop"},
		{"app:<slot>:canary:<slot>", "s1", "app:s1:canary:s1"},
		{"fixed-canary", "s1", "fixed-canary"},
	} {
		if got := CanaryKey(tt.template, tt.slot); got != tt.want {
			t.Errorf("CanaryKey(%q, %q) = %q, want %q", tt.template, tt.slot, got, tt.want)
		}
	}
}

func TestCanaryState(t *testing.T) {
	t0 := time.Unix(1000, 0)
	c := newCanary("k")
	if _, ok := c.next(t0); ok {
		t.Fatal("next before any session streams: a canary, want none (a standby sends plain heartbeats)")
	}
	c.start(false) // PostgreSQL 13: no messages
	if _, ok := c.next(t0); ok {
		t.Fatal("next while streaming without messages: a canary, want none")
	}

	c.start(true)
	select {
	case <-c.kick:
	default:
		t.Error("start with messages asked for no canary at once")
	}
	a, _ := c.next(t0)
	b, _ := c.next(t0.Add(time.Second))
	lost, _ := c.next(t0.Add(2 * time.Second))
	c.forget(lost) // its message could not be written
	if rtt, pending := c.state(t0.Add(3 * time.Second)); len(rtt) != 0 || pending != 3*time.Second {
		t.Errorf("state with two canaries out = %v, %s; want none (none back yet), 3s (the oldest)", rtt, pending)
	}
	if got, want := c.notReady(t0.Add(31*time.Second), 30*time.Second), []string{"canary has not come back for 31s"}; !slices.Equal(got, want) {
		t.Errorf("notReady = %q, want %q", got, want)
	}
	if got := c.notReady(t0.Add(30*time.Second), 30*time.Second); got != nil {
		t.Errorf("notReady at the window = %q, want none", got)
	}

	// b's return means a came back before it: messages keep their order.
	applied := func(eu, us time.Duration) []targetTime {
		return []targetTime{{"eu", t0.Add(eu)}, {"us", t0.Add(us)}}
	}
	c.back([]string{"someone-else.7", b}, applied(1500*time.Millisecond, 1700*time.Millisecond))
	want := map[string]time.Duration{"eu": 500 * time.Millisecond, "us": 700 * time.Millisecond}
	if rtt, pending := c.state(t0.Add(5 * time.Second)); !maps.Equal(rtt, want) || pending != 0 {
		t.Errorf("state after b came back = %v, %s; want %v, 0 (a is not out any more)", rtt, pending, want)
	}
	c.back([]string{a}, applied(6*time.Second, 6*time.Second)) // late, and already counted as back
	if rtt, _ := c.state(t0.Add(6 * time.Second)); !maps.Equal(rtt, want) {
		t.Errorf("rtt after a stale token = %v, want %v still", rtt, want)
	}

	// A session that ends forgets what is out: it may never come back here.
	c.next(t0.Add(7 * time.Second))
	c.stop(t0.Add(9 * time.Second))
	if _, pending := c.state(t0.Add(time.Hour)); pending != 0 {
		t.Errorf("pending after stop = %s, want 0", pending)
	}
	if _, ok := c.next(t0); ok {
		t.Error("next after stop: a canary, want none")
	}

	// The next session counts the outage as a canary out, from the oldest
	// one out when the last session ended, until one of its own is back.
	c.start(true)
	if _, pending := c.state(t0.Add(20 * time.Second)); pending != 13*time.Second {
		t.Errorf("pending in the next session = %s, want 13s: since the canary out at the last session's end", pending)
	}
	first, _ := c.next(t0.Add(20 * time.Second))
	c.back([]string{backlogToken}, applied(21*time.Second, 21*time.Second)) // no message carries it
	if _, pending := c.state(t0.Add(21 * time.Second)); pending != 14*time.Second {
		t.Errorf("pending after a message with an empty token = %s, want 14s still", pending)
	}
	c.back([]string{first}, applied(21*time.Second, 21*time.Second))
	if _, pending := c.state(t0.Add(22 * time.Second)); pending != 0 {
		t.Errorf("pending once the session's first canary came back = %s, want 0", pending)
	}

	// With none out when it ended, the outage counts from its end.
	c.stop(t0.Add(30 * time.Second))
	c.start(true)
	if _, pending := c.state(t0.Add(35 * time.Second)); pending != 5*time.Second {
		t.Errorf("pending after a session that ended with none out = %s, want 5s: since its end", pending)
	}
	c.stop(t0.Add(40 * time.Second))
	c.start(false) // no messages: no canary, and nothing out
	if _, pending := c.state(t0.Add(50 * time.Second)); pending != 0 {
		t.Errorf("pending in a session without messages = %s, want 0", pending)
	}
}
