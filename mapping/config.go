// Package mapping reads rules.toml and turns row changes into Redis commands.
//
// A rule names a table and the key templates to delete (del) or increment
// (incr) when one of its rows changes:
//
//	[[rule]]
//	table = "products"            # "schema.table"; the schema defaults to public
//	del   = ["product:<id>", "product-list:category:<category_id>"]
//	incr  = ["cache:version:products"]
//	on    = ["insert", "update", "delete", "truncate"]   # optional; default all four
//
// # Templates
//
// In a template, <column> stands for the column's PostgreSQL text output,
// byte for byte; the column name is matched exactly as PostgreSQL stores it
// (usually lowercase). Write << for a literal "<" and >> for a literal ">".
// Anything else is literal text. A column name cannot contain "<" or ">",
// nor begin or end with a space. These are errors: an empty template, an
// empty placeholder "<>", a "<" with no ">" before the next "<" or the end,
// and a ">" that closes no placeholder.
//
// # What a change becomes
//
// An insert renders every template against the new row, a delete against the
// old row, and an update against both, so that moving a product from
// category 3 to 5 invalidates both lists. A template whose column is NULL, or
// whose value the stream did not send (an unchanged TOASTed value, or an old
// value outside the replica identity), renders no key for that row; Mapper
// counts it in Stats. A truncate turns templates with placeholders into glob
// patterns (DelPattern, IncrPattern). Commands for one change are deduplicated;
// commands across changes are not.
//
// # Guarantees
//
// Parse reports every problem it finds, each as "file:line: message", and
// says how to fix it when it can. CheckSchema does the same for the rules
// against the live catalog, including replica identity settings that would
// hide old values or make the application's own UPDATE and DELETE fail.
// Nothing here does I/O except Load reading the file, and
// Config.RedisPassword and Config.TargetPassword reading the password's
// variable or file.
package mapping

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
)

// Defaults for the [postgres] keys that may be left out.
const (
	DefaultSlot        = "pg_invalidator"
	DefaultPublication = "pg_invalidator"
)

// Config is a parsed rules.toml.
type Config struct {
	File     string         // the path the config was read from, used in messages
	Postgres PostgresConfig // the [postgres] table; defaults filled in when absent
	Redis    RedisConfig    // the [redis] table; all zero when absent
	Recovery RecoveryConfig // the [recovery] table; defaults filled in when absent
	Rules    []*Rule        // in file order; never empty after Parse
	// TargetTables are the [[target]] tables, in file order; nil when the
	// file has none. See Targets.
	TargetTables []Target

	hasRedis bool // the file has a [redis] table
}

// DefaultTarget is the name of the target the [redis] table describes.
const DefaultTarget = "default"

// Target is one Redis deployment to invalidate, such as the cache of one
// region: the [redis] table, named DefaultTarget, or a [[target]] table.
// Every target applies every transaction before it is acknowledged.
type Target struct {
	Name  string      // unique among the targets
	Line  int         // line of its [[target]] or [redis] header; zero when the file has no [redis] table
	Redis RedisConfig // its keys, as [redis] takes them
}

// Targets returns every Redis target: the [redis] table as DefaultTarget,
// then the [[target]] tables in file order. [redis] is left out when it is
// absent and [[target]] tables are given; with neither, the one target is
// DefaultTarget with a zero RedisConfig, which the command line completes
// (--redis, REDIS_URL).
func (c *Config) Targets() []Target {
	var ts []Target
	if c.hasRedis || len(c.TargetTables) == 0 {
		ts = append(ts, Target{Name: DefaultTarget, Line: c.Redis.lines[""], Redis: c.Redis})
	}
	return append(ts, c.TargetTables...)
}

// PostgresConfig is the [postgres] table.
type PostgresConfig struct {
	// URL is the connection string. Empty: the file does not say; the caller
	// must get one elsewhere (a flag, the environment) or refuse to start.
	URL string
	// Slot is the replication slot name. Parse sets DefaultSlot when the
	// file leaves it out.
	Slot string
	// Publication is the publication name. Parse sets DefaultPublication
	// when the file leaves it out.
	Publication string
	// Heartbeat is how often to confirm progress on an idle stream. Zero:
	// the caller picks its default.
	Heartbeat time.Duration
}

