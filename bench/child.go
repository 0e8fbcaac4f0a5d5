package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// child is a contender running as its own process, so that its CPU time and
// peak memory are its own.
type child struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	err     error         // Wait's result, set before done is closed
}

// startChild starts name with args; stdout and stderr go to logPath.
func startChild(name, logPath string, args ...string) (*child, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	dieWithBench(cmd)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		logf.Close()
		close(c.done)
	}()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to 10 s, then kills.
func (c *child) stop() {
	if c.exited() {
		return
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
}

// cpu returns the user + system time of an exited child.
func (c *child) cpu() float64 {
	if c.cmd.ProcessState == nil {
		return 0
	}
	return (c.cmd.ProcessState.UserTime() + c.cmd.ProcessState.SystemTime()).Seconds()
}

// tail returns the end of the child's output, for error messages.
func (c *child) tail() string {
	b, _ := os.ReadFile(c.logPath)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(bytes.TrimSpace(b))
}

// failure describes an early exit.
func (c *child) failure() error {
	return fmt.Errorf("%s exited early (%v); its output ends with:\n%s", c.name, c.err, c.tail())
}

// startPerf starts "perf record" on the whole machine, with call graphs,
// writing to dir/name.data (name is a slot name, safe in a file name); the returned function stops it and waits for
// the file. Without -perf it does nothing.
func (e *env) startPerf(name string) (stop func(), err error) {
	if e.o.perfDir == "" {
		return func() {}, nil
	}
	if err := os.MkdirAll(e.o.perfDir, 0o755); err != nil {
		return nil, err
	}
	out := filepath.Join(e.o.perfDir, name+".data")
	c, err := startChild("perf", out+".log", "record", "-a", "-g", "-F", "999", "-o", out)
	if err != nil {
		return nil, fmt.Errorf("-perf needs perf(1): %w", err)
	}
	time.Sleep(200 * time.Millisecond) // perf is recording once its buffers are mapped
	return func() {
		c.cmd.Process.Signal(syscall.SIGINT)
		<-c.done
		e.step("perf: %s (perf report -i %s --sort comm,pid,dso,sym)", out, out)
	}, nil
}
