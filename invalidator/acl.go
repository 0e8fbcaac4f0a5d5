package invalidator

import (
	"fmt"
	"slices"
	"strings"
)

// ACLNeeds is what the rules make an Invalidator send, for ACLRules.
type ACLNeeds struct {
	// KeyPatterns are Redis globs of every key the rules render, such as
	// "product:*" (a template's Pattern); each becomes a ~pattern.
	KeyPatterns []string
	// Del, Incr and Version: row changes delete keys (UNLINK), increment
	// them (INCR, INCRBY), or set them to an LSN with the setVersion script
	// (EVALSHA, EVAL, running GET and SET).
	Del, Incr, Version bool
	// DelPattern, IncrPattern and VersionPattern: a TRUNCATE or a resync
	// scans for keys (SCAN) and deletes them, increments them with the
	// incrIfExists script (running EXISTS and INCR), or sets them with
	// setVersion.
	DelPattern, IncrPattern, VersionPattern bool
	// EvictionCheck: with Incr, the daemon reads maxmemory-policy (CONFIG
	// GET) to warn when Redis may evict the keys it increments. CONFIG GET
	// can read every setting, requirepass included; without it the
	// warning says the policy could not be read.
	EvictionCheck bool
	// CanaryPattern, when not empty, is the glob of the end-to-end canary's
	// key, which the daemon sets and deletes (SET, UNLINK): the key itself,
	// when it holds no glob character.
	CanaryPattern string
	// MarkerPattern, when not empty, is the glob of the daemon's markers
	// (SetMarker, MarkerExists, Marker), which it sets, looks for and reads
	// (SET, EXISTS, and GET through a selector of its own).
	MarkerPattern string
}

// ACL rules the Invalidator needs whatever the rules say.
var (
	// aclAlways: PING (Ping), INFO (INFO server with each SCAN page, INFO
	// replication for WAIT). The connection handshake (HELLO, AUTH) needs
	// no permission.
	aclAlways = []string{"+ping", "+info"}
	// aclCluster: the slot map (CLUSTER SLOTS, which go-redis reads), the
	// masters' own slots (CLUSTER NODES, before a pattern scan), and ASKING
	// before a command sent to a slot being imported.
	aclCluster = []string{"+cluster|slots", "+cluster|nodes", "+asking"}
	// aclSentinel: what go-redis asks the sentinels, as the sentinels' own
	// user: the master's address, the other sentinels, and the failover
	// announcements it subscribes to.
	aclSentinel = []string{"+ping", "+sentinel|get-master-addr-by-name", "+sentinel|sentinels", "+subscribe"}
	// aclSentinelChannels are the channels of those announcements.
	aclSentinelChannels = []string{"&+switch-master", "&+replica-reconf-done"}
)

// ACLRules returns the rules, in the syntax of ACL SETUSER and ACL files,
// of a Redis user that may do what needs says through an Invalidator
// configured by opts, and nothing else: "resetkeys ~product:* ... resetchannels
// -@all +ping ...". It does not turn the user on nor set a password. In mode
// sentinel they are the rules of the master's and replicas' user; see
// SentinelACLRules for the sentinels'.
func ACLRules(opts Options, needs ACLNeeds) (string, error) {
	rules := []string{"resetkeys"}
	var patterns []string
	for _, p := range append(slices.Clip(needs.KeyPatterns), needs.CanaryPattern, needs.MarkerPattern) {
		if p != "" && !slices.Contains(patterns, p) {
			patterns = append(patterns, p)
		}
	}
	for _, p := range patterns {
		if strings.ContainsAny(p, " \t\r\n") {
			return "", fmt.Errorf("key pattern %q holds a space, which an ACL rule cannot", p)
		}
		rules = append(rules, "~"+p)
	}
	rules = append(rules, "resetchannels", "-@all")
	rules = append(rules, aclAlways...)
	if needs.Del || needs.DelPattern || needs.CanaryPattern != "" {
		rules = append(rules, "+unlink")
	}
	if needs.Incr || needs.IncrPattern {
		rules = append(rules, "+incr")
	}
	if needs.Incr {
		rules = append(rules, "+incrby")
	}
	if needs.DelPattern || needs.IncrPattern || needs.VersionPattern {
		rules = append(rules, "+scan")
	}
	// The scripts: EVALSHA, EVAL after NOSCRIPT, and the commands they
	// call, which Redis checks against the user too.
	if needs.IncrPattern || needs.Version || needs.VersionPattern {
		rules = append(rules, "+evalsha", "+eval")
	}
	if needs.IncrPattern || needs.MarkerPattern != "" {
		rules = append(rules, "+exists")
	}
	if needs.Version || needs.VersionPattern {
		rules = append(rules, "+get")
	}
	if needs.Version || needs.VersionPattern || needs.CanaryPattern != "" || needs.MarkerPattern != "" {
		rules = append(rules, "+set")
	}
	if needs.Incr && needs.EvictionCheck {
		rules = append(rules, "+config|get")
	}
	if opts.WaitReplicas > 0 {
		rules = append(rules, "+wait")
	}
	switch opts.Mode {
	case "", ModeSingle:
		if opts.URL != "" {
			o, err := parseURL(opts.URL)
			if err != nil {
				return "", err
			}
			if o.DB != 0 {
				rules = append(rules, "+select")
			}
		}
	case ModeCluster:
		rules = append(rules, aclCluster...)
	}
	// Reading the markers (GET) must not let the user read the cached
	// values too, unless version rules need it anyway: a selector gives it
	// on the markers alone (Redis 7.0 and later).
	if needs.MarkerPattern != "" && !needs.Version && !needs.VersionPattern {
		rules = append(rules, "(~"+needs.MarkerPattern+" +get)")
	}
	return strings.Join(rules, " "), nil
}

// SentinelACLRules returns the rules of the sentinels' own user, in mode
// sentinel: the commands go-redis sends them and the channels it
// subscribes to.
func SentinelACLRules() string {
	rules := []string{"resetkeys", "resetchannels"}
	rules = append(rules, aclSentinelChannels...)
	rules = append(rules, "-@all")
	rules = append(rules, aclSentinel...)
	return strings.Join(rules, " ")
}
