package main

import (
	"os/exec"
	"syscall"
)

// dieWithBench has the kernel kill cmd when the bench dies, so that no
// contender outlives an interrupted run.
func dieWithBench(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
