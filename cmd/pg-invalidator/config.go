package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
	"github.com/pg-invalidator/pg-invalidator/mapping"
)

// commonFlags are the flags run and check share.
type commonFlags struct {
	config    string
	postgres  string
	redis     string
	logLevel  string
	logFormat string
}

func (c *commonFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.config, "config", "rules.toml", "rules file")
	fs.StringVar(&c.postgres, "postgres", "", "PostgreSQL URL (default: $DATABASE_URL, then [postgres] url in the rules file)")
	fs.StringVar(&c.redis, "redis", "", "Redis URL (default: $REDIS_URL, then [redis] url in the rules file)")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
}

// daemonConfig loads the rules file and resolves each URL: the flag, then
// the environment, then the file. check needs no Redis URL. In [redis] mode
// cluster or sentinel, Redis is reached through addrs, and no Redis URL is
// used. The Redis password is read (password_env or password_file) only
// when Redis is needed. --redis and REDIS_URL are for [redis] only: each
// [[target]] gives its own url, and a file with [[target]] tables and no
// [redis] table has no use for them.
func (c *commonFlags) daemonConfig(logger *slog.Logger, needRedis bool) (daemon.Config, error) {
	rules, err := mapping.Load(c.config)
	if err != nil {
		var problems mapping.Errors
		if errors.As(err, &problems) {
			return daemon.Config{}, &daemon.ConfigError{Problems: problems}
		}
		return daemon.Config{}, err
	}
	cfg := daemon.Config{
		Rules:       rules,
		PostgresURL: firstOf(c.postgres, os.Getenv("DATABASE_URL"), rules.Postgres.URL),
		RedisURL:    firstOf(c.redis, os.Getenv("REDIS_URL"), rules.Redis.URL),
		Slot:        rules.Postgres.Slot,
		Publication: rules.Postgres.Publication,
		Heartbeat:   rules.Postgres.Heartbeat,
		Resync:      rules.Recovery.OnSlotLost == mapping.OnSlotLostResync,
		Logger:      logger,
	}
	if cfg.PostgresURL == "" {
		return cfg, fmt.Errorf("no PostgreSQL URL: pass --postgres, set DATABASE_URL, or set url in the [postgres] table of %s", c.config)
	}
	all := rules.Targets()
	hasDefault := len(all) > len(rules.TargetTables) // [redis] is a target
	r := rules.Redis
	single := r.Mode == "" || r.Mode == mapping.RedisSingle
	if !hasDefault {
		if c.redis != "" {
			return cfg, fmt.Errorf("--redis: %s has [[target]] tables and no [redis] table; give each target its url in the file, or add a [redis] table", c.config)
		}
		cfg.RedisURL = "" // REDIS_URL does not apply either
	} else if !single {
		if c.redis != "" {
			return cfg, fmt.Errorf("--redis: [redis] mode %q in %s reaches Redis through addrs, not a URL; remove the flag", r.Mode, c.config)
		}
		cfg.RedisURL = "" // REDIS_URL does not apply either
	}
	if cfg.RedisURL == "" && single && hasDefault && needRedis {
		return cfg, fmt.Errorf("no Redis URL: pass --redis, set REDIS_URL, or set url in the [redis] table of %s", c.config)
	}
	cfg.Redis = redisOptions(r)
	if needRedis && hasDefault {
		if cfg.Redis.Password, err = rules.RedisPassword(); err != nil {
			return cfg, &daemon.ConfigError{Problems: []error{err}}
		}
	}
	if len(rules.TargetTables) == 0 {
		return cfg, nil
	}
	var problems []error
	for _, t := range all {
		opts := redisOptions(t.Redis)
		if t.Name == mapping.DefaultTarget && hasDefault {
			opts = cfg.Redis
			opts.URL = cfg.RedisURL
		} else if needRedis {
			if opts.Password, err = rules.TargetPassword(t); err != nil {
				problems = append(problems, err)
			}
		}
		cfg.Targets = append(cfg.Targets, daemon.Target{Name: t.Name, Redis: opts})
	}
	if len(problems) > 0 {
		return cfg, &daemon.ConfigError{Problems: problems}
	}
	return cfg, nil
}

// redisOptions turns a [redis] table or a [[target]] into invalidator
// options, without the password, which is read only when Redis is needed.
func redisOptions(r mapping.RedisConfig) invalidator.Options {
	return invalidator.Options{
		URL: r.URL, Mode: r.Mode, Addrs: r.Addrs, MasterName: r.Master, Username: r.Username,
		TLS: r.TLS, TLSCA: r.TLSCA, TLSCert: r.TLSCert, TLSKey: r.TLSKey, TLSServerName: r.TLSServerName,
		WaitReplicas: r.WaitReplicas,
	}
}

func firstOf(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}

// newLogger builds the daemon's logger and routes go-redis's own log lines
// through it.
func (c *commonFlags) newLogger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", c.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch strings.ToLower(c.logFormat) {
	case "text":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", c.logFormat)
	}
	l := slog.New(h)
	invalidator.SetLogger(l)
	return l, nil
}
