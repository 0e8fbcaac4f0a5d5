package localsvc

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// StandbyOptions tunes StartStandby.
type StandbyOptions struct {
	// Name is the standby's application_name in the primary's
	// pg_stat_replication. Empty: "standby".
	Name string
	// Settings are extra "name=value" server settings, passed as -c flags:
	// "recovery_min_apply_delay=2s" makes it replay late on purpose.
	Settings []string
}

// StartStandby makes a streaming standby of primary: pg_basebackup -R
// (run as the server's OS user) into a new temporary directory, with
// application_name set in primary_conninfo, then starts it on a free port
// as a hot standby. It returns once the standby accepts connections; it
// may not be streaming yet.
func StartStandby(ctx context.Context, primary *Postgres, opts StandbyOptions) (*Postgres, error) {
	if opts.Name == "" {
		opts.Name = "standby"
	}
	dir, err := primary.user.makeDir("pginv-standby-")
	if err != nil {
		return nil, fmt.Errorf("make the standby directory: %w", err)
	}
	port, err := FreePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	data := filepath.Join(dir, "data")
	conninfo := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres application_name=%s", primary.Port, opts.Name)
	backup := primary.user.command(filepath.Join(primary.binDir, "pg_basebackup"),
		"-D", data, "-R", "-X", "stream", "-c", "fast", "--no-sync", "-d", conninfo)
	if out, err := backup.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pg_basebackup: %w: %s", err, bytes.TrimSpace(out))
	}
	// -R wrote primary_conninfo from the connection it used; name the
	// standby explicitly, a later line wins.
	auto := filepath.Join(data, "postgresql.auto.conf")
	old, err := os.ReadFile(auto)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	line := fmt.Sprintf("primary_conninfo = '%s'\n", conninfo)
	if err := primary.user.writeFile(auto, append(old, line...), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s := &Postgres{Port: port, Dir: dir, binDir: primary.binDir, user: primary.user,
		options: append([]string{"hot_standby=on"}, opts.Settings...)}
	if err := s.Start(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// Restart stops the server and starts it again on the same data, port and
// settings, with settings added (a later one wins over an earlier one of
// the same name).
func (p *Postgres) Restart(ctx context.Context, settings ...string) error {
	if err := p.Stop(); err != nil {
		return err
	}
	p.options = append(p.options, settings...)
	return p.Start(ctx)
}
