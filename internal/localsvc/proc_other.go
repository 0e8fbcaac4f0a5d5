//go:build !unix

package localsvc

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
)

// setProcAttr does nothing: there are no process groups or credentials to
// set here, and the servers run as the current user.
func setProcAttr(*exec.Cmd, serviceUser) {}

// signalGroup kills p. Nothing but a kill can be sent to another process
// here, so a fast shutdown is a kill too.
func signalGroup(p *os.Process, _ syscall.Signal) error {
	return p.Kill()
}

// groupAlive reports false: there is no group to wait for.
func groupAlive(*os.Process) bool { return false }

// pause cannot stop a process here.
func pause(*os.Process) error { return errors.New("cannot pause a process on this system") }

// resume cannot continue one either.
func resume(*os.Process) error { return errors.New("cannot resume a process on this system") }

// lockByte does nothing, and claims succeed: ports are claimed within a
// process only.
func lockByte(*os.File, int64) bool { return true }
