package localsvc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Postgres is a private PostgreSQL server with wal_level=logical.
type Postgres struct {
	Port    int
	Dir     string // holds data/, the socket and the log
	binDir  string
	user    serviceUser
	options []string
	tls     bool // TCP connections need TLS (hostssl)

	mu   sync.Mutex // protects cmd and done
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// PostgresOptions tunes StartPostgres. The zero value is fine.
type PostgresOptions struct {
	// Settings are extra "name=value" server settings, passed as -c flags.
	Settings []string
	// TLS, when not nil, turns ssl on and makes TCP connections require it.
	TLS *PostgresTLS
}

// StartPostgres runs initdb in a new temporary directory and starts the server
// on a free port. It returns once the server accepts connections.
func StartPostgres(ctx context.Context, opts PostgresOptions) (*Postgres, error) {
	binDir, err := PostgresBinDir()
	if err != nil {
		return nil, err
	}
	user, err := lookupServiceUser()
	if err != nil {
		return nil, err
	}
	dir, err := user.makeDir("pginv-pg-")
	if err != nil {
		return nil, fmt.Errorf("make the PostgreSQL directory: %w", err)
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	p := &Postgres{Port: port, Dir: dir, binDir: binDir, user: user, options: opts.Settings}

	initdb := user.command(filepath.Join(binDir, "initdb"),
		"-A", "trust", "-U", "postgres", "--no-sync", "--locale=C", "-E", "UTF8",
		"-D", filepath.Join(dir, "data"))
	if out, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %w: %s", err, bytes.TrimSpace(out))
	}
	if opts.TLS != nil {
		settings, err := p.setupTLS(opts.TLS)
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		p.options = append(settings, p.options...)
		p.tls = true
	}
	if err := p.Start(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return p, nil
}

// URL returns a connection URL for the "postgres" superuser and database.
// With TLS it says sslmode=require; add sslrootcert (and sslcert and sslkey
// when client certificates are required) to verify the server.
func (p *Postgres) URL() string {
	mode := "disable"
	if p.tls {
		mode = "require"
	}
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=%s", p.Port, mode)
}

// UnixURL returns the URL of database postgres over the server's Unix
// socket, which sits in its directory.
func (p *Postgres) UnixURL() string {
	return fmt.Sprintf("postgres://postgres@/postgres?host=%s&port=%d&sslmode=disable", p.Dir, p.Port)
}

// Start starts the server on its data directory and waits until it accepts
// connections. It is used again after Stop or Kill.
func (p *Postgres) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return errors.New("postgres is already running")
	}
	args := []string{
		"-D", filepath.Join(p.Dir, "data"),
		"-c", "port=" + strconv.Itoa(p.Port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=" + p.Dir,
		"-c", "wal_level=logical",
		"-c", "max_replication_slots=64",
		"-c", "max_wal_senders=64",
		"-c", "max_connections=200",
		"-c", "fsync=off",
		"-c", "full_page_writes=off",
		"-c", "synchronous_commit=on",
	}
	for _, s := range p.options {
		args = append(args, "-c", s)
	}
	cmd := p.user.command(filepath.Join(p.binDir, "postgres"), args...)
	logf, err := os.OpenFile(filepath.Join(p.Dir, "postgres.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("open the postgres log: %w", err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start postgres: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	p.cmd, p.done = cmd, done

	deadline := time.Now().Add(60 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgconn.Connect(cctx, p.readyURL())
		cancel()
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		select {
		case <-done:
			p.cmd, p.done = nil, nil
			return fmt.Errorf("postgres exited at start; its log %s says: %s", filepath.Join(p.Dir, "postgres.log"), p.logTail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres did not accept connections within 60s: %w", err)
		}
	}
}

// Stop shuts the server down with a fast shutdown and waits for it to exit.
func (p *Postgres) Stop() error {
	_, err := p.StopWithin(60 * time.Second)
	return err
}

// StopWithin shuts the server down with a fast shutdown, and with an
// immediate shutdown (SIGQUIT, as pg_ctl stop -m immediate) if it has not
// exited within d. fast is false when it came to that: something held the
// fast shutdown, such as a walsender waiting for its client to confirm it
// flushed everything sent.
func (p *Postgres) StopWithin(d time.Duration) (fast bool, err error) {
	return p.signal(syscall.SIGINT, d)
}

// Kill kills the server's postmaster with SIGKILL, as a crash would.
func (p *Postgres) Kill() error {
	_, err := p.signal(syscall.SIGKILL, 60*time.Second)
	return err
}

// signal sends sig to the postmaster's process group and waits up to d for
// it to exit; then it shuts the server down immediately (SIGQUIT, which the
// postmaster passes on to every backend), and after 10 s more kills the
// group. first is false when sig alone did not end it.
func (p *Postgres) signal(sig syscall.Signal, d time.Duration) (first bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return true, nil
	}
	shm := p.shmID()
	// Signal the postmaster's process group. Backends are not in it (each
	// calls setsid), so after a SIGKILL they are waited for below.
	signalGroup(p.cmd.Process, sig)
	first = true
	select {
	case <-p.done:
	case <-time.After(d):
		first = false
		signalGroup(p.cmd.Process, syscall.SIGQUIT)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			signalGroup(p.cmd.Process, syscall.SIGKILL)
			<-p.done
		}
	}
	// Backends die after the postmaster; a new server cannot start while
	// one of them still holds the old shared memory.
	for i := 0; i < 1000 && groupAlive(p.cmd.Process); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	waitShmDetached(shm, 10*time.Second)
	p.cmd, p.done = nil, nil
	return first, nil
}

// Close stops the server and removes its directory.
func (p *Postgres) Close() error {
	err := p.Stop()
	os.RemoveAll(p.Dir)
	return err
}

func (p *Postgres) logTail() string {
	b, _ := os.ReadFile(filepath.Join(p.Dir, "postgres.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(bytes.TrimSpace(b))
}
