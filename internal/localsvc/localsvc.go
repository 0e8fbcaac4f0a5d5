// Package localsvc starts throwaway PostgreSQL and Redis servers from the
// binaries installed on this machine, on free loopback ports, in a temporary
// directory. The demo and the tests share it.
//
// PostgreSQL always runs with wal_level=logical. PostgreSQL refuses to run as
// root, so when the caller is root the server runs as the "postgres" OS user
// on directories that user owns.
//
// Every server runs in the foreground as a child process, so that a test can
// stop it, kill it with SIGKILL, and start it again on the same port and data.
package localsvc

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
)

// InstallHint says how to get the binaries this package needs.
const InstallHint = "install them with: apt-get install -y postgresql redis-server " +
	"(or set DATABASE_URL and REDIS_URL to servers you run yourself; PostgreSQL needs wal_level=logical)"

// FreePort returns a TCP port on 127.0.0.1 that nothing listens on right now.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// PostgresBinDir finds the newest /usr/lib/postgresql/*/bin that holds initdb,
// or the directory of an initdb on PATH.
func PostgresBinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("no PostgreSQL server binaries (initdb, postgres) found in /usr/lib/postgresql/*/bin or on PATH; " + InstallHint)
}

func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// serviceUser says which OS user the servers run as: the current one, or
// "postgres" when the current user is root.
type serviceUser struct {
	cred     *syscall.Credential // nil: run as the current user
	uid, gid int
}

func lookupServiceUser() (serviceUser, error) {
	if os.Geteuid() != 0 {
		return serviceUser{uid: os.Getuid(), gid: os.Getgid()}, nil
	}
	out, err := exec.Command("id", "-u", "postgres").Output()
	if err != nil {
		return serviceUser{}, errors.New("running as root, and PostgreSQL refuses to run as root, but there is no \"postgres\" OS user to run it as; " + InstallHint)
	}
	uid, _ := strconv.Atoi(string(trimNL(out)))
	out, err = exec.Command("id", "-g", "postgres").Output()
	if err != nil {
		return serviceUser{}, fmt.Errorf("look up the postgres group: %w", err)
	}
	gid, _ := strconv.Atoi(string(trimNL(out)))
	return serviceUser{cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, uid: uid, gid: gid}, nil
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// makeDir creates a temporary directory the service user owns and can enter.
func (u serviceUser) makeDir(pattern string) (string, error) {
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	if u.cred != nil {
		if err := os.Chown(dir, u.uid, u.gid); err != nil {
			return "", err
		}
	}
	return dir, nil
}

func (u serviceUser) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: u.cred,
		Setpgid:    true,            // a signal to the test's group does not reach it
		Pdeathsig:  syscall.SIGKILL, // nor does it outlive a test binary that dies
	}
	return cmd
}
