package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// describe prints a file's rules one per line, with the line of each rule
// and template, so that tests can compare them as text.
func describe(f *File) string {
	var b strings.Builder
	for _, r := range f.Rules.List {
		fmt.Fprintf(&b, "%d %s on=%s", r.Line, r.QualifiedName(), r.On)
		for _, t := range r.Del {
			fmt.Fprintf(&b, " del:%d:%s", t.Line, t)
		}
		for _, t := range r.Incr {
			fmt.Fprintf(&b, " incr:%d:%s", t.Line, t)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

func TestLoad(t *testing.T) {
	c, err := Load("testdata/good.toml")
	if err != nil {
		t.Fatal(err)
	}
	wantPostgres := Postgres{
		URL:               "postgres://app@localhost:5432/app",
		Slot:              "shop_cache",
		Publication:       "shop_cache",
		Heartbeat:         time.Minute,
		Timeout:           45 * time.Second,
		Replicas:          []string{"standby1", "standby2"},
		ReplicaTimeout:    3 * time.Second,
		Visibility:        "auto",
		VisibilityTimeout: 2 * time.Second,
		NoStreaming:       true,
		DecodingWorkMem:   "4MB",
		CanaryKey:         "shop:canary:<slot>",
	}
	if !reflect.DeepEqual(c.Postgres, wantPostgres) {
		t.Errorf("Postgres = %+v, want %+v", c.Postgres, wantPostgres)
	}
	wantTargets := []daemon.Target{{Name: daemon.DefaultTarget, Redis: invalidator.Options{
		Mode:          "sentinel",
		Addrs:         []string{"10.0.0.1:26379", "10.0.0.2:26379"},
		MasterName:    "mymaster",
		Username:      "invalidator",
		TLS:           true,
		TLSCA:         "/etc/ssl/ca.pem",
		TLSCert:       "/etc/ssl/cert.pem",
		TLSKey:        "/etc/ssl/key.pem",
		TLSServerName: "redis.internal",
		WaitReplicas:  1,
	}}}
	if !reflect.DeepEqual(c.Targets, wantTargets) {
		t.Errorf("Targets = %+v, want %+v", c.Targets, wantTargets)
	}
	if got, want := c.passwords[0], (secret{what: "redis", key: "password", env: "REDIS_PASSWORD", envLine: 22, fileLine: 16}); got != want {
		t.Errorf("password source = %+v, want %+v", got, want)
	}
	if got, want := c.Recovery, (Recovery{OnSlotLost: OnSlotLostResync}); got != want {
		t.Errorf("Recovery = %+v, want %+v", got, want)
	}
	want := `31 public.products on=insert, update, delete, truncate del:34:product:<id> del:36:product-list:category:<category_id> incr:38:cache:version:products
40 public.products on=update, delete incr:43:product:<<v2>>:<id>
45 shop.orders on=truncate del:47:order:<id>
`
	if got := describe(c); got != want {
		t.Errorf("rules:\n%s\nwant:\n%s", got, want)
	}
	if got, want := c.Path, "testdata/good.toml"; got != want {
		t.Errorf("Path = %q, want %q", got, want)
	}
	if got, want := c.Rules.File, "testdata/good.toml"; got != want {
		t.Errorf("Rules.File = %q, want %q", got, want)
	}
	if got, want := c.Rules.Tables(), []string{"public.products", "shop.orders"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Tables() = %q, want %q", got, want)
	}
}

func TestParseDefaults(t *testing.T) {
	c, err := Parse("rules.toml", []byte("[[rule]]\ntable = \"items\"\nincr = [\"v\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := Postgres{Slot: replication.DefaultSlot, Publication: replication.DefaultPublication, CanaryKey: daemon.DefaultCanaryKey}
	if !reflect.DeepEqual(c.Postgres, want) {
		t.Errorf("Postgres = %+v, want %+v", c.Postgres, want)
	}
	if got, want := c.Recovery, (Recovery{OnSlotLost: OnSlotLostStop}); got != want {
		t.Errorf("Recovery = %+v, want %+v", got, want)
	}
	if got, want := describe(c), "1 public.items on=insert, update, delete, truncate incr:3:v\n"; got != want {
		t.Errorf("rules = %q, want %q", got, want)
	}
}

// TestParseLines checks that lines are found in spite of comments, strings
// and layouts that look like headers or keys.
func TestParseLines(t *testing.T) {
	src := `# [[rule]] in a comment is not a rule
[postgres]
url = """
[[rule]]
del = ["not a rule"]
"""
slot = 'a_slot' # [[rule]]

[[rule]]
table = "t1" # del = ["x"]
del = [ "a:<id>", "b:#[<id>]", # "c"
  'c:<id>' ]

[[ rule ]]
table = "t2"
"incr" = [
  """multi
line""",
  "d:<id>",
]

[[rule]]
table = "t3"
del.0 = "x"
`
	_, err := Parse("f.toml", []byte(src))
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("got %v, want an Errors", err)
	}
	got := err.Error()
	want := `f.toml:24: del must be an array of strings, like ["a", "b"]; got a table`
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}

	src = strings.Replace(src, "[[rule]]\ntable = \"t3\"\ndel.0 = \"x\"\n", "", 1)
	c, err := Parse("f.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want = `9 public.t1 on=insert, update, delete, truncate del:11:a:<id> del:11:b:#[<id>] del:12:c:<id>
14 public.t2 on=insert, update, delete, truncate incr:17:multi
line incr:19:d:<id>
`
	if got := describe(c); got != want {
		t.Errorf("rules:\n%s\nwant:\n%s", got, want)
	}
	if got, want := c.Postgres.Slot, "a_slot"; got != want {
		t.Errorf("Slot = %q, want %q", got, want)
	}
}

func TestParseByteOrderMark(t *testing.T) {
	_, err := Parse("f.toml", []byte("\xef\xbb\xbf[postgres]\nslto = 1\n"))
	want := `f.toml: no [[rule]] found; add at least one, with a table and del, incr or version
f.toml:2: unknown key "slto" in [postgres]; allowed keys: url, primary_url, slot, publication, heartbeat, timeout, replicas, replica_timeout, visibility, visibility_timeout, failover_slot, streaming, logical_decoding_work_mem, canary_key`
	if err == nil || err.Error() != want {
		t.Errorf("got:\n%v\nwant:\n%s", err, want)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		file string
		want string
	}{
		{"syntax.toml", `testdata/syntax.toml:9: TOML syntax error after key "rule.del": expected ',' or ']' after array value (column 1)`},
		{"unknown_top.toml", `testdata/unknown_top.toml:8: unknown key "redsi"; the top level allows only [postgres], [redis], [[target]], [recovery] and [[rule]]`},
		{"unknown_postgres.toml", `testdata/unknown_postgres.toml:4: unknown key "slot_name" in [postgres]; allowed keys: url, primary_url, slot, publication, heartbeat, timeout, replicas, replica_timeout, visibility, visibility_timeout, failover_slot, streaming, logical_decoding_work_mem, canary_key`},
		{"unknown_redis.toml", `testdata/unknown_redis.toml:3: unknown key "password" in [redis]; allowed keys: url, mode, addrs, master, username, password_env, password_file, sentinel_username, sentinel_password_env, sentinel_password_file, tls, tls_ca, tls_cert, tls_key, tls_server_name, wait_replicas; a password does not belong in the rules file: name the variable or file that holds it with password_env or password_file`},
		{"redis_bad_mode.toml", `testdata/redis_bad_mode.toml:3: mode "replicated" is not a choice; use "single" (the default, with url), "cluster" or "sentinel"`},
		{"redis_cluster.toml", `testdata/redis_cluster.toml:1: mode "cluster" needs addrs, the cluster's seed nodes: addrs = ["host:port", ...]
testdata/redis_cluster.toml:2: url is for mode "single"; mode "cluster" connects to addrs (put a username in username, a password in password_env or password_file)
testdata/redis_cluster.toml:4: master is for mode "sentinel" only`},
		{"redis_sentinel.toml", `testdata/redis_sentinel.toml:1: mode "sentinel" needs master, the name the sentinels monitor: master = "mymaster"
testdata/redis_sentinel.toml:3: addrs[1] "sentinel-2" is not host:port
testdata/redis_sentinel.toml:5: give password_env or password_file, not both
testdata/redis_sentinel.toml:6: tls_ca is set but tls is not true; add tls = true`},
		{"redis_single.toml", `testdata/redis_single.toml:3: addrs is for mode "cluster" or "sentinel"; mode "single" connects to url
testdata/redis_single.toml:4: tls_cert and tls_key go together: give both (a client certificate and its key), or neither
testdata/redis_single.toml:5: password_env is empty; name the environment variable that holds the password`},
		{"redis_sentinel_auth.toml", `testdata/redis_sentinel_auth.toml:6: give sentinel_password_env or sentinel_password_file, not both
testdata/redis_sentinel_auth.toml:7: unknown key "sentinel_password" in [redis]; allowed keys: url, mode, addrs, master, username, password_env, password_file, sentinel_username, sentinel_password_env, sentinel_password_file, tls, tls_ca, tls_cert, tls_key, tls_server_name, wait_replicas; a password does not belong in the rules file: name the variable or file that holds it with sentinel_password_env or sentinel_password_file
testdata/redis_sentinel_auth.toml:12: sentinel_username is for mode "sentinel" only: it authenticates to the sentinels
testdata/redis_sentinel_auth.toml:13: sentinel_password_env is for mode "sentinel" only: it authenticates to the sentinels
testdata/redis_sentinel_auth.toml:13: sentinel_password_env is empty; name the environment variable that holds the sentinels' password`},
		{"wrong_type_redis.toml", `testdata/wrong_type_redis.toml:3: redis.tls must be a boolean, true or false; got a string`},
		{"target_bad.toml", `testdata/target_bad.toml:4: target has no name; add name = "eu" (letters, digits, "_", "-" and ".")
testdata/target_bad.toml:8: target name "default" is the [redis] table's; choose another name
testdata/target_bad.toml:11: mode "sentinel" needs master, the name the sentinels monitor: master = "mymaster"
testdata/target_bad.toml:15: tls_ca is set but tls is not true; add tls = true
testdata/target_bad.toml:16: unknown key "passwd" in [[target]]; allowed keys: name, url, mode, addrs, master, username, password_env, password_file, sentinel_username, sentinel_password_env, sentinel_password_file, tls, tls_ca, tls_cert, tls_key, tls_server_name, wait_replicas
testdata/target_bad.toml:19: target name "eu" is taken by the target on line 11; give each target its own name
testdata/target_bad.toml:22: target needs url = "redis://host:6379/0" in mode "single": --redis and REDIS_URL apply only to [redis]
testdata/target_bad.toml:23: target name "us west" is not valid: use 1 to 63 letters, digits, "_", "-" and "."
testdata/target_bad.toml:24: unknown key "password" in [[target]]; allowed keys: name, url, mode, addrs, master, username, password_env, password_file, sentinel_username, sentinel_password_env, sentinel_password_file, tls, tls_ca, tls_cert, tls_key, tls_server_name, wait_replicas; a password does not belong in the rules file: name the variable or file that holds it with password_env or password_file`},
		{"target_not_array.toml", `testdata/target_not_array.toml:1: target must be an array of tables: write each target under its own [[target]] header, with double brackets`},
		{"wrong_type_target.toml", `testdata/wrong_type_target.toml:3: wait_replicas must be a whole number, zero or more; got a string`},
		{"no_rules.toml", `testdata/no_rules.toml: no [[rule]] found; add at least one, with a table and del, incr or version`},
		{"bad_replicas.toml", `testdata/bad_replicas.toml:2: replicas[1] "" is not a standby's name; give its application_name as the primary's pg_stat_replication shows it
testdata/bad_replicas.toml:2: replicas names "standby1" twice; remove one
testdata/bad_replicas.toml:3: replica_timeout "5" is not a positive duration; write one like "30s" or "1m"`},
		{"bad_visibility.toml", `testdata/bad_visibility.toml:2: visibility "always" is not a choice; use "on" (wait until each transaction is visible on the primary), "auto" (only while synchronous_standby_names is set) or "off"
testdata/bad_visibility.toml:3: visibility_timeout "0s" is not a positive duration; write one like "30s" or "1m"
testdata/bad_visibility.toml:4: postgres.streaming must be a boolean, true or false; got a string
testdata/bad_visibility.toml:5: logical_decoding_work_mem "16 MB" is not a memory size of 64kB or more; write one like "16MB" (units kB, MB, GB)`},
		{"bad_timeout.toml", `testdata/bad_timeout.toml:2: timeout "-5s" is not a positive duration; write one like "30s" or "1m"`},
		{"bad_heartbeat.toml", `testdata/bad_heartbeat.toml:2: heartbeat "1 minute" is not a positive duration; write one like "10s" or "1m"`},
		{"short_heartbeat.toml", `testdata/short_heartbeat.toml:2: heartbeat "500ms" is shorter than 1s; write one like "1s" or "10s"`},
		{"bad_canary_key.toml", `testdata/bad_canary_key.toml:2: canary_key "cache canary" holds a space, which an ACL key pattern cannot; remove it`},
		{"glob_canary_key.toml", `testdata/glob_canary_key.toml:2: canary_key "canary:*" holds a glob character (*, ?, [, ] or \), which the ACL key pattern setup prints would widen; remove it`},
		{"placeholder_canary_key.toml", `testdata/placeholder_canary_key.toml:2: canary_key "canary:<db>" has a "<" or ">" that is not part of "<slot>", its only placeholder (the slot's name)`},
		{"bad_on_slot_lost.toml", `testdata/bad_on_slot_lost.toml:2: on_slot_lost "recreate" is not a choice; use "stop" (the default: stop and say what to do) or "resync" (recreate the slot and flush every rule's keys)`},
		{"unknown_recovery.toml", `testdata/unknown_recovery.toml:2: unknown key "on_lost" in [recovery]; allowed keys: on_slot_lost`},
		{"bad_slot.toml", `testdata/bad_slot.toml:2: slot "PG-Invalidator" is not a valid replication slot name: use 1 to 63 lowercase letters, digits and underscores`},
		{"several.toml", `testdata/several.toml:4: unknown key "slto" in [postgres]; allowed keys: url, primary_url, slot, publication, heartbeat, timeout, replicas, replica_timeout, visibility, visibility_timeout, failover_slot, streaming, logical_decoding_work_mem, canary_key
testdata/several.toml:13: template "product-list:<category_id": the "<" at byte 14 has no closing ">"; end the column name with ">", or write "<<" for a literal "<"
testdata/several.toml:16: on: "INSERT" is not an operation; use insert, update, delete or truncate
testdata/several.toml:18: rule has no del, incr or version; add del = ["key:<column>"], incr = ["key"] or version = ["key"]
testdata/several.toml:19: table "a.b.c" has more than one dot; write "schema.table", or just "table" for the public schema
testdata/several.toml:24: unknown key "colour" in [[rule]]; allowed keys: table, del, incr, version, on, redelete_after`},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			c, err := Load("testdata/" + tt.file)
			if err == nil {
				t.Fatalf("got no error and rules:\n%s", describe(c))
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tt.want)
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error is a %T, want Errors", err)
			}
			for _, e := range errs {
				var p *Problem
				if !errors.As(e, &p) || p.File != "testdata/"+tt.file {
					t.Errorf("problem %q is not a *Problem in %s", e, tt.file)
				}
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("testdata/missing.toml")
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("got %v, want an error wrapping os.ErrNotExist", err)
	}
}

// FuzzParse checks that Parse never panics nor hangs, whatever the file, and
// that it finds a line for every problem.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.toml")
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("rule = [{table = 't', del = ['''a:<id>''']}]\n"))
	f.Add([]byte("a.b.\"c\" = { d = [1, [2, {e = 3}]] }\n[[x.y]]\n[x.y.z]\nw = 1979-05-27 07:32:00Z\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("f.toml", data)
		if err == nil {
			if len(c.Rules.List) == 0 {
				t.Fatal("Parse accepted a file without rules")
			}
			return
		}
		lines := strings.Count(string(data), "\n") + 1
		for _, e := range err.(Errors) {
			p := e.(*Problem)
			if p.Line > lines || p.Line == 0 && !strings.HasPrefix(p.Msg, "no [[rule]]") && !strings.HasPrefix(p.Msg, "TOML") {
				t.Fatalf("problem %q is not on one of the %d lines of %q", p, lines, data)
			}
		}
	})
}

func TestReadPasswords(t *testing.T) {
	c, err := Load("testdata/redis_password.toml")
	if err != nil {
		t.Fatal(err)
	}
	r := c.Targets[0].Redis
	if got, want := fmt.Sprintf("%s %q %s %v %s %d", r.Mode, r.Addrs, r.Username, r.TLS, r.TLSCA, r.WaitReplicas),
		`cluster ["127.0.0.1:7000" "127.0.0.1:7001"] invalidator true ca.pem 1`; got != want {
		t.Errorf("Redis = %s, want %s", got, want)
	}
	os.Unsetenv("PGINV_TEST_REDIS_PASSWORD")
	err = c.ReadPasswords()
	if got, want := fmt.Sprint(err), "testdata/redis_password.toml:5: redis password_env PGINV_TEST_REDIS_PASSWORD: the environment variable is not set"; got != want {
		t.Errorf("unset: got %s, want %s", got, want)
	}
	t.Setenv("PGINV_TEST_REDIS_PASSWORD", "")
	err = c.ReadPasswords()
	if got, want := fmt.Sprint(err), "testdata/redis_password.toml:5: redis password_env PGINV_TEST_REDIS_PASSWORD: the environment variable is empty"; got != want {
		t.Errorf("empty: got %s, want %s", got, want)
	}
	t.Setenv("PGINV_TEST_REDIS_PASSWORD", "s3cret")
	if err := c.ReadPasswords(); c.Targets[0].Redis.Password != "s3cret" || err != nil {
		t.Errorf("set: got %q, %v, want s3cret", c.Targets[0].Redis.Password, err)
	}

	c, err = Load("testdata/redis_password_file.toml")
	if err != nil {
		t.Fatal(err)
	}
	err = c.ReadPasswords()
	if got, want := fmt.Sprint(err), "testdata/redis_password_file.toml:3: redis password_file testdata/no-such-password-file: no such file or directory"; got != want {
		t.Errorf("missing file: got %s, want %s", got, want)
	}
	var problems Errors
	if !errors.As(err, &problems) || len(problems) != 1 {
		t.Errorf("missing file: error is %T, want Errors holding one *Problem", err)
	}
	file := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(file, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.passwords[0].file = file
	if err := c.ReadPasswords(); c.Targets[0].Redis.Password != "s3cret" || err != nil {
		t.Errorf("file: got %q, %v, want s3cret", c.Targets[0].Redis.Password, err)
	}
}

func TestReadSentinelPasswords(t *testing.T) {
	c, err := Load("testdata/redis_sentinel_password.toml")
	if err != nil {
		t.Fatal(err)
	}
	r := c.Targets[0].Redis
	if got, want := fmt.Sprintf("%s %s %s", r.Mode, r.Username, r.SentinelUsername), "sentinel invalidator watcher"; got != want {
		t.Errorf("Redis = %s, want %s", got, want)
	}
	os.Unsetenv("PGINV_TEST_SENTINEL_PASSWORD")
	t.Setenv("PGINV_TEST_REDIS_PASSWORD", "data-pw")
	err = c.ReadPasswords()
	if got, want := fmt.Sprint(err), "testdata/redis_sentinel_password.toml:7: redis sentinel_password_env PGINV_TEST_SENTINEL_PASSWORD: the environment variable is not set\n"+
		"testdata/redis_sentinel_password.toml:16: target eu sentinel_password_file testdata/no-such-sentinel-password: no such file or directory"; got != want {
		t.Errorf("unset:\ngot  %s\nwant %s", got, want)
	}
	t.Setenv("PGINV_TEST_SENTINEL_PASSWORD", "sentinel-pw")
	file := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(file, []byte("eu-sentinel-pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.sentinelPasswords[1].file = file
	if err := c.ReadPasswords(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tg := range c.Targets {
		got = append(got, tg.Name+"="+tg.Redis.Password+","+tg.Redis.SentinelPassword)
	}
	if want := []string{"default=data-pw,sentinel-pw", "eu=,eu-sentinel-pw"}; !reflect.DeepEqual(got, want) {
		t.Errorf("passwords = %q, want %q", got, want)
	}
}

func TestTargets(t *testing.T) {
	tests := []struct {
		file        string
		want        []string // name url mode addrs wait_replicas password_env
		withDefault bool     // Default() is the first target
	}{
		{"targets.toml", []string{
			"default redis://127.0.0.1:6379/0  [] 0 ",
			"eu redis://eu-cache:6379/0  [] 0 PGINV_TEST_EU_PASSWORD",
			"us  cluster [us-cache-1:7000 us-cache-2:7000] 1 ",
		}, true},
		{"targets_only.toml", []string{"eu redis://eu-cache:6379/0  [] 0 "}, false},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			c, err := Load("testdata/" + tt.file)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for i, tg := range c.Targets {
				r := tg.Redis
				got = append(got, fmt.Sprintf("%s %s %s %v %d %s", tg.Name, r.URL, r.Mode, r.Addrs, r.WaitReplicas, c.passwords[i].env))
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Targets =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if def := c.Default(); (def == &c.Targets[0]) != tt.withDefault {
				t.Errorf("Default() = %+v, want the first target: %v", def, tt.withDefault)
			}
		})
	}
	// Without [redis] nor [[target]], the one target is the default, for
	// --redis and REDIS_URL to complete.
	c, err := Parse("rules.toml", []byte("[[rule]]\ntable = \"t\"\ndel = [\"k\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Targets; len(got) != 1 || got[0].Name != daemon.DefaultTarget || got[0].Redis.URL != "" || c.Default() != &c.Targets[0] {
		t.Errorf("Targets without [redis] = %+v, want the default target alone", got)
	}
}

func TestTargetPasswords(t *testing.T) {
	c, err := Load("testdata/targets.toml")
	if err != nil {
		t.Fatal(err)
	}
	os.Unsetenv("PGINV_TEST_EU_PASSWORD")
	err = c.ReadPasswords()
	if got, want := fmt.Sprint(err), "testdata/targets.toml:7: target eu password_env PGINV_TEST_EU_PASSWORD: the environment variable is not set"; got != want {
		t.Errorf("ReadPasswords() error = %q, want %q", got, want)
	}
	t.Setenv("PGINV_TEST_EU_PASSWORD", "s3cret")
	if err := c.ReadPasswords(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tg := range c.Targets {
		got = append(got, tg.Name+"="+tg.Redis.Password)
	}
	if want := []string{"default=", "eu=s3cret", "us="}; !reflect.DeepEqual(got, want) {
		t.Errorf("passwords = %q, want %q", got, want)
	}
}

// BenchmarkParse measures reading a whole rules file: the TOML parse, the
// line index, and the checks of every table.
func BenchmarkParse(b *testing.B) {
	for _, name := range []string{"../rules.toml", "testdata/good.toml"} {
		data, err := os.ReadFile(name)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(filepath.Base(name), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Parse(name, data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
