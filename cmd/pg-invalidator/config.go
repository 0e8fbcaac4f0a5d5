package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/pg-invalidator/pg-invalidator/config"
	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
)

// commonFlags are the flags run and check share.
type commonFlags struct {
	config    string
	postgres  string
	primary   string
	redis     string
	logLevel  string
	logFormat string
}

func (c *commonFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.config, "config", "rules.toml", "rules file")
	fs.StringVar(&c.postgres, "postgres", "", "PostgreSQL URL (default: $DATABASE_URL, then [postgres] url in the rules file)")
	fs.StringVar(&c.primary, "primary", "", "with --postgres naming a hot standby to decode on, the primary's URL, where heartbeats, canaries and the publication are written (default: $PRIMARY_DATABASE_URL, then [postgres] primary_url in the rules file)")
	fs.StringVar(&c.redis, "redis", "", "Redis URL (default: $REDIS_URL, then [redis] url in the rules file)")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
}

// daemonConfig loads the rules file and resolves each URL: the flag, then
// the environment, then the file. check needs no Redis URL. In [redis] mode
// cluster or sentinel, Redis is reached through addrs, and no Redis URL is
// used. Redis passwords are read (password_env or password_file) only when
// Redis is needed. --redis and REDIS_URL are for [redis] only: each
// [[target]] gives its own url, and a file with [[target]] tables and no
// [redis] table has no use for them.
func (c *commonFlags) daemonConfig(logger *slog.Logger, needRedis bool) (daemon.Config, error) {
	f, err := loadFile(c.config)
	if err != nil {
		return daemon.Config{}, err
	}
	cfg := daemon.Config{
		Rules:             f.Rules,
		PostgresURL:       firstOf(c.postgres, os.Getenv("DATABASE_URL"), f.Postgres.URL),
		PrimaryURL:        firstOf(c.primary, os.Getenv("PRIMARY_DATABASE_URL"), f.Postgres.PrimaryURL),
		Slot:              f.Postgres.Slot,
		Publication:       f.Postgres.Publication,
		Heartbeat:         f.Postgres.Heartbeat,
		Timeout:           f.Postgres.Timeout,
		Replicas:          f.Postgres.Replicas,
		ReplicaTimeout:    f.Postgres.ReplicaTimeout,
		Visibility:        f.Postgres.Visibility,
		VisibilityTimeout: f.Postgres.VisibilityTimeout,
		NoStreaming:       f.Postgres.NoStreaming,
		DecodingWorkMem:   f.Postgres.DecodingWorkMem,
		NoFailoverSlot:    f.Postgres.NoFailoverSlot,
		CanaryKey:         f.Postgres.CanaryKey,
		NoCanary:          f.Postgres.CanaryKey == "",
		Resync:            f.Recovery.OnSlotLost == config.OnSlotLostResync,
		Logger:            logger,
	}
	if cfg.PostgresURL == "" {
		return cfg, fmt.Errorf("no PostgreSQL URL: pass --postgres, set DATABASE_URL, or set url in the [postgres] table of %s", c.config)
	}
	switch def := f.Default(); {
	case def == nil: // REDIS_URL does not apply either
		if c.redis != "" {
			return cfg, fmt.Errorf("--redis: %s has [[target]] tables and no [redis] table; give each target its url in the file, or add a [redis] table", c.config)
		}
	case def.Redis.Mode != "" && def.Redis.Mode != invalidator.ModeSingle: // REDIS_URL does not apply either
		if c.redis != "" {
			return cfg, fmt.Errorf("--redis: [redis] mode %q in %s reaches Redis through addrs, not a URL; remove the flag", def.Redis.Mode, c.config)
		}
	default:
		def.Redis.URL = firstOf(c.redis, os.Getenv("REDIS_URL"), def.Redis.URL)
		if def.Redis.URL == "" && needRedis {
			return cfg, fmt.Errorf("no Redis URL: pass --redis, set REDIS_URL, or set url in the [redis] table of %s", c.config)
		}
	}
	if needRedis {
		if err := f.ReadPasswords(); err != nil {
			return cfg, configError(err)
		}
	}
	cfg.Targets = f.Targets
	return cfg, nil
}

// loadFile reads the rules file. Its problems come back as a
// *daemon.ConfigError, which Main prints one per line.
func loadFile(path string) (*config.File, error) {
	f, err := config.Load(path)
	if err != nil {
		return nil, configError(err)
	}
	return f, nil
}

// configError turns the problems of a rules file into a *daemon.ConfigError
// and returns any other error as it is.
func configError(err error) error {
	var problems config.Errors
	if errors.As(err, &problems) {
		return &daemon.ConfigError{Problems: problems}
	}
	return err
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
