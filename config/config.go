// Package config reads rules.toml as a file: its connection tables
// ([postgres], [redis], [[target]], [recovery]) into the daemon's own types,
// and its [[rule]] tables through the mapping package. It reports every
// problem in the file at once, each as "file:line: message", and reports
// a top-level key that belongs to no table.
//
// It reads the file, and, in ReadPasswords only, the environment variables
// and files that password_env and password_file name (and
// sentinel_password_env and sentinel_password_file). It resolves no flag
// and no other environment variable: the command line puts --postgres,
// DATABASE_URL, --redis and REDIS_URL on top of what the file says. The
// integration tests read rules files through it as the daemon does.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/internal/tomldoc"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
	"github.com/pg-invalidator/pg-invalidator/mapping"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// Problem is one thing wrong with a rules file, at a line of it. It is
// mapping.Problem: the rules and the connection tables report alike.
type Problem = mapping.Problem

// Errors is every problem found in one pass, in line order, each a
// *Problem. Load and Parse return it as their error.
type Errors = mapping.Errors

// File is a parsed rules.toml.
type File struct {
	Path     string   // the path the file was read from, used in messages
	Postgres Postgres // the [postgres] table; defaults filled in when absent
	Recovery Recovery // the [recovery] table; defaults filled in when absent
	// Targets are the Redis deployments to invalidate: the [redis] table,
	// named daemon.DefaultTarget, then the [[target]] tables in file order.
	// [redis] is left out when it is absent and [[target]] tables are given;
	// with neither, the one target is the default with zero options, which
	// the command line completes (--redis, REDIS_URL). Passwords are not
	// read: see ReadPasswords.
	Targets []daemon.Target
	Rules   *mapping.Rules // the [[rule]] tables; never empty after Parse

	hasDefault bool // Targets[0] is the default target: the [redis] table, or no [[target]]
	// passwords and sentinelPasswords say where each target's password and
	// its sentinels' password come from, by index in Targets.
	passwords, sentinelPasswords []secret
}

// Postgres is the [postgres] table.
type Postgres struct {
	// URL is the connection string. Empty: the file does not say; the caller
	// must get one elsewhere (a flag, the environment) or refuse to start.
	URL string
	// PrimaryURL, when not empty, is the primary's connection string: URL
	// then names a hot standby to decode on (PostgreSQL 16 and later), and
	// the primary is where the daemon writes (see daemon.Config.PrimaryURL).
	PrimaryURL string
	// Slot is the replication slot name. Parse sets replication.DefaultSlot
	// when the file leaves it out.
	Slot string
	// Publication is the publication name. Parse sets
	// replication.DefaultPublication when the file leaves it out.
	Publication string
	// Heartbeat is how often to confirm progress on an idle stream, and to
	// send the canary; a second or more. Zero: the caller picks its
	// default.
	Heartbeat time.Duration
	// Timeout is how long a connection to PostgreSQL may stay silent before
	// it is dropped (see daemon.Config.Timeout). Zero: the caller picks its
	// default.
	Timeout time.Duration
	// Replicas are the standbys, by application_name, that must have
	// replayed a transaction before its commands go to Redis. Nil: none.
	Replicas []string
	// ReplicaTimeout is how long a standby may hold them back. Zero: the
	// caller picks its default.
	ReplicaTimeout time.Duration
	// Visibility says when commands wait for their transactions to be
	// visible on the primary: daemon.VisibilityOn, VisibilityAuto or
	// VisibilityOff. Empty: the caller picks its default.
	Visibility string
	// VisibilityTimeout is how long a transaction not visible may hold its
	// commands back. Zero: the caller picks its default.
	VisibilityTimeout time.Duration
	// NoStreaming is true when the file says streaming = false: large
	// transactions reach the daemon whole, after their commit (see
	// daemon.Config.NoStreaming).
	NoStreaming bool
	// DecodingWorkMem is the walsender's logical_decoding_work_mem for the
	// daemon's connection, as PostgreSQL writes a memory size ("16MB").
	// Empty: the caller picks its default.
	DecodingWorkMem string
	// NoFailoverSlot is true when the file says failover_slot = false (see
	// daemon.Config.NoFailoverSlot).
	NoFailoverSlot bool
	// CanaryKey is the Redis key of the end-to-end canary, "<slot>" in it
	// standing for Slot (see daemon.CanaryKey). Parse sets
	// daemon.DefaultCanaryKey when the file leaves it out; empty
	// (canary_key = "") turns the canary off.
	CanaryKey string
}