// What [redis] mode may say.
const (
	RedisSingle   = "single"   // one server at url (the default)
	RedisCluster  = "cluster"  // Redis Cluster, seeded from addrs
	RedisSentinel = "sentinel" // the master named master, found through the sentinels at addrs
)

// RedisConfig is the [redis] table. Parse checks the types of these keys
// and how they go together: a mode it knows, addrs as host:port for
// cluster and sentinel, master for sentinel only, one password source, a
// TLS certificate with its key. It reads no file and no variable: see
// Config.RedisPassword.
type RedisConfig struct {
	URL string // connection URL; empty: the caller must get one elsewhere
	// Mode is RedisSingle, RedisCluster or RedisSentinel. Empty: the file
	// does not say, which means RedisSingle.
	Mode         string
	Addrs        []string // server addresses for sentinel or cluster; nil: use URL
	Master       string   // the sentinel master name; empty: none
	Username     string   // ACL user name; empty: the URL's, or none
	PasswordEnv  string   // environment variable holding the password; empty: none
	PasswordFile string   // file holding the password; empty: none
	TLS          bool     // connect with TLS; false: as the URL says
	TLSCA        string   // CA bundle file; empty: the system roots
	TLSCert      string   // client certificate file; empty: no client certificate
	TLSKey       string   // client key file; empty: no client certificate
	// TLSServerName overrides the name checked in the server certificate.
	// Empty: the host being dialled.
	TLSServerName string
	// WaitReplicas is how many replicas must acknowledge each batch (WAIT).
	// Zero: do not wait.
	WaitReplicas int

	lines map[string]int // line of each key the file gives, and "" of the table, for passwords
}

// What [recovery] on_slot_lost may say.
const (
	// OnSlotLostStop stops the daemon with a message saying what to do.
	OnSlotLostStop = "stop"
	// OnSlotLostResync drops the lost slot, creates a new one, flushes every
	// key the rules can render, and streams on.
	OnSlotLostResync = "resync"
)

// RecoveryConfig is the [recovery] table.
type RecoveryConfig struct {
	// OnSlotLost is what to do when the replication slot was invalidated or
	// disappeared: OnSlotLostStop or OnSlotLostResync. Parse sets
	// OnSlotLostStop when the file leaves it out.
	OnSlotLost string
}

// Rule is one [[rule]]: which table, which keys, on which operations.
type Rule struct {
	Line   int         // line of the rule's [[rule]] header
	Schema string      // never empty after Parse; "public" when the file gives none
	Table  string      // as PostgreSQL stores it
	Del    []*Template // keys to delete; empty if Incr is not
	Incr   []*Template // keys to increment; empty if Del is not
	On     Ops         // operations the rule handles; AllOps when the file says none
}

// QualifiedName returns "schema.table".
func (r *Rule) QualifiedName() string { return r.Schema + "." + r.Table }

// Ops is a set of operations, one bit per pginvalidator.Op. The zero value
// is the empty set.
type Ops uint8

// AllOps holds the four operations.
const AllOps = Ops(1<<pginvalidator.OpInsert | 1<<pginvalidator.OpUpdate |
	1<<pginvalidator.OpDelete | 1<<pginvalidator.OpTruncate)

// rowOps holds the operations that carry rows, and so need column values.
const rowOps = AllOps &^ (1 << pginvalidator.OpTruncate)

// Has reports whether op is in the set.
func (s Ops) Has(op pginvalidator.Op) bool { return op < 8 && s&(1<<op) != 0 }

// With returns the set with op added.
func (s Ops) With(op pginvalidator.Op) Ops { return s | 1<<op }

// String lists the operations the way a publication's publish option does:
// "insert, update, delete, truncate".
func (s Ops) String() string {
	var names []string
	for op := pginvalidator.OpInsert; op <= pginvalidator.OpTruncate; op++ {
		if s.Has(op) {
			names = append(names, op.String())
		}
	}
	return strings.Join(names, ", ")
}

