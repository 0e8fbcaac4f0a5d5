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
//
// It builds on every system Go does. On Unix a server runs in a process group
// of its own, so that Ctrl-C in a terminal reaches only the caller, which
// stops its servers; on Linux a server also dies with the process that started
// it, however that process ends. Elsewhere (macOS, the BSDs) a server outlives
// a caller killed with SIGKILL. On Windows there are no process groups: Stop
// is a kill, as Kill is.
package localsvc

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// InstallHint says how to get the binaries this package needs on this system.
var InstallHint = installHint(runtime.GOOS)

func installHint(goos string) string {
	switch goos {
	case "linux":
		return "install them with: apt-get install -y postgresql redis-server"
	case "darwin":
		return "install them with: brew install postgresql@16 redis"
	case "windows":
		return "install PostgreSQL with the EDB installer (https://www.postgresql.org/download/windows/) " +
			"and put a redis-server.exe on PATH"
	}
	return "install the PostgreSQL server (initdb, postgres) and redis-server, and put them on PATH"
}

// FreePort returns a TCP port on 127.0.0.1 that nothing listens on right now.
// It picks one below the kernel's ephemeral range: a port from that range,
// which is what the kernel hands out for port 0, can be taken by any
// outgoing connection between this check and the server's own bind (a test
// once failed so, with "Address already in use"). It never returns a port
// twice, nor one that a FreePort in another process on this machine
// returned, while that process runs (see claimPort): a cluster picks twelve
// ports before its first node binds, and test packages run side by side.
func FreePort() (int, error) {
	const lowest = 10000
	top := ephemeralLow()
	for range 100 {
		port := lowest + rand.IntN(top-lowest)
		if !claimPort(port) {
			continue // handed out already
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue // taken
		}
		l.Close()
		return port, nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

var (
	portsMu sync.Mutex
	// portsClaimed are the ports FreePort picked in this process.
	portsClaimed = make(map[int]bool)
	// portsFile holds, as a lock on the byte at each port's offset, the
	// claims of every process on this machine; nil until the first claim,
	// and kept open, since closing it would drop this process's locks.
	portsFile *os.File
)

// claimPort claims port for this process, unless this process or another
// claimed it before. Another process's claims end with it: they are POSIX
// record locks on one file in the temporary directory, which the kernel
// drops when the process exits, however it exits. Where the file cannot be
// opened or locked, claims hold within this process only.
func claimPort(port int) bool {
	portsMu.Lock()
	defer portsMu.Unlock()
	if portsClaimed[port] {
		return false
	}
	if portsFile == nil {
		f, err := os.OpenFile(filepath.Join(os.TempDir(), "pg-invalidator-test-ports.lock"), os.O_CREATE|os.O_RDWR, 0o666)
		if err == nil {
			portsFile = f
		}
	}
	if portsFile != nil && !lockByte(portsFile, int64(port)) {
		return false
	}
	portsClaimed[port] = true
	return true
}

// ephemeralLow returns the first port of the range the kernel hands out to
// outgoing connections: Linux's ip_local_port_range, else 32768 (Linux's
// default; macOS and Windows start higher still).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 11000 {
				return n
			}
		}
	}
	return 32768
}

// PostgresBinDir finds the newest PostgreSQL server bin directory that holds
// initdb where this system's packages put it (/usr/lib/postgresql/*/bin on
// Debian and Ubuntu; Homebrew and Postgres.app on macOS; C:\Program
// Files\PostgreSQL\*\bin on Windows), or else the directory of an initdb on
// PATH.
func PostgresBinDir() (string, error) {
	var dirs []string
	for _, pattern := range postgresBinGlobs(runtime.GOOS) {
		found, _ := filepath.Glob(pattern)
		dirs = append(dirs, found...)
	}
	sort.SliceStable(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	initdb := "initdb"
	if runtime.GOOS == "windows" {
		initdb = "initdb.exe"
	}
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, initdb)); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", fmt.Errorf("no PostgreSQL server binaries (initdb, postgres) found in %s or on PATH; %s",
		strings.Join(postgresBinGlobs(runtime.GOOS), ", "), InstallHint)
}

// postgresBinGlobs are where goos's packages install PostgreSQL's server
// binaries, one directory per major version.
func postgresBinGlobs(goos string) []string {
	switch goos {
	case "darwin":
		return []string{
			"/opt/homebrew/opt/postgresql@*/bin", // Homebrew on Apple silicon
			"/usr/local/opt/postgresql@*/bin",    // Homebrew on Intel
			"/Applications/Postgres.app/Contents/Versions/*/bin",
		}
	case "windows":
		return []string{`C:\Program Files\PostgreSQL\*\bin`}
	}
	return []string{"/usr/lib/postgresql/*/bin"}
}

// versionOf reads the major version from the name of binDir's parent:
// "15", "postgresql@16". It returns 0 when there is none.
func versionOf(binDir string) int {
	name := filepath.Base(filepath.Dir(binDir))
	if i := strings.LastIndexByte(name, '@'); i >= 0 {
		name = name[i+1:]
	}
	v, _ := strconv.Atoi(name)
	return v
}

// serviceUser says which OS user the servers run as: the current one, or
// "postgres" when the current user is root.
type serviceUser struct {
	other    bool // run as uid and gid; false: as the current user
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
	return serviceUser{other: true, uid: uid, gid: gid}, nil
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
	if u.other {
		if err := os.Chown(dir, u.uid, u.gid); err != nil {
			return "", err
		}
	}
	return dir, nil
}

func (u serviceUser) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	setProcAttr(cmd, u)
	return cmd
}
