package localsvc

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// shmID returns the System V shared memory ID the running server recorded on
// the seventh line of postmaster.pid ("key id"), or -1.
func (p *Postgres) shmID() int {
	b, err := os.ReadFile(filepath.Join(p.Dir, "data", "postmaster.pid"))
	if err != nil {
		return -1
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 7 {
		return -1
	}
	fields := strings.Fields(lines[6])
	if len(fields) != 2 {
		return -1
	}
	id, err := strconv.Atoi(fields[1])
	if err != nil {
		return -1
	}
	return id
}

// waitShmDetached waits, up to timeout, until no process is attached to the
// shared memory segment id. PostgreSQL refuses to start on a data directory
// whose old segment is still in use ("pre-existing shared memory block ... is
// still in use"), and after the postmaster is killed its backends, each in a
// session of its own, exit only once they notice.
func waitShmDetached(id int, timeout time.Duration) {
	if id < 0 {
		return
	}
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline) && shmAttached(id); {
		time.Sleep(10 * time.Millisecond)
	}
}

// shmAttached reads nattch for segment id from /proc/sysvipc/shm. A segment
// that is gone, or a system without the file, counts as detached.
func shmAttached(id int) bool {
	f, err := os.Open("/proc/sysvipc/shm")
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	if !s.Scan() {
		return false
	}
	header := strings.Fields(s.Text())
	idCol, nattchCol := -1, -1
	for i, h := range header {
		switch h {
		case "shmid":
			idCol = i
		case "nattch":
			nattchCol = i
		}
	}
	if idCol < 0 || nattchCol < 0 {
		return false
	}
	want := strconv.Itoa(id)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) > max(idCol, nattchCol) && fields[idCol] == want {
			return fields[nattchCol] != "0"
		}
	}
	return false
}