// Tables returns the distinct rule tables as "schema.table", sorted.
func (c *Config) Tables() []string {
	var names []string
	for _, r := range c.Rules {
		names = append(names, r.QualifiedName())
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// Load reads and parses a rules file.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load rules: %w", err)
	}
	return Parse(path, data)
}

// Parse parses the rules file named file whose content is data. Its error,
// if any, is an Errors holding every problem found, each a *Problem.
func Parse(file string, data []byte) (*Config, error) {
	var doc map[string]any
	if _, err := toml.Decode(string(data), &doc); err != nil {
		var pe toml.ParseError
		if !errors.As(err, &pe) {
			return nil, Errors{&Problem{File: file, Msg: err.Error()}}
		}
		msg := "TOML syntax error: " + pe.Message
		if pe.LastKey != "" {
			msg = fmt.Sprintf("TOML syntax error after key %q: %s", pe.LastKey, pe.Message)
		}
		return nil, Errors{&Problem{File: file, Line: pe.Position.Line, Msg: msg}}
	}
	p := &parser{file: file, lines: indexLines(string(data))}
	c := &Config{
		File:     file,
		Postgres: PostgresConfig{Slot: DefaultSlot, Publication: DefaultPublication},
		Recovery: RecoveryConfig{OnSlotLost: OnSlotLostStop},
	}
	for _, k := range sortedKeys(doc) {
		path := []string{k}
		switch k {
		case "postgres":
			p.postgres(&c.Postgres, doc[k])
		case "redis":
			c.hasRedis = true
			p.redis([]string{"redis"}, &c.Redis, p.table(path, doc[k]))
		case "target":
			c.TargetTables = p.targets(doc[k], doc["redis"] != nil)
		case "recovery":
			p.recovery(&c.Recovery, doc[k])
		case "rule":
			c.Rules = p.rules(doc[k])
		default:
			p.addf(path, "unknown key %q; the top level allows only [postgres], [redis], [[target]], [recovery] and [[rule]]", k)
		}
	}
	if _, ok := doc["rule"]; !ok {
		p.addf(nil, "no [[rule]] found; add at least one, with a table and del or incr")
	}
	if len(p.errs) > 0 {
		slices.SortStableFunc(p.errs, func(a, b error) int { return a.(*Problem).Line - b.(*Problem).Line })
		return nil, p.errs
	}
	return c, nil
}

// parser walks a decoded document, collecting problems with their lines.
type parser struct {
	file  string
	lines *lineIndex
	errs  Errors
}

func (p *parser) addf(path []string, format string, args ...any) {
	p.errs = append(p.errs, &Problem{File: p.file, Line: p.lines.line(path...), Msg: fmt.Sprintf(format, args...)})
}

// Keys each table allows, in the order messages list them.
var (
	postgresKeys = []string{"url", "slot", "publication", "heartbeat"}
	redisKeys    = []string{"url", "mode", "addrs", "master", "username", "password_env", "password_file",
		"tls", "tls_ca", "tls_cert", "tls_key", "tls_server_name", "wait_replicas"}
	targetKeys   = append([]string{"name"}, redisKeys...)
	recoveryKeys = []string{"on_slot_lost"}
	ruleKeys     = []string{"table", "del", "incr", "on"}
)

func (p *parser) unknown(path []string, table string, allowed []string) {
	p.addf(path, "unknown key %q in %s; allowed keys: %s", path[len(path)-1], table, strings.Join(allowed, ", "))
}

// slotName is what PostgreSQL accepts as a replication slot name.
var slotName = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

func (p *parser) postgres(c *PostgresConfig, v any) {
	m := p.table([]string{"postgres"}, v)
	for _, k := range sortedKeys(m) {
		path := []string{"postgres", k}
		switch k {
		case "url":
			p.str(path, m[k], &c.URL)
		case "slot":
			if p.str(path, m[k], &c.Slot) && !slotName.MatchString(c.Slot) {
				p.addf(path, "slot %q is not a valid replication slot name: use 1 to 63 lowercase letters, digits and underscores", c.Slot)
			}
		case "publication":
			if p.str(path, m[k], &c.Publication) && c.Publication == "" {
				p.addf(path, "publication is empty; give a name, or remove the key to use %q", DefaultPublication)
			}
		case "heartbeat":
			var s string
			if !p.str(path, m[k], &s) {
				break
			}
			d, err := time.ParseDuration(s)
			if err != nil || d <= 0 {
				p.addf(path, "heartbeat %q is not a positive duration; write one like \"30s\" or \"1m\"", s)
				break
			}
			c.Heartbeat = d
		default:
			p.unknown(path, "[postgres]", postgresKeys)
		}
	}
}