// What [recovery] on_slot_lost may say.
const (
	// OnSlotLostStop stops the daemon with a message saying what to do.
	OnSlotLostStop = "stop"
	// OnSlotLostResync drops the lost slot, creates a new one, flushes every
	// key the rules can render, and streams on.
	OnSlotLostResync = "resync"
)

// Recovery is the [recovery] table.
type Recovery struct {
	// OnSlotLost is what to do when the replication slot was invalidated or
	// disappeared: OnSlotLostStop or OnSlotLostResync. Parse sets
	// OnSlotLostStop when the file leaves it out.
	OnSlotLost string
}

// Default returns the target the [redis] table describes, the one --redis
// and REDIS_URL complete, or nil when the file has [[target]] tables and no
// [redis] table. It points into f.Targets.
func (f *File) Default() *daemon.Target {
	if !f.hasDefault {
		return nil
	}
	return &f.Targets[0]
}

// Load reads and parses a rules file.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load rules: %w", err)
	}
	return Parse(path, data)
}

// Parse parses the rules file named path whose content is data. Its error,
// if any, is an Errors holding every problem found, each a *Problem.
func Parse(path string, data []byte) (*File, error) {
	doc, err := tomldoc.Parse(path, data)
	if err != nil {
		return nil, err
	}
	p := &parser{Checker: tomldoc.NewChecker(doc)}
	f := &File{
		Path:     path,
		Postgres: Postgres{Slot: replication.DefaultSlot, Publication: replication.DefaultPublication, CanaryKey: daemon.DefaultCanaryKey},
		Recovery: Recovery{OnSlotLost: OnSlotLostStop},
	}
	_, hasRedis := doc.Root["redis"]
	_, hasTargets := doc.Root["target"]
	if f.hasDefault = hasRedis || !hasTargets; f.hasDefault {
		f.Targets = []daemon.Target{{Name: daemon.DefaultTarget}}
		f.passwords = []secret{{what: "redis", key: "password"}}
		f.sentinelPasswords = []secret{{what: "redis", key: "sentinel_password"}}
	}
	for _, k := range tomldoc.SortedKeys(doc.Root) {
		switch k {
		case "postgres":
			p.postgres(&f.Postgres, doc.Root[k])
		case "redis":
			path := []string{"redis"}
			f.Targets[0].Redis, f.passwords[0], f.sentinelPasswords[0] = p.redis(path, p.Table(path, doc.Root[k]))
		case "target":
			p.targets(f, doc.Root[k], hasRedis)
		case "recovery":
			p.recovery(&f.Recovery, doc.Root[k])
		case "rule": // mapping's, below
		default:
			p.Addf([]string{k}, "unknown key %q; the top level allows only [postgres], [redis], [[target]], [recovery] and [[rule]]", k)
		}
	}
	f.Rules = mapping.ParseDoc(p.Checker)
	if err := p.Err(); err != nil {
		return nil, err
	}
	return f, nil
}

// parser reads the connection tables, reporting problems to its Checker.
type parser struct{ *tomldoc.Checker }

// Keys each table allows, in the order messages list them.
var (
	postgresKeys = []string{"url", "primary_url", "slot", "publication", "heartbeat", "timeout", "replicas", "replica_timeout", "visibility", "visibility_timeout", "failover_slot",
		"streaming", "logical_decoding_work_mem", "canary_key"}
	redisKeys = []string{"url", "mode", "addrs", "master", "username", "password_env", "password_file",
		"sentinel_username", "sentinel_password_env", "sentinel_password_file",
		"tls", "tls_ca", "tls_cert", "tls_key", "tls_server_name", "wait_replicas"}
	targetKeys   = append([]string{"name"}, redisKeys...)
	recoveryKeys = []string{"on_slot_lost"}
)

