package localsvc

import (
	"bufio"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// TestFreePortNeverTwice: a cluster picks all its ports before its first
// node binds one, so FreePort must not hand out a port twice.
func TestFreePortNeverTwice(t *testing.T) {
	seen := make(map[int]bool)
	for range 500 {
		p, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("FreePort returned %d twice", p)
		}
		seen[p] = true
	}
}

// TestFreePortClaimedByAnotherProcess: a port that a FreePort in another
// process claimed is not claimed here while that process runs, and is once
// it has exited.
func TestFreePortClaimedByAnotherProcess(t *testing.T) {
	if os.Getenv("LOCALSVC_CLAIM_PORT") != "" {
		// The other process: pick a port, say which, and hold it until
		// stdin closes.
		p, err := FreePort()
		if err != nil {
			os.Stdout.WriteString(err.Error() + "\n")
			return
		}
		os.Stdout.WriteString(strconv.Itoa(p) + "\n")
		bufio.NewReader(os.Stdin).ReadString('\n')
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestFreePortClaimedByAnotherProcess$")
	cmd.Env = append(os.Environ(), "LOCALSVC_CLAIM_PORT=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	port, perr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || perr != nil {
		t.Fatalf("the other process said %q, %v; want the port it picked", line, err)
	}
	if claimPort(port) {
		t.Errorf("port %d was claimed here while another process held it", port)
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if !claimPort(port) {
		t.Errorf("port %d could not be claimed after the process that held it exited", port)
	}
}