// redis parses the keys of m, the [redis] table or a [[target]] at path,
// into c. A [[target]]'s name is left to targets.
func (p *parser) redis(path []string, c *RedisConfig, m map[string]any) {
	table, allowed := "[redis]", redisKeys
	if path[0] == "target" {
		table, allowed = "[[target]]", targetKeys
	}
	strs := map[string]*string{
		"url": &c.URL, "mode": &c.Mode, "master": &c.Master, "username": &c.Username,
		"password_env": &c.PasswordEnv, "password_file": &c.PasswordFile,
		"tls_ca": &c.TLSCA, "tls_cert": &c.TLSCert, "tls_key": &c.TLSKey, "tls_server_name": &c.TLSServerName,
	}
	for _, k := range sortedKeys(m) {
		path := append(path[:len(path):len(path)], k)
		switch {
		case k == "name" && table == "[[target]]":
		case strs[k] != nil:
			p.str(path, m[k], strs[k])
		case k == "addrs":
			c.Addrs, _ = p.strs(path, m[k])
		case k == "tls":
			if b, ok := m[k].(bool); ok {
				c.TLS = b
			} else {
				p.wrongType(path, "a boolean, true or false", m[k])
			}
		case k == "wait_replicas":
			if n, ok := m[k].(int64); ok && n >= 0 && n < 1<<31 {
				c.WaitReplicas = int(n)
			} else {
				p.wrongType(path, "a whole number, zero or more", m[k])
			}
		case k == "password":
			p.addf(path, "unknown key %q in %s; allowed keys: %s; a password does not belong in the rules file: name the variable or file that holds it with password_env or password_file",
				k, table, strings.Join(allowed, ", "))
		default:
			p.unknown(path, table, allowed)
		}
	}
	c.lines = make(map[string]int, len(m)+1)
	c.lines[""] = p.lines.line(path...)
	for k := range m {
		c.lines[k] = p.lines.line(append(path[:len(path):len(path)], k)...)
	}
	p.redisTogether(path, c, m)
}

