package localsvc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Redis is a private redis-server that keeps nothing on disk.
type Redis struct {
	Port int
	Dir  string
	bin  string

	mu   sync.Mutex // protects cmd and done
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// StartRedis starts redis-server on a free port and waits until it answers PING.
func StartRedis(ctx context.Context) (*Redis, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("redis-server not found on PATH; " + InstallHint)
	}
	dir, err := os.MkdirTemp("", "pginv-redis-")
	if err != nil {
		return nil, fmt.Errorf("make the Redis directory: %w", err)
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	r := &Redis{Port: port, Dir: dir, bin: bin}
	if err := r.Start(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return r, nil
}

// URL returns the redis:// URL of database 0.
func (r *Redis) URL() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", r.Port) }

// Addr returns host:port.
func (r *Redis) Addr() string { return "127.0.0.1:" + strconv.Itoa(r.Port) }

// Start starts the server on its port, again after Stop.
func (r *Redis) Start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		return errors.New("redis is already running")
	}
	cmd := exec.Command(r.bin,
		"--port", strconv.Itoa(r.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.Dir,
		"--logfile", filepath.Join(r.Dir, "redis.log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	r.cmd, r.done = cmd, done

	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := ping(r.Addr()); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("redis-server did not answer PING within 30s: %w", err)
		}
		select {
		case <-done:
			r.cmd, r.done = nil, nil
			b, _ := os.ReadFile(filepath.Join(r.Dir, "redis.log"))
			return fmt.Errorf("redis-server exited at start: %s", b)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("unexpected PING reply %q", line)
	}
	return nil
}

// Stop kills the server and waits for it to exit. Redis keeps nothing on
// disk here, so a later Start begins empty.
func (r *Redis) Stop() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return nil
	}
	r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
	r.cmd, r.done = nil, nil
	return nil
}

// StopSave shuts the server down with SHUTDOWN SAVE, so that the next Start
// loads the same keys from its dump file, like a restart of a persistent
// Redis.
func (r *Redis) StopSave() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return nil
	}
	if c, err := net.DialTimeout("tcp", r.Addr(), time.Second); err == nil {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte("SHUTDOWN SAVE\r\n"))
		bufio.NewReader(c).ReadString('\n') // the server closes the connection
		c.Close()
	}
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		r.cmd.Process.Signal(syscall.SIGKILL)
		<-r.done
	}
	r.cmd, r.done = nil, nil
	return nil
}

// Close stops the server and removes its directory.
func (r *Redis) Close() error {
	err := r.Stop()
	os.RemoveAll(r.Dir)
	return err
}