func (p *parser) postgres(c *Postgres, v any) {
	m := p.Table([]string{"postgres"}, v)
	for _, k := range tomldoc.SortedKeys(m) {
		path := []string{"postgres", k}
		switch k {
		case "url":
			p.Str(path, m[k], &c.URL)
		case "primary_url":
			p.Str(path, m[k], &c.PrimaryURL)
		case "slot":
			if p.Str(path, m[k], &c.Slot) && !replication.ValidSlotName(c.Slot) {
				p.Addf(path, "slot %q is not a valid replication slot name: use 1 to 63 lowercase letters, digits and underscores", c.Slot)
			}
		case "publication":
			if p.Str(path, m[k], &c.Publication) && c.Publication == "" {
				p.Addf(path, "publication is empty; give a name, or remove the key to use %q", replication.DefaultPublication)
			}
		case "heartbeat":
			var s string
			if !p.Str(path, m[k], &s) {
				break
			}
			d, err := time.ParseDuration(s)
			if err != nil || d <= 0 {
				p.Addf(path, "heartbeat %q is not a positive duration; write one like \"10s\" or \"1m\"", s)
				break
			}
			if d < MinHeartbeat {
				p.Addf(path, "heartbeat %q is shorter than %s; write one like \"1s\" or \"10s\"", s, MinHeartbeat)
				break
			}
			c.Heartbeat = d
		case "timeout":
			p.duration(path, m[k], &c.Timeout)
		case "replicas":
			c.Replicas = p.replicas(path, m[k])
		case "replica_timeout":
			p.duration(path, m[k], &c.ReplicaTimeout)
		case "visibility":
			if p.Str(path, m[k], &c.Visibility) && c.Visibility != daemon.VisibilityOn && c.Visibility != daemon.VisibilityAuto && c.Visibility != daemon.VisibilityOff {
				p.Addf(path, "visibility %q is not a choice; use %q (wait until each transaction is visible on the primary), %q (only while synchronous_standby_names is set) or %q",
					c.Visibility, daemon.VisibilityOn, daemon.VisibilityAuto, daemon.VisibilityOff)
			}
		case "visibility_timeout":
			p.duration(path, m[k], &c.VisibilityTimeout)
		case "streaming":
			if b, ok := m[k].(bool); ok {
				c.NoStreaming = !b
			} else {
				p.WrongType(path, "a boolean, true or false", m[k])
			}
		case "failover_slot":
			if b, ok := m[k].(bool); ok {
				c.NoFailoverSlot = !b
			} else {
				p.WrongType(path, "a boolean, true or false", m[k])
			}
		case "logical_decoding_work_mem":
			if p.Str(path, m[k], &c.DecodingWorkMem) && !validWorkMem(c.DecodingWorkMem) {
				p.Addf(path, "logical_decoding_work_mem %q is not a memory size of 64kB or more; write one like \"16MB\" (units kB, MB, GB)", c.DecodingWorkMem)
			}
		case "canary_key":
			if p.Str(path, m[k], &c.CanaryKey) {
				if problem := canaryKeyProblem(c.CanaryKey); problem != "" {
					p.Addf(path, "canary_key %q %s", c.CanaryKey, problem)
				}
			}
		default:
			p.Unknown(path, "[postgres]", postgresKeys)
		}
	}
}

// duration parses v, the value at path, as a positive duration into d.
func (p *parser) duration(path []string, v any, d *time.Duration) {
	var s string
	if !p.Str(path, v, &s) {
		return
	}
	x, err := time.ParseDuration(s)
	if err != nil || x <= 0 {
		p.Addf(path, "%s %q is not a positive duration; write one like \"30s\" or \"1m\"", path[len(path)-1], s)
		return
	}
	*d = x
}

// replicas parses [postgres] replicas: application_names, each once.
func (p *parser) replicas(path []string, v any) []string {
	names, ok := p.Strs(path, v)
	if !ok {
		return nil
	}
	seen := make(map[string]bool)
	var out []string
	for i, name := range names {
		at := tomldoc.Key(path, strconv.Itoa(i))
		switch {
		case name == "" || strings.TrimSpace(name) != name:
			p.Addf(at, "replicas[%d] %q is not a standby's name; give its application_name as the primary's pg_stat_replication shows it", i, name)
		case seen[name]:
			p.Addf(at, "replicas names %q twice; remove one", name)
		default:
			seen[name] = true
			out = append(out, name)
		}
	}
	return out
}

// MinHeartbeat is the shortest [postgres] heartbeat: each one writes a
// little WAL, and with the canary sets and deletes a key in every target.
const MinHeartbeat = time.Second

