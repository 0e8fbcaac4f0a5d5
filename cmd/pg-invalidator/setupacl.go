package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/pg-invalidator/pg-invalidator/config"
	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
	"github.com/pg-invalidator/pg-invalidator/mapping"
)

// defaultACLUser is the Redis user setup names when the rules file gives no
// username.
const defaultACLUser = "pg-invalidator"

// redisACL is the ACL a target's Redis needs for the rules: one user on
// the data nodes, and in mode sentinel one on the sentinels.
type redisACL struct {
	target   daemon.Target
	user     string // the data nodes' user: the target's username, or defaultACLUser
	rules    string // its ACL rules
	sentinel string // the sentinels' user; empty outside mode sentinel
}

// redisACLs works out the ACL of every target of f for f's rules. The
// default target's URL comes from REDIS_URL when the file gives none, as
// for run, so that a database other than 0 gets +select.
func redisACLs(f *config.File) ([]redisACL, error) {
	needs := aclNeeds(f.Rules)
	needs.CanaryPattern = canaryPattern(f.Postgres)
	var acls []redisACL
	for _, t := range f.Targets {
		opts := t.Redis
		if def := f.Default(); def != nil && t.Name == def.Name && opts.URL == "" &&
			(opts.Mode == "" || opts.Mode == invalidator.ModeSingle) {
			opts.URL = os.Getenv("REDIS_URL")
		}
		rules, err := invalidator.ACLRules(opts, needs)
		if err != nil {
			return nil, fmt.Errorf("redis target %s: %w", t.Name, err)
		}
		a := redisACL{target: t, user: firstOf(opts.Username, defaultACLUser), rules: rules}
		if opts.Mode == invalidator.ModeSentinel {
			a.sentinel = firstOf(opts.SentinelUsername, defaultACLUser)
		}
		acls = append(acls, a)
	}
	return acls, nil
}

// canaryPattern is the ACL key pattern of the end-to-end canary's key that
// the [postgres] table configures: the key itself, for the slot, which
// holds no glob character (config checks canary_key); "" when the canary
// is off.
func canaryPattern(pg config.Postgres) string {
	if pg.CanaryKey == "" {
		return ""
	}
	return daemon.CanaryKey(pg.CanaryKey, pg.Slot)
}

// aclNeeds says what the rules make the daemon send: the keys every
// template can render, and which actions, TRUNCATE and resync included.
// The canary's key is not among them: see canaryPattern.
func aclNeeds(rules *mapping.Rules) invalidator.ACLNeeds {
	needs := invalidator.ACLNeeds{MarkerPattern: daemon.SlotMarkerPrefix + "*", EvictionCheck: true}
	for _, r := range rules.List {
		for _, t := range r.Del {
			needs.Del = true
			needs.DelPattern = needs.DelPattern || len(t.Columns()) > 0
			needs.KeyPatterns = append(needs.KeyPatterns, t.Pattern())
		}
		for _, t := range r.Incr {
			needs.Incr = true
			needs.IncrPattern = needs.IncrPattern || len(t.Columns()) > 0
			needs.KeyPatterns = append(needs.KeyPatterns, t.Pattern())
		}
		for _, t := range r.Version {
			needs.Version = true
			needs.VersionPattern = needs.VersionPattern || len(t.Columns()) > 0
			needs.KeyPatterns = append(needs.KeyPatterns, t.Pattern())
		}
	}
	return needs
}

// printRedisACLs prints the ACL SETUSER commands of acls, each line behind
// prefix ("-- " among SQL, "" alone), with what to do with them.
func printRedisACLs(w io.Writer, acls []redisACL, prefix string) {
	note := "-- "
	if prefix == "" {
		note = "# "
	}
	for i, a := range acls {
		if i > 0 || prefix != "" {
			fmt.Fprintln(w)
		}
		where := "on the Redis server and its replicas"
		switch a.target.Redis.Mode {
		case invalidator.ModeCluster:
			where = "on every node of the cluster, replicas included"
		case invalidator.ModeSentinel:
			where = "on the master and every replica (each may become the master)"
		}
		name := ""
		if len(acls) > 1 || a.target.Name != daemon.DefaultTarget {
			name = " target " + a.target.Name
		}
		fmt.Fprintf(w, "%sRedis%s: the user the daemon logs in as, with only what the rules need. Replace PASSWORD with the\n", note, name)
		fmt.Fprintf(w, "%spassword of password_env or password_file, and run this %s,\n", note, where)
		fmt.Fprintf(w, "%sor write it in the ACL file as \"user NAME\" and the same rules.\n", note)
		if a.target.Redis.Username == "" {
			fmt.Fprintf(w, "%sThe rules file names no user: add username = %q to the target's table.\n", note, a.user)
		}
		if strings.Contains(a.rules, "+config|get") {
			fmt.Fprintf(w, "%s+config|get lets the daemon warn when maxmemory-policy may evict the keys it increments; it also reads\n", note)
			fmt.Fprintf(w, "%severy other setting, requirepass included. Without it, the warning says the policy could not be read.\n", note)
		}
		fmt.Fprintf(w, "%sACL SETUSER %s reset on >PASSWORD %s\n", prefix, a.user, a.rules)
		if a.sentinel != "" {
			fmt.Fprintf(w, "%sIf the sentinels require a user (sentinel_username), this one on every sentinel, with the password of\n", note)
			fmt.Fprintf(w, "%ssentinel_password_env or sentinel_password_file:\n", note)
			fmt.Fprintf(w, "%sACL SETUSER %s reset on >PASSWORD %s\n", prefix, a.sentinel, invalidator.SentinelACLRules())
		}
	}
}
