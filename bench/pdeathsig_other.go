//go:build !linux

package main

import "os/exec"

// dieWithBench does nothing: only Linux has a parent-death signal. The
// bench measures Linux (/proc, perf, nstat); elsewhere it only compiles.
func dieWithBench(*exec.Cmd) {}