// canaryKeyProblem says what is wrong with a canary_key, or "". The key
// becomes an ACL key pattern (setup --redis-acl), so it may hold neither a
// space nor a glob character; "<slot>" is its only placeholder.
func canaryKeyProblem(key string) string {
	if key == "" {
		return "" // the canary is off
	}
	if strings.ContainsAny(key, " \t\r\n") {
		return "holds a space, which an ACL key pattern cannot; remove it"
	}
	if strings.ContainsAny(key, "*?[]\\") {
		return `holds a glob character (*, ?, [, ] or \), which the ACL key pattern setup prints would widen; remove it`
	}
	if strings.ContainsAny(strings.ReplaceAll(key, "<slot>", ""), "<>") {
		return `has a "<" or ">" that is not part of "<slot>", its only placeholder (the slot's name)`
	}
	return ""
}

// secret says where a target's password (or its sentinels') comes from,
// and where the file says so.
type secret struct {
	what      string // "redis" or "target eu", to begin messages with
	key       string // "password" or "sentinel_password": the keys are key_env and key_file
	env, file string // the values of key_env and key_file; empty: not given
	envLine   int    // line of key_env
	fileLine  int    // line of key_file
}

// redis parses the keys of m, the [redis] table or a [[target]] at path,
// and says where its password and its sentinels' password come from. A
// [[target]]'s name is left to targets.
func (p *parser) redis(path []string, m map[string]any) (invalidator.Options, secret, secret) {
	var o invalidator.Options
	s := secret{what: "redis", key: "password"}
	ss := secret{what: "redis", key: "sentinel_password"}
	table, allowed := "[redis]", redisKeys
	if path[0] == "target" {
		table, allowed = "[[target]]", targetKeys
	}
	strs := map[string]*string{
		"url": &o.URL, "mode": &o.Mode, "master": &o.MasterName, "username": &o.Username,
		"password_env": &s.env, "password_file": &s.file,
		"sentinel_username": &o.SentinelUsername, "sentinel_password_env": &ss.env, "sentinel_password_file": &ss.file,
		"tls_ca": &o.TLSCA, "tls_cert": &o.TLSCert, "tls_key": &o.TLSKey, "tls_server_name": &o.TLSServerName,
	}
	for _, k := range tomldoc.SortedKeys(m) {
		at := tomldoc.Key(path, k)
		switch {
		case k == "name" && table == "[[target]]":
		case strs[k] != nil:
			p.Str(at, m[k], strs[k])
		case k == "addrs":
			o.Addrs, _ = p.Strs(at, m[k])
		case k == "tls":
			if b, ok := m[k].(bool); ok {
				o.TLS = b
			} else {
				p.WrongType(at, "a boolean, true or false", m[k])
			}
		case k == "wait_replicas":
			if n, ok := m[k].(int64); ok && n >= 0 && n < 1<<31 {
				o.WaitReplicas = int(n)
			} else {
				p.WrongType(at, "a whole number, zero or more", m[k])
			}
		case k == "password", k == "sentinel_password":
			p.Addf(at, "unknown key %q in %s; allowed keys: %s; a password does not belong in the rules file: name the variable or file that holds it with %[1]s_env or %[1]s_file",
				k, table, strings.Join(allowed, ", "))
		default:
			p.Unknown(at, table, allowed)
		}
	}
	for _, sec := range []*secret{&s, &ss} {
		sec.envLine = p.Doc.Line(tomldoc.Key(path, sec.key+"_env")...)
		sec.fileLine = p.Doc.Line(tomldoc.Key(path, sec.key+"_file")...)
	}
	p.redisTogether(path, o, s, ss, m)
	return o, s, ss
}

