package localsvc

import "syscall"

// dieWithParent has the kernel kill the server when the thread that started
// it exits, so that no server outlives a test binary that dies.
func dieWithParent(attr *syscall.SysProcAttr) {
	attr.Pdeathsig = syscall.SIGKILL
}
