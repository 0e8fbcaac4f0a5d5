//go:build unix && !linux

package localsvc

import "syscall"

// dieWithParent does nothing: only Linux has a parent-death signal that Go
// sets for every Unix. A caller that is killed with SIGKILL leaves its
// servers running; one that is interrupted stops them.
func dieWithParent(*syscall.SysProcAttr) {}