// targetName is what a [[target]] name may be: it shows in logs, metric
// labels and messages.
var targetName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,63}$`)

// targets parses the [[target]] tables into f. withRedis says whether the
// file has a [redis] table, whose target is named daemon.DefaultTarget.
func (p *parser) targets(f *File, v any, withRedis bool) {
	tables, ok := p.Tables("target", v)
	if !ok {
		return
	}
	seen := make(map[string]int) // name -> line of the target that took it first
	if withRedis {
		seen[daemon.DefaultTarget] = 0
	}
	for i, m := range tables {
		if m == nil {
			continue
		}
		path := []string{"target", strconv.Itoa(i)}
		line := p.Doc.Line(path...)
		t := daemon.Target{}
		var s, ss secret
		t.Redis, s, ss = p.redis(path, m)
		switch name, ok := m["name"]; {
		case !ok:
			p.Addf(path, `target has no name; add name = "eu" (letters, digits, "_", "-" and ".")`)
		case p.Str(tomldoc.Key(path, "name"), name, &t.Name):
			at := tomldoc.Key(path, "name")
			if first, dup := seen[t.Name]; dup && t.Name == daemon.DefaultTarget && withRedis {
				p.Addf(at, "target name %q is the [redis] table's; choose another name", t.Name)
			} else if dup {
				p.Addf(at, "target name %q is taken by the target on line %d; give each target its own name", t.Name, first)
			} else if !targetName.MatchString(t.Name) {
				p.Addf(at, "target name %q is not valid: use 1 to 63 letters, digits, \"_\", \"-\" and \".\"", t.Name)
			} else {
				seen[t.Name] = line
			}
		}
		if mode, _ := m["mode"].(string); (mode == "" || mode == invalidator.ModeSingle) && t.Redis.URL == "" {
			if _, ok := m["url"]; !ok {
				p.Addf(path, `target needs url = "redis://host:6379/0" in mode "single": --redis and REDIS_URL apply only to [redis]`)
			}
		}
		s.what, ss.what = "target "+t.Name, "target "+t.Name
		f.Targets = append(f.Targets, t)
		f.passwords = append(f.passwords, s)
		f.sentinelPasswords = append(f.sentinelPasswords, ss)
	}
}

// redisTogether checks that the keys in m, the [redis] table or a
// [[target]] at path parsed into o, s and ss, make sense together.
func (p *parser) redisTogether(path []string, o invalidator.Options, s, ss secret, m map[string]any) {
	at := func(k string) []string {
		if _, ok := m[k]; ok {
			return tomldoc.Key(path, k)
		}
		return path
	}
	mode := o.Mode
	switch mode {
	case "", invalidator.ModeSingle:
		mode = invalidator.ModeSingle
	case invalidator.ModeCluster, invalidator.ModeSentinel:
	default:
		p.Addf(at("mode"), "mode %q is not a choice; use %q (the default, with url), %q or %q",
			o.Mode, invalidator.ModeSingle, invalidator.ModeCluster, invalidator.ModeSentinel)
		return
	}
	if mode == invalidator.ModeSingle {
		if _, ok := m["addrs"]; ok {
			p.Addf(at("addrs"), `addrs is for mode "cluster" or "sentinel"; mode "single" connects to url`)
		}
	} else {
		if _, ok := m["url"]; ok {
			p.Addf(at("url"), `url is for mode "single"; mode %q connects to addrs (put a username in username, a password in password_env or password_file)`, mode)
		}
		if _, ok := m["addrs"]; !ok || len(o.Addrs) == 0 {
			what := "the cluster's seed nodes"
			if mode == invalidator.ModeSentinel {
				what = "the sentinels"
			}
			p.Addf(at("addrs"), `mode %q needs addrs, %s: addrs = ["host:port", ...]`, mode, what)
		}
		for i, a := range o.Addrs {
			host, port, err := net.SplitHostPort(a)
			if n, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
				p.Addf(at("addrs"), "addrs[%d] %q is not host:port", i, a)
			}
		}
	}
	switch {
	case mode == invalidator.ModeSentinel && o.MasterName == "":
		p.Addf(at("master"), `mode "sentinel" needs master, the name the sentinels monitor: master = "mymaster"`)
	case mode != invalidator.ModeSentinel && o.MasterName != "":
		p.Addf(at("master"), `master is for mode "sentinel" only`)
	}
	if mode != invalidator.ModeSentinel {
		for _, k := range []string{"sentinel_username", "sentinel_password_env", "sentinel_password_file"} {
			if _, ok := m[k]; ok {
				p.Addf(at(k), `%s is for mode "sentinel" only: it authenticates to the sentinels`, k)
			}
		}
	}
	for _, sec := range []secret{s, ss} {
		env, file := sec.key+"_env", sec.key+"_file"
		whose := "the password"
		if sec.key == "sentinel_password" {
			whose = "the sentinels' password"
		}
		if _, ok := m[env]; ok {
			if _, ok := m[file]; ok {
				p.Addf(at(file), "give %s or %s, not both", env, file)
			}
			if sec.env == "" {
				p.Addf(at(env), "%s is empty; name the environment variable that holds %s", env, whose)
			}
		}
		if _, ok := m[file]; ok && sec.file == "" {
			p.Addf(at(file), "%s is empty; give the path of the file that holds %s", file, whose)
		}
	}
	if (o.TLSCert == "") != (o.TLSKey == "") {
		p.Addf(at("tls_cert"), "tls_cert and tls_key go together: give both (a client certificate and its key), or neither")
	}
	if mode != invalidator.ModeSingle && !o.TLS { // in mode single, a rediss:// url turns TLS on
		for _, k := range []string{"tls_ca", "tls_cert", "tls_key", "tls_server_name"} {
			if _, ok := m[k]; ok {
				p.Addf(at(k), "%s is set but tls is not true; add tls = true", k)
			}
		}
	}
}

func (p *parser) recovery(c *Recovery, v any) {
	m := p.Table([]string{"recovery"}, v)
	for _, k := range tomldoc.SortedKeys(m) {
		path := []string{"recovery", k}
		switch k {
		case "on_slot_lost":
			var s string
			if !p.Str(path, m[k], &s) {
				break
			}
			if s != OnSlotLostStop && s != OnSlotLostResync {
				p.Addf(path, "on_slot_lost %q is not a choice; use %q (the default: stop and say what to do) or %q (recreate the slot and flush every rule's keys)",
					s, OnSlotLostStop, OnSlotLostResync)
				break
			}
			c.OnSlotLost = s
		default:
			p.Unknown(path, "[recovery]", recoveryKeys)
		}
	}
}

// ReadPasswords sets the password of every target that names one: from the
// environment variable its password_env names, or from the file its
// password_file names (the content without a trailing newline); and its
// sentinels' password alike, from sentinel_password_env or
// sentinel_password_file. Its error is an Errors of every *Problem found,
// each at the key's line and naming the target ("target eu password_env
// EU_PASSWORD: ..."); it never holds a password.
func (f *File) ReadPasswords() error {
	var problems Errors
	for i := range f.Targets {
		for _, x := range []struct {
			s  secret
			to *string
		}{{f.passwords[i], &f.Targets[i].Redis.Password}, {f.sentinelPasswords[i], &f.Targets[i].Redis.SentinelPassword}} {
			pw, err := x.s.read()
			if err != "" {
				line := x.s.envLine
				if x.s.env == "" {
					line = x.s.fileLine
				}
				problems = append(problems, &Problem{File: f.Path, Line: line, Msg: x.s.what + " " + err})
				continue
			}
			*x.to = pw
		}
	}
	if len(problems) > 0 {
		return problems
	}
	return nil
}

// read returns the password, "" when none is named, or what is wrong.
func (s secret) read() (pw, problem string) {
	switch {
	case s.env != "":
		v, ok := os.LookupEnv(s.env)
		if !ok {
			return "", fmt.Sprintf("%s_env %s: the environment variable is not set", s.key, s.env)
		}
		if v == "" {
			return "", fmt.Sprintf("%s_env %s: the environment variable is empty", s.key, s.env)
		}
		return v, ""
	case s.file != "":
		b, err := os.ReadFile(s.file)
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return "", fmt.Sprintf("%s_file %s: %v", s.key, s.file, err)
		}
		pw := strings.TrimRight(string(b), "\r\n")
		if pw == "" {
			return "", fmt.Sprintf("%s_file %s: the file is empty", s.key, s.file)
		}
		return pw, ""
	}
	return "", ""
}

// validWorkMem reports whether s is a memory size PostgreSQL takes for
// logical_decoding_work_mem: a whole number with a unit of kB, MB or GB, of
// 64kB (its minimum) or more.
func validWorkMem(s string) bool {
	for unit, kb := range map[string]int64{"kB": 1, "MB": 1 << 10, "GB": 1 << 20} {
		if n, ok := strings.CutSuffix(s, unit); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			return err == nil && v > 0 && v <= 1<<31/kb && v*kb >= 64
		}
	}
	return false
}
