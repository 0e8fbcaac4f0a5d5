package localsvc

import (
	"context"
	"testing"
	"time"
)

// TestSentinelAddReplica kills the master for good, waits for the sentinels
// to promote the replica, and gives the new master a replica of its own on a
// new node: it must be in sync with the new master, hold what was written
// there, and be listed by every sentinel.
func TestSentinelAddReplica(t *testing.T) {
	ctx := context.Background()
	s, err := StartRedisSentinel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	first := s.Master.Addr()
	s.Master.Kill()
	deadline := time.Now().Add(60 * time.Second)
	var master string
	for master == "" || master == first {
		if time.Now().After(deadline) {
			t.Fatalf("no failover within 60s: the sentinels name %q", master)
		}
		master, _ = s.MasterAddr(ctx)
		time.Sleep(100 * time.Millisecond)
	}
	if master != s.Replica.Addr() {
		t.Fatalf("the sentinels name %s the master, want the replica %s", master, s.Replica.Addr())
	}
	mc := s.dataClient(master)
	defer mc.Close()
	if err := mc.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}

	n, err := s.AddReplica(ctx, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if n.Addr() == first {
		t.Fatalf("the new replica took the killed master's address %s", first)
	}
	rc := s.dataClient(n.Addr())
	defer rc.Close()
	if got, err := rc.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET k on the new replica = %q, %v; want v", got, err)
	}
	if len(s.Added) != 1 || s.Added[0] != n {
		t.Fatalf("Added = %v, want the new replica", s.Added)
	}
}
