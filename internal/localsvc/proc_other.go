//go:build !unix

package localsvc

import (
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
