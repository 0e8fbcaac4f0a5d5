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

// pause stops p, as a frozen host would.
func pause(p *os.Process) error { return p.Signal(syscall.SIGSTOP) }

// resume continues p after pause.
func resume(p *os.Process) error { return p.Signal(syscall.SIGCONT) }

// lockByte takes a write lock on the byte at off in f for this process,
// without waiting; false when another process holds it.
func lockByte(f *os.File, off int64) bool {
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0, Start: off, Len: 1}
	return syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, &lk) == nil
}
