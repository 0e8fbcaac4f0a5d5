//go:build unix

package localsvc

import (
	"os"
	"os/exec"
	"syscall"
)

// setProcAttr starts cmd in a process group of its own, so that a signal to
// the caller's group (Ctrl-C in a terminal) does not reach it, as u, and on
// Linux with the promise to die with the process that started it.
func setProcAttr(cmd *exec.Cmd, u serviceUser) {
	attr := &syscall.SysProcAttr{Setpgid: true}
	if u.other {
		attr.Credential = &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid)}
	}
	dieWithParent(attr)
	cmd.SysProcAttr = attr
}

// signalGroup sends sig to the process group p leads.
func signalGroup(p *os.Process, sig syscall.Signal) error {
	return syscall.Kill(-p.Pid, sig)
}

// groupAlive reports whether any process of the group p led is left.
func groupAlive(p *os.Process) bool {
	return syscall.Kill(-p.Pid, 0) == nil
}
