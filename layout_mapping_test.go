package pginvalidator

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestMappingKnowsNoConnections checks the rule in STYLE.md that anyone can
// run by hand: "go list -deps ./mapping" names no Redis package, no
// PostgreSQL driver, and none of our packages that speak to a server or
// read the rest of the config.
func TestMappingKnowsNoConnections(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil { // go test runs us, so the toolchain that built us is there
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out, err := exec.Command(goTool, "list", "-deps", "./mapping").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps ./mapping: %v\n%s", err, out)
	}
	forbidden := []string{
		"github.com/redis/",
		"github.com/jackc/",
		"github.com/pg-invalidator/pg-invalidator/invalidator",
		"github.com/pg-invalidator/pg-invalidator/replication",
		"github.com/pg-invalidator/pg-invalidator/daemon",
		"github.com/pg-invalidator/pg-invalidator/config",
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatal("go list -deps ./mapping listed nothing")
	}
	for _, dep := range deps {
		for _, f := range forbidden {
			if strings.HasPrefix(dep, f) {
				t.Errorf("mapping depends on %s; it must know nothing of connections (STYLE.md, Our layout)", dep)
			}
		}
	}
}