// targetName is what a [[target]] name may be: it shows in logs, metric
// labels and messages.
var targetName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,63}$`)

// targets parses the [[target]] tables. withRedis says whether the file
// has a [redis] table, whose target is named DefaultTarget.
func (p *parser) targets(v any, withRedis bool) []Target {
	var tables []map[string]any
	switch v := v.(type) {
	case []map[string]any: // [[target]] headers
		tables = v
	case []any: // target = [{...}, {...}]
		for i, e := range v {
			m, ok := e.(map[string]any)
			if !ok {
				p.wrongType([]string{"target", strconv.Itoa(i)}, "a table", e)
			}
			tables = append(tables, m)
		}
	default:
		p.addf([]string{"target"}, "target must be an array of tables: write each target under its own [[target]] header, with double brackets")
		return nil
	}
	var targets []Target
	seen := make(map[string]int) // name -> line of the target that took it first
	if withRedis {
		seen[DefaultTarget] = 0
	}
	for i, m := range tables {
		if m == nil {
			continue
		}
		path := []string{"target", strconv.Itoa(i)}
		t := Target{Line: p.lines.line(path...)}
		p.redis(path, &t.Redis, m)
		switch name, ok := m["name"]; {
		case !ok:
			p.addf(path, `target has no name; add name = "eu" (letters, digits, "_", "-" and ".")`)
		case p.str(append(path, "name"), name, &t.Name):
			at := append(path, "name")
			if first, dup := seen[t.Name]; dup && t.Name == DefaultTarget && withRedis {
				p.addf(at, "target name %q is the [redis] table's; choose another name", t.Name)
			} else if dup {
				p.addf(at, "target name %q is taken by the target on line %d; give each target its own name", t.Name, first)
			} else if !targetName.MatchString(t.Name) {
				p.addf(at, "target name %q is not valid: use 1 to 63 letters, digits, \"_\", \"-\" and \".\"", t.Name)
			} else {
				seen[t.Name] = t.Line
			}
		}
		if mode, _ := m["mode"].(string); (mode == "" || mode == RedisSingle) && t.Redis.URL == "" {
			if _, ok := m["url"]; !ok {
				p.addf(path, `target needs url = "redis://host:6379/0" in mode "single": --redis and REDIS_URL apply only to [redis]`)
			}
		}
		targets = append(targets, t)
	}
	return targets
}

// redisTogether checks that the [redis] keys in m, parsed into c, make
// sense together.
func (p *parser) redisTogether(path []string, c *RedisConfig, m map[string]any) {
	at := func(k string) []string {
		if _, ok := m[k]; ok {
			return append(path[:len(path):len(path)], k)
		}
		return path
	}
	mode := c.Mode
	switch mode {
	case "", RedisSingle:
		mode = RedisSingle
	case RedisCluster, RedisSentinel:
	default:
		p.addf(at("mode"), "mode %q is not a choice; use %q (the default, with url), %q or %q", c.Mode, RedisSingle, RedisCluster, RedisSentinel)
		return
	}
	if mode == RedisSingle {
		if _, ok := m["addrs"]; ok {
			p.addf(at("addrs"), `addrs is for mode "cluster" or "sentinel"; mode "single" connects to url`)
		}
	} else {
		if _, ok := m["url"]; ok {
			p.addf(at("url"), `url is for mode "single"; mode %q connects to addrs (put a username in username, a password in password_env or password_file)`, mode)
		}
		if _, ok := m["addrs"]; !ok || len(c.Addrs) == 0 {
			what := "the cluster's seed nodes"
			if mode == RedisSentinel {
				what = "the sentinels"
			}
			p.addf(at("addrs"), `mode %q needs addrs, %s: addrs = ["host:port", ...]`, mode, what)
		}
		for i, a := range c.Addrs {
			host, port, err := net.SplitHostPort(a)
			if n, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
				p.addf(at("addrs"), "addrs[%d] %q is not host:port", i, a)
			}
		}
	}
	switch {
	case mode == RedisSentinel && c.Master == "":
		p.addf(at("master"), `mode "sentinel" needs master, the name the sentinels monitor: master = "mymaster"`)
	case mode != RedisSentinel && c.Master != "":
		p.addf(at("master"), `master is for mode "sentinel" only`)
	}
	if _, env := m["password_env"]; env {
		if _, file := m["password_file"]; file {
			p.addf(at("password_file"), "give password_env or password_file, not both")
		}
		if c.PasswordEnv == "" {
			p.addf(at("password_env"), "password_env is empty; name the environment variable that holds the password")
		}
	}
	if _, ok := m["password_file"]; ok && c.PasswordFile == "" {
		p.addf(at("password_file"), "password_file is empty; give the path of the file that holds the password")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		p.addf(at("tls_cert"), "tls_cert and tls_key go together: give both (a client certificate and its key), or neither")
	}
	if mode != RedisSingle && !c.TLS { // in mode single, a rediss:// url turns TLS on
		for _, k := range []string{"tls_ca", "tls_cert", "tls_key", "tls_server_name"} {
			if _, ok := m[k]; ok {
				p.addf(at(k), "%s is set but tls is not true; add tls = true", k)
			}
		}
	}
}

// RedisPassword returns the Redis password from the environment variable
// [redis] password_env names, or from the file password_file names (its
// content without a trailing newline), or "" when the file names neither.
// Its error is a *Problem at the key's line; it never holds the password.
func (c *Config) RedisPassword() (string, error) { return c.password(c.Redis, "redis") }

// TargetPassword is RedisPassword for target t, one of Targets. Its
// messages name the target: "target eu password_env EU_PASSWORD: ...".
func (c *Config) TargetPassword(t Target) (string, error) {
	if t.Name == DefaultTarget && (c.hasRedis || len(c.TargetTables) == 0) {
		return c.RedisPassword()
	}
	return c.password(t.Redis, "target "+t.Name)
}

func (c *Config) password(r RedisConfig, what string) (string, error) {
	problem := func(key, format string, args ...any) error {
		return &Problem{File: c.File, Line: r.lines[key], Msg: what + " " + fmt.Sprintf(format, args...)}
	}
	switch {
	case r.PasswordEnv != "":
		v, ok := os.LookupEnv(r.PasswordEnv)
		if !ok {
			return "", problem("password_env", "password_env %s: the environment variable is not set", r.PasswordEnv)
		}
		if v == "" {
			return "", problem("password_env", "password_env %s: the environment variable is empty", r.PasswordEnv)
		}
		return v, nil
	case r.PasswordFile != "":
		b, err := os.ReadFile(r.PasswordFile)
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return "", problem("password_file", "password_file %s: %v", r.PasswordFile, err)
		}
		pw := strings.TrimRight(string(b), "\r\n")
		if pw == "" {
			return "", problem("password_file", "password_file %s: the file is empty", r.PasswordFile)
		}
		return pw, nil
	}
	return "", nil
}

func (p *parser) recovery(c *RecoveryConfig, v any) {
	m := p.table([]string{"recovery"}, v)
	for _, k := range sortedKeys(m) {
		path := []string{"recovery", k}
		switch k {
		case "on_slot_lost":
			var s string
			if !p.str(path, m[k], &s) {
				break
			}
			if s != OnSlotLostStop && s != OnSlotLostResync {
				p.addf(path, "on_slot_lost %q is not a choice; use %q (the default: stop and say what to do) or %q (recreate the slot and flush every rule's keys)",
					s, OnSlotLostStop, OnSlotLostResync)
				break
			}
			c.OnSlotLost = s
		default:
			p.unknown(path, "[recovery]", recoveryKeys)
		}
	}
}

func (p *parser) rules(v any) []*Rule {
	var tables []map[string]any
	switch v := v.(type) {
	case []map[string]any: // [[rule]] headers
		tables = v
	case []any: // rule = [{...}, {...}]
		for i, e := range v {
			m, ok := e.(map[string]any)
			if !ok {
				p.wrongType([]string{"rule", strconv.Itoa(i)}, "a table", e)
			}
			tables = append(tables, m)
		}
	default:
		p.addf([]string{"rule"}, "rule must be an array of tables: write each rule under its own [[rule]] header, with double brackets")
		return nil
	}
	if len(tables) == 0 {
		p.addf([]string{"rule"}, "no [[rule]] found; add at least one, with a table and del or incr")
	}
	var rules []*Rule
	for i, m := range tables {
		if m != nil {
			rules = append(rules, p.rule([]string{"rule", strconv.Itoa(i)}, m))
		}
	}
	return rules
}

func (p *parser) rule(path []string, m map[string]any) *Rule {
	r := &Rule{Line: p.lines.line(path...), On: AllOps}
	keyed := func(k string) []string { return append(path[:len(path):len(path)], k) }
	templates := false // whether del or incr names a template, valid or not
	for _, k := range sortedKeys(m) {
		switch k {
		case "table":
			var s string
			if p.str(keyed(k), m[k], &s) {
				r.Schema, r.Table = p.tableName(keyed(k), s)
			}
		case "del", "incr":
			list, given := p.templates(keyed(k), m[k])
			templates = templates || given
			if k == "del" {
				r.Del = list
			} else {
				r.Incr = list
			}
		case "on":
			r.On = p.ops(keyed(k), m[k])
		default:
			p.unknown(keyed(k), "[[rule]]", ruleKeys)
		}
	}
	if _, ok := m["table"]; !ok {
		p.addf(path, `rule has no table; add table = "schema.table" (or just "table" for the public schema)`)
	}
	if !templates {
		p.addf(path, `rule has neither del nor incr; add del = ["key:<column>"] or incr = ["key"]`)
	}
	return r
}

// tableName splits "schema.table", defaulting the schema to public.
func (p *parser) tableName(path []string, s string) (schema, table string) {
	parts := strings.Split(s, ".")
	switch {
	case len(parts) > 2:
		p.addf(path, "table %q has more than one dot; write \"schema.table\", or just \"table\" for the public schema", s)
	case slices.Contains(parts, ""):
		p.addf(path, "table %q has an empty name; write \"schema.table\", or just \"table\" for the public schema", s)
	case slices.ContainsFunc(parts, func(n string) bool { return strings.TrimSpace(n) != n }):
		p.addf(path, "table %q has spaces around a name; remove them", s)
	case len(parts) == 1:
		return "public", parts[0]
	default:
		return parts[0], parts[1]
	}
	return "", ""
}

// templates parses an array of templates. given is false when the array is
// empty, so that a rule with no templates at all can be told apart from one
// whose templates are wrong.
func (p *parser) templates(path []string, v any) (list []*Template, given bool) {
	strs, ok := p.strs(path, v)
	if !ok {
		return nil, true
	}
	for i, s := range strs {
		elem := append(path[:len(path):len(path)], strconv.Itoa(i))
		t, err := ParseTemplate(s)
		if err != nil {
			p.addf(elem, "%s", err)
			continue
		}
		t.Line = p.lines.line(elem...)
		list = append(list, t)
	}
	return list, len(strs) > 0
}

func (p *parser) ops(path []string, v any) Ops {
	names, ok := p.strs(path, v)
	if !ok {
		return AllOps
	}
	if len(names) == 0 {
		p.addf(path, "on is empty; list some of insert, update, delete, truncate, or remove it to handle all four")
		return AllOps
	}
	var s Ops
	for i, name := range names {
		op, ok := opNames[name]
		if !ok {
			p.addf(append(path[:len(path):len(path)], strconv.Itoa(i)), "on: %q is not an operation; use insert, update, delete or truncate", name)
			continue
		}
		s = s.With(op)
	}
	return s
}

var opNames = map[string]pginvalidator.Op{
	"insert":   pginvalidator.OpInsert,
	"update":   pginvalidator.OpUpdate,
	"delete":   pginvalidator.OpDelete,
	"truncate": pginvalidator.OpTruncate,
}

// table returns v as a table, or reports it and returns nil.
func (p *parser) table(path []string, v any) map[string]any {
	m, ok := v.(map[string]any)
	if !ok {
		p.addf(path, "%s must be a table: write [%s] on a line of its own, with its keys below", path[0], path[0])
	}
	return m
}

// str stores v in dst if it is a string, and reports it otherwise.
func (p *parser) str(path []string, v any, dst *string) bool {
	s, ok := v.(string)
	if !ok {
		p.wrongType(path, "a string, in double quotes", v)
		return false
	}
	*dst = s
	return true
}

// strs returns v as a []string if it is an array of strings, and reports
// every element that is not.
func (p *parser) strs(path []string, v any) ([]string, bool) {
	arr, ok := v.([]any)
	if !ok {
		p.wrongType(path, `an array of strings, like ["a", "b"]`, v)
		return nil, false
	}
	strs := make([]string, 0, len(arr))
	for i, e := range arr {
		s, ok := e.(string)
		if !ok {
			p.wrongType(append(path[:len(path):len(path)], strconv.Itoa(i)), "a string, in double quotes", e)
			continue
		}
		strs = append(strs, s)
	}
	return strs, len(strs) == len(arr)
}

func (p *parser) wrongType(path []string, want string, v any) {
	p.addf(path, "%s must be %s; got %s", keyName(path), want, typeName(v))
}

// keyName names the key at path for a message: "postgres.slot", "del",
// "del[1]".
func keyName(path []string) string {
	if len(path) > 2 && (path[0] == "rule" || path[0] == "target") {
		path = path[2:]
	}
	var b strings.Builder
	for i, k := range path {
		if _, err := strconv.Atoi(k); err == nil && i > 0 {
			fmt.Fprintf(&b, "[%s]", k)
			continue
		}
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(k)
	}
	return b.String()
}

func typeName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	case []map[string]any:
		return "an array of tables"
	}
	return "a date or time"
}

func sortedKeys(m map[string]any) []string { return slices.Sorted(maps.Keys(m)) }
