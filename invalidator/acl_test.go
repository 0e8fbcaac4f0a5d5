package invalidator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestACLRules(t *testing.T) {
	keys := []string{"item:*", "count", "item:*"}
	tests := []struct {
		name  string
		opts  Options
		needs ACLNeeds
		want  string
	}{
		{"del only, database 0", Options{URL: "redis://cache:6379/0"}, ACLNeeds{KeyPatterns: keys, Del: true},
			"resetkeys ~item:* ~count resetchannels -@all +ping +info +unlink"},
		{"incr with patterns, database 3", Options{URL: "redis://u:pw@cache:6379/3"}, ACLNeeds{KeyPatterns: keys, Incr: true, IncrPattern: true, EvictionCheck: true},
			"resetkeys ~item:* ~count resetchannels -@all +ping +info +incr +incrby +scan +evalsha +eval +exists +config|get +select"},
		{"incr pattern alone, no eviction check", Options{}, ACLNeeds{KeyPatterns: keys, IncrPattern: true, EvictionCheck: true},
			"resetkeys ~item:* ~count resetchannels -@all +ping +info +incr +scan +evalsha +eval +exists"},
		{"version and canary, cluster", Options{Mode: ModeCluster, WaitReplicas: 1}, ACLNeeds{KeyPatterns: keys, Version: true, VersionPattern: true, CanaryPattern: "pg-invalidator:canary:pg_invalidator"},
			"resetkeys ~item:* ~count ~pg-invalidator:canary:pg_invalidator resetchannels -@all +ping +info +unlink +scan +evalsha +eval +get +set +wait +cluster|slots +cluster|nodes +asking"},
		{"del and marker", Options{}, ACLNeeds{KeyPatterns: keys, Del: true, MarkerPattern: "pg-invalidator:slot:*"},
			"resetkeys ~item:* ~count ~pg-invalidator:slot:* resetchannels -@all +ping +info +unlink +exists +set (~pg-invalidator:slot:* +get)"},
		{"sentinel", Options{Mode: ModeSentinel}, ACLNeeds{KeyPatterns: keys, Del: true, DelPattern: true},
			"resetkeys ~item:* ~count resetchannels -@all +ping +info +unlink +scan"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ACLRules(tt.opts, tt.needs)
			if err != nil || got != tt.want {
				t.Errorf("ACLRules = %q, %v;\nwant %q", got, err, tt.want)
			}
		})
	}
	if _, err := ACLRules(Options{}, ACLNeeds{KeyPatterns: []string{"a b:*"}}); err == nil {
		t.Errorf("ACLRules with a space in a pattern: no error")
	}
	if _, err := ACLRules(Options{URL: "redis://u:s3cret@cache:x/0"}, ACLNeeds{}); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("ACLRules with a bad URL = %v, want an error without the password", err)
	}
}

// TestMarkerSelector runs, as a user made from ACLRules' own words (split
// on spaces, as a shell or an ACL file line would), what the daemon does
// with its markers: it sets, finds and reads them. Without version rules
// the user may read the markers, through a selector, and not the cached
// values.
func TestMarkerSelector(t *testing.T) {
	ctx := context.Background()
	srv := startRedis(t)
	_, admin := newInvalidator(t, srv.URL(), Options{})
	rules, err := ACLRules(Options{}, ACLNeeds{KeyPatterns: []string{"item:*"}, Del: true, MarkerPattern: "mark:*"})
	if err != nil {
		t.Fatal(err)
	}
	args := []any{"acl", "setuser", "marker-user", "on", ">marker-pw"}
	for _, w := range strings.Fields(rules) {
		args = append(args, w)
	}
	mustDo(t, admin, args...)
	set(t, admin, "item:1", "cached")
	inv, _ := newInvalidator(t, srv.URL(), Options{Username: "marker-user", Password: "marker-pw"})

	if err := inv.SetMarker(ctx, "mark:1", "reading"); err != nil {
		t.Fatal(err)
	}
	if ok, err := inv.MarkerExists(ctx, "mark:1"); !ok || err != nil {
		t.Errorf("MarkerExists = %v, %v; want true", ok, err)
	}
	if v, ok, err := inv.Marker(ctx, "mark:1"); v != "reading" || !ok || err != nil {
		t.Errorf("Marker = %q, %v, %v; want \"reading\", true", v, ok, err)
	}
	if _, ok, err := inv.Marker(ctx, "mark:2"); ok || err != nil {
		t.Errorf("Marker of a missing key = %v, %v; want false, no error", ok, err)
	}
	if log := admin.Do(ctx, "acl", "log").Val(); fmt.Sprint(log) != "[]" {
		t.Errorf("ACL LOG = %v, want it empty", log)
	}
	_, _, err = inv.Marker(ctx, "item:1")
	if !errors.Is(err, ErrNoPermission) || strings.Contains(err.Error(), "marker-pw") {
		t.Errorf("Marker of a cached value = %v, want ErrNoPermission: the user may not read cached values", err)
	}
}
