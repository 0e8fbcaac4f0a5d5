package invalidator

import (
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
			"resetkeys ~item:* ~count ~pg-invalidator:slot:* resetchannels -@all +ping +info +unlink +exists +get +set"},
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
